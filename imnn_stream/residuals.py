"""Pass-1 VJPs of streamed groups, kept for pass 2 when the whole pass's fit a budget.

Streamed training data (read from an archive or a user's iterator, not resident on
the devices) went through the network three times an iteration: the forward of pass
1, then forward and backward again in pass 2, each pass reading the data. When the
VJP residuals (the network's activations) of every group of pass 1 fit
``TwoPass.residual_bytes``, pass 1 keeps them and pass 2 is the backward half only,
as on the resident path (:mod:`imnn_stream.resident`). Then:

* sources whose batches carry their own positions (seed indices read from the
  records: archive streams, host arrays; ``carries_positions``) are **not read
  again** in pass 2: the kept VJPs are pass 1's own samples, so the cotangent rows
  of their positions are theirs by construction, and every read (each iteration's
  pass 1) still goes through the order check against the first pass and the
  archive's CRC checks;
* a user's iterator, whose positions are only its order, is read again and
  checked batch by batch as before (a shuffled stream must still fail within one
  iteration); the kept VJP replaces the second forward.

Whether the residuals fit is projected from the first group (its residual bytes per
sample times every kind's sample count, corrected as each kind's first group comes),
so a pass that cannot fit keeps nothing rather than filling the budget and dropping
it (an archive larger than memory keeps nothing: its memory stays flat); once a pass
has not fit, later passes (same weights' layout) do not try. What this holds is bounded by
``residual_bytes`` and freed group by group as pass 2 runs (docs/streaming-memory.md).
"""

from __future__ import annotations

from itertools import zip_longest

import jax

from .sources import OrderError, every_source

__all__ = ["Kept", "carries_positions"]


def carries_positions(sources) -> bool:
    """Whether every source (dict kind -> per-device list) hands out batches whose
    positions are their records' own (``carries_positions``), not their order."""
    return every_source(sources, "carries_positions")


class Kept:
    """Pass 1's per-group VJPs (engine: a ``TwoPass`` with fused groups).

    ``forward`` runs one group's pass 1 and keeps its VJP while the pass's projected
    residuals fit; ``on`` is False once they do not (nothing is then kept, and pass 2
    is the usual read, forward and backward).
    """

    def __init__(self, engine):
        self.engine = engine
        self.budget = engine.residual_bytes
        self.on = self.budget > 0 and engine._keep_streamed
        self.items = []  # (device, kind, positions int64(n), vjp) in dispatch order
        self.used = 0
        self.projected = 0.0
        self._per_sample = {}  # kind -> residual bytes a sample, from its first group

    def forward(self, kind, d, w, positions, batch):
        """Outputs float(n, ...) of one group on device ``d`` (w: its weights)."""
        e = self.engine
        if self.on:
            size = e.resident.residual_size((kind,), w, (batch,))
            if kind not in self._per_sample:
                self._per_sample[kind] = size / max(len(positions), 1)
                # kinds not seen yet are taken as this one's size a sample (the same in
                # numerical mode), so the first group of the first kind already knows
                # whether the whole pass can fit
                first = next(iter(self._per_sample.values()))
                self.projected = sum(
                    c * self._per_sample.get(k, first) for k, c in e.mode.counts.items()
                )
            if self.projected > self.budget or self.used + size > self.budget:
                self.drop()
        if not self.on:
            return e._fwd[kind](w, batch)
        out, vjp = e.resident.forward_vjp((kind,), w, (batch,))
        self.used += size
        self.items.append((d, kind, positions, vjp))
        return out[0]

    def drop(self):
        """Keep nothing, now and in later passes with these weights' layout."""
        self.on = self.engine._keep_streamed = False
        self.items = []

    def pass2(self, w_dev, cot, sources=None):
        """Pass 2 from the kept VJPs: per device, the sum of its groups' VJPs with the
        cotangent rows of their positions (device arrays, device order). ``sources``:
        read them again and check each group against the kept one (a user's
        iterator); None: nothing is read."""
        e = self.engine
        acc = [e._zeros(wd) for wd in w_dev]
        items, self.items = self.items, []
        read = [None] * len(items) if sources is None else _groups(e, sources)
        for i, (item, group) in enumerate(zip_longest(items, read)):
            if sources is not None:
                _check_same(item, group)
            d, kind, positions, vjp = item
            items[i] = None  # its residuals are freed as soon as it has run
            if sources is None and e.on_group is not None:  # no read reports it
                e.on_group("train", kind, len(positions))
            c = jax.tree_util.tree_map(lambda a: a[positions], cot[kind])
            acc[d] = e.resident.apply(vjp, (jax.device_put(c, e.devices[d]),), acc[d])
        return acc


def _groups(engine, sources):
    """(device, kind, positions) of every training group read again, pass 1's order."""
    for kind in engine.mode.kinds:
        for d, positions, _ in engine._groups("train", kind, sources[kind]):
            yield d, kind, positions


def _check_same(item, group):
    """The group read in pass 2 is the one pass 1 kept (the order check has already
    compared its samples with the first pass's; this catches a pass of another length)."""
    if item is None or group is None or item[:2] != group[:2] or len(item[2]) != len(group[2]):
        kind = (item or group)[1]
        raise OrderError(
            f"train data, kind '{kind}': pass 2 read a different number of batches than "
            "pass 1 — is the iterator of the wrong epoch length?"
        )
