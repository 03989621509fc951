"""Execution strategies: where the data live and how a step is computed.

* :class:`InMemory` — all data (or the simulator) on one device, one jitted
  ``value_and_grad``; the whole fitting loop can run compiled.
* :class:`TwoPassStrategy` — data split over a host and XLA devices, from host
  memory (*aggregated*) or read as a stream (*streaming*), two passes per
  iteration (:mod:`imnn_stream.twopass`).

Both expose ``value_and_grad(w, key, λ, α, data) -> (grad, stats)`` (traceable for
InMemory; ``host_value_and_grad`` is its compiled form for one-off calls),
``stats(w, key, λ, α, data) -> stats`` and ``summaries(w, key, data) -> (x, dx)``,
where ``data`` is the strategy's ``train`` or ``validation`` attribute.
"""

from __future__ import annotations

import jax

from .modes import simulator_keys
from .sources import BATCH_BYTES, ArraySource, device_blocks
from .stats import loss_and_stats
from .twopass import TwoPass

__all__ = ["InMemory", "TwoPassStrategy", "array_sources", "simulator_sources"]


class InMemory:
    """One jitted step over all data. ``train``/``validation``: dict kind -> batch
    dict of arrays, or ``None`` for simulator mode (fresh simulations per key; a
    validation set of them unless ``validate`` is False)."""

    compiled = True

    def __init__(self, mode, train=None, validation=None, simulate=False, validate=True):
        self.mode, self.train, self.validation, self.simulate = mode, train, validation, simulate
        self.has_validation = (simulate and validate) or validation is not None
        self.host_value_and_grad = jax.jit(self.value_and_grad)
        self._summaries = jax.jit(self.summaries)

    def _data(self, key, data):
        if self.simulate:
            return simulator_keys(
                key,
                self.mode.counts["main"] + self.mode.counts["remaining"],
                self.mode.counts["main"],
            )
        return data

    def value_and_grad(self, w, key, λ, α, data):
        def loss(v):
            return loss_and_stats(*self.mode.all_outputs(v, self._data(key, data)), λ, α)

        (_, st), g = jax.value_and_grad(loss, has_aux=True)(w)
        return g, st

    def stats(self, w, key, λ, α, data):
        return loss_and_stats(*self.mode.all_outputs(w, self._data(key, data)), λ, α)[1]

    def summaries(self, w, key, data):
        return self.mode.all_outputs(w, self._data(key, data))

    def host_summaries(self, w, key, data):
        return jax.device_get(self._summaries(w, key, data))


class TwoPassStrategy:
    """Two passes per iteration over per-device sources.

    ``train``/``validation``: dict kind -> list (per device) of sources, or a
    callable ``key -> such a dict`` for data drawn anew each iteration. ``engine``:
    the two-pass class (:class:`imnn_stream.distributed.ProcessTwoPass` across processes).
    """

    compiled = False

    def __init__(self, mode, host, devices, train, validation=None, engine=TwoPass):
        self.engine = engine(mode, host, devices)
        self.train, self.validation = train, validation
        self.has_validation = validation is not None

    def _sources(self, key, data, tag):
        if callable(data):
            self.engine.forget(tag)
            return data(key)
        return data

    def _tag(self, data):
        return "train" if data is self.train else "validation"

    def value_and_grad(self, w, key, λ, α, data):
        return self.engine.value_and_grad(w, self._sources(key, data, "train"), λ, α)

    def stats(self, w, key, λ, α, data):
        tag = self._tag(data)
        return self.engine.stats(w, self._sources(key, data, tag), λ, α, tag)

    host_value_and_grad = value_and_grad

    def iteration(self, w, kt, kv, λ, α, validate):
        """(grad, training stats, validation stats or None) of one fitting iteration:
        the validation pass runs between the training passes (``TwoPass.iteration``)."""
        train = self._sources(kt, self.train, "train")
        val = self._sources(kv, self.validation, "validation") if validate else None
        return self.engine.iteration(w, train, val, λ, α)

    def host_summaries(self, w, key, data):
        tag = self._tag(data)
        return self.engine.summaries(w, self._sources(key, data, tag), tag)


def array_sources(
    batches: dict, mode, n_devices: int, n_per_device: int, batch_bytes=BATCH_BYTES, places=None
):
    """Host-memory arrays (dict kind -> batch dict) -> per-device ArraySources.

    Device d gets the contiguous block d of every kind, in batches of whole multiples
    of n_per_device within ``batch_bytes`` (``sources.ArraySource``); with ``places``
    (per device, ``sources.device_places``) the batches are kept on the devices.
    """
    out = {}
    for kind in mode.kinds:
        count = mode.counts[kind]
        blocks = device_blocks(count, n_devices, kind)
        out[kind] = [
            ArraySource(
                batches[kind],
                a,
                b,
                n_per_device,
                batch_bytes,
                None if places is None else places[d],
            )
            for d, (a, b) in enumerate(blocks)
        ]
    return out


def simulator_sources(mode, n_devices: int, n_per_device: int, places=None):
    """key -> per-device sources of fresh simulator keys (simulator mode); with
    ``places`` (per device, ``sources.device_places``) each iteration's keys are put on
    their devices, so that the engine runs its joint resident passes
    (:mod:`imnn_stream.resident`: simulate and forward in one call per device, pass 2
    from the kept residuals instead of simulating again)."""
    n_d = mode.counts["main"]
    n_s = n_d + mode.counts["remaining"]

    def make(key):
        keys = jax.device_get(simulator_keys(key, n_s, n_d))
        # one n_per_device of keys a batch: a key's batch is simulations to run, not bytes
        # to read, and the network sees no more than n_per_device of them at a time
        return array_sources(keys, mode, n_devices, n_per_device, batch_bytes=None, places=places)

    return make
