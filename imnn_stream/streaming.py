"""Streaming trainers: DatasetNumericalGradientIMNN and DatasetGradientIMNN.

The streaming strategy is the two-pass strategy fed by per-device streams:
either built from an archive's manifest (``from_archive``; batches carry
their seed indices) or user-built iterators as in the reference package's
recipes (bare arrays; batches are fingerprinted so that a shuffled stream or
a wrong epoch length is caught instead of pairing gradients with the wrong
samples).

User iterators, device d of D, must serve (unshuffled, repeated) n_per_device
records at a time of:

* numerical ``fiducial[d]``: seeds [d·n_s/D, (d+1)·n_s/D), arrays float(n, *input_shape)
* numerical ``derivative[d]``: records [d·R/D, (d+1)·R/D) of the R = n_d·2·n_params
  finite-difference records in the order seed → sign → parameter
* gradient ``main[d]``: seeds [d·n_d/D, (d+1)·n_d/D), tuples (float(n, *input_shape),
  float(n, *input_shape, n_params))
* gradient ``remaining[d]``: seeds n_d + [d·(n_s−n_d)/D, (d+1)·(n_s−n_d)/D)
"""

from __future__ import annotations

import os

import numpy as np

from .classes import _aggregation, _δθ
from .modes import gradient_mode, numerical_mode
from .sources import (
    BATCH_BYTES,
    CACHE_FRACTION,  # noqa: F401 (the budget's documented home since 0.1)
    IteratorSource,
    StreamSource,
    cache_budget,
    default_cache_bytes,  # noqa: F401
    device_blocks,
    device_places,
)
from .strategies import TwoPassStrategy
from .trainer import Trainer

__all__ = ["DatasetNumericalGradientIMNN", "DatasetGradientIMNN"]

#: decoded bytes of a record up to which ``decode="auto"`` reads an uncached stream in a
#: reader process: per record the reader's interpreter time is ~0.5–1 µs, which for
#: small records is most of the stream's cost (toy, ~100 bytes: 15 000 records an
#: iteration); larger records are read at disk speed by threads, and a pipe would add
#: a copy of every byte
SMALL_RECORD_BYTES = 1024


def _iterator_sources(mode, kind, iterators, n_devices, n_per_device, argument):
    if not isinstance(iterators, (list, tuple)) or len(iterators) != n_devices:
        raise TypeError(
            f"`{argument}` must be a list of {n_devices} per-device iterators "
            f"(one per device), got {type(iterators).__name__}"
            + (f" of length {len(iterators)}" if isinstance(iterators, (list, tuple)) else "")
        )
    blocks = device_blocks(mode.counts[kind], n_devices, argument)
    return [
        IteratorSource(iter(it), mode.fields[kind], a, b - a, n_per_device)
        for it, (a, b) in zip(iterators, blocks)
    ]


def _archive_sources(
    path,
    split,
    mode,
    n_devices,
    n_per_device,
    prefetch,
    n_d,
    n_params,
    budget,
    device_ids=None,
    places=None,
    decode="auto",
):
    """Per-kind per-device StreamSources of one split, and the device streams
    (of ``device_ids`` of the ``n_devices`` only, when given: one process's share).

    budget: a one-item list, the cache bytes left; each whole device stream whose
    decoded epoch fits what is left is cached (in kind order, device order) and
    its bytes taken from it: streams that do not fit are streamed every epoch.

    places: per local device, where its cached batches are kept (``StreamSource``'s
    ``place``), or None (decoded host arrays).

    decode: ``"auto"`` (streams of small records read every epoch are decoded in a
    reader process, :mod:`writers.stream_worker`; the others in reader threads),
    ``"thread"`` or ``"process"`` (all of them)."""
    from writers.streams import device_streams

    cached = {}

    def plan(shapes):
        """Which streams are cached (the budget, in kind order then device order) and
        where each is decoded: a reader process for small records read every epoch
        (their decoding would hold this process's GIL), a reader thread otherwise."""
        how = {}
        for kind in [k for k in mode.kinds if k in shapes] + [
            k for k in shapes if k not in mode.kinds
        ]:
            how[kind] = []
            for d, shape in enumerate(shapes[kind]):
                cached[kind, d] = cache = shape.epoch_bytes <= budget[0]
                if cache:
                    budget[0] -= shape.epoch_bytes
                # reader processes take POSIX pipes (os.pipe passed to the child)
                small = shape.row_bytes <= SMALL_RECORD_BYTES and os.name == "posix"
                how[kind].append(
                    decode if decode != "auto" else "process" if small and not cache else "thread"
                )
        return how

    streams = device_streams(
        path,
        split,
        n_devices,
        n_per_device,
        prefetch=prefetch,
        devices=device_ids,
        batch_bytes=BATCH_BYTES,
        decode=plan,
    )
    sources = {}
    for kind in mode.kinds:
        if kind not in streams:
            sources[kind] = []  # `remaining` when n_s = n_d
            continue
        sources[kind] = []
        for d, it in enumerate(streams[kind]):
            cache = cached[kind, d]
            sources[kind].append(
                StreamSource(
                    it,
                    kind,
                    mode.fields[kind],
                    it.batches_per_epoch,
                    n_d,
                    n_params,
                    cache,
                    close=it.close,
                    unit=n_per_device,
                    place=None if places is None else places[d],
                )
            )
    return sources, streams


class _Streaming:
    """Shared by both streaming classes: the strategy and the archive entry point."""

    _archive_mode = None

    def _stream_strategy(self, mode, train, validation):
        processes = getattr(self, "processes", None)
        if processes is None or processes.count == 1:
            return TwoPassStrategy(mode, self.host, self.devices, train, validation)
        return TwoPassStrategy(
            mode, self.host, self.devices, train, validation, engine=processes.engine
        )

    @classmethod
    def from_archive(
        cls,
        path,
        model,
        optimiser,
        key_or_state,
        host,
        devices,
        n_per_device,
        n_summaries=None,
        validation=True,
        prefetch=None,
        cache=None,
        processes=None,
        decode="auto",
    ):
        """Stream training (and, if present and ``validation``, validation) data from
        the archive at ``path`` (local path or URL), laid out over ``devices``
        (any count that divides the archive's counts).

        cache: host-memory budget in bytes for decoded epochs (as
        ``tf.data.Dataset.cache()``): every per-device stream whose decoded epoch
        fits what is left of it (training streams first, then validation) is kept
        in memory after its first epoch and no longer read; the others are streamed
        every pass. None (default): 25 % of MemAvailable; 0 or False: off; True:
        no limit. The two-pass order check applies to cached epochs unchanged.

        decode: where streamed records are decoded. ``"auto"`` (default): small records
        (up to ``SMALL_RECORD_BYTES`` decoded) that are read every epoch in a reader
        process, so that their decoding does not hold this process's interpreter lock
        (:mod:`writers.stream_worker`), everything else in reader threads;
        ``"thread"`` or ``"process"``: all of them.

        processes: a multi-process fit (:class:`imnn_stream.distributed.Processes`,
        default: ``jax.process_count() > 1`` after ``jax.distributed.initialize``):
        ``devices`` are this process's, the archive is laid out over every process's
        devices and this process streams only its own devices' seed blocks."""
        from writers.manifest import read_manifest

        m = read_manifest(path)
        if m.mode != cls._archive_mode:
            raise ValueError(
                f"{path}: archive mode is {m.mode!r}, {cls.__name__} needs a "
                f"{cls._archive_mode!r} archive"
            )
        self = cls.__new__(cls)
        Trainer.__init__(
            self,
            m.n_s,
            m.n_d,
            m.n_params,
            n_summaries or m.n_params,
            tuple(m.input_shape),
            np.asarray(m.theta_fid, np.float32),
            model,
            optimiser,
            key_or_state,
        )
        self.archive = path
        mode = self._make_mode(m)
        _aggregation(self, host, devices, n_per_device)
        from .distributed import Processes

        self.processes = Processes.current() if processes is None else processes
        n, ids = self.processes.layout(m, len(self.devices))
        budget = [cache_budget(cache)]
        args = (mode, n, self.n_per_device, prefetch, self.n_d, self.n_params, budget, ids)
        args += (device_places(self.devices), decode)
        train, self._streams = _archive_sources(path, "train", *args)
        val, val_streams = (None, {})
        if validation and "validation" in m.splits:
            val, val_streams = _archive_sources(path, "validation", *args)
        self._streams = [self._streams, val_streams]
        self._configure(mode, self._stream_strategy(mode, train, val))
        return self

    @property
    def input_wait_seconds(self) -> float:
        """Seconds this trainer's fits so far spent blocked on its readers (every pass,
        training and validation; a cached epoch waits for nothing): the input that
        compute did not hide."""
        from .sources import StreamSource

        strategy = getattr(self, "_strategy", None)
        total = 0.0
        for data in (getattr(strategy, "train", None), getattr(strategy, "validation", None)):
            if isinstance(data, dict):
                for per in data.values():
                    total += sum(s.wait_seconds for s in per if isinstance(s, StreamSource))
        return total

    def close(self):
        """Stop the archive readers' threads."""
        from writers.streams import close_all

        for s in getattr(self, "_streams", []):
            close_all(s)

    def __enter__(self):
        """``with DatasetNumericalGradientIMNN.from_archive(...) as imnn:`` closes the
        streams at the end of the block."""
        return self

    def __exit__(self, *exc):
        self.close()


class DatasetNumericalGradientIMNN(_Streaming, Trainer):
    """Finite-difference IMNN fed by per-device streams (see module docstring).

    fiducial, derivative (and validation_…): lists of per-device iterators; δθ
    float(n_params,) (records at θ_fid ∓ δθ/2); host, devices, n_per_device as the
    aggregated classes. Or :meth:`from_archive`.
    """

    _archive_mode = "numerical"

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        fiducial,
        derivative,
        δθ,
        host,
        devices,
        n_per_device,
        validation_fiducial=None,
        validation_derivative=None,
    ):
        super().__init__(
            n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser, key_or_state
        )
        self.δθ = _δθ(self, δθ)
        mode = numerical_mode(self.model, self.n_s, self.n_d, self.n_params, self.δθ)
        _aggregation(self, host, devices, n_per_device)
        n = len(self.devices)

        def sources(fid, der, prefix):
            return {
                "fiducial": _iterator_sources(
                    mode, "fiducial", fid, n, self.n_per_device, prefix + "fiducial"
                ),
                "derivative": _iterator_sources(
                    mode, "derivative", der, n, self.n_per_device, prefix + "derivative"
                ),
            }

        if (validation_fiducial is None) != (validation_derivative is None):
            raise ValueError(
                "pass both `validation_fiducial` and `validation_derivative`, or neither"
            )
        val = (
            None
            if validation_fiducial is None
            else sources(validation_fiducial, validation_derivative, "validation_")
        )
        self._configure(mode, self._stream_strategy(mode, sources(fiducial, derivative, ""), val))

    def _make_mode(self, m):
        self.δθ = _δθ(self, m.delta_theta)
        return numerical_mode(self.model, self.n_s, self.n_d, self.n_params, self.δθ)


class DatasetGradientIMNN(_Streaming, Trainer):
    """Chain-rule IMNN fed by per-device streams: ``main`` (the first n_d seeds with
    dsim/dθ) and ``remaining`` (the other n_s − n_d), see module docstring. Or
    :meth:`from_archive`."""

    _archive_mode = "gradient"

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        main,
        remaining,
        host,
        devices,
        n_per_device,
        validation_main=None,
        validation_remaining=None,
    ):
        super().__init__(
            n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser, key_or_state
        )
        mode = gradient_mode(self.model, self.n_s, self.n_d, self.n_params)
        _aggregation(self, host, devices, n_per_device)
        n = len(self.devices)

        def sources(m, r, prefix):
            return {
                "main": _iterator_sources(mode, "main", m, n, self.n_per_device, prefix + "main"),
                "remaining": _iterator_sources(
                    mode, "remaining", r, n, self.n_per_device, prefix + "remaining"
                ),
            }

        if (validation_main is None) != (validation_remaining is None):
            raise ValueError("pass both `validation_main` and `validation_remaining`, or neither")
        val = (
            None
            if validation_main is None
            else sources(validation_main, validation_remaining, "validation_")
        )
        self._configure(mode, self._stream_strategy(mode, sources(main, remaining, ""), val))

    def _make_mode(self, m):
        return gradient_mode(self.model, self.n_s, self.n_d, self.n_params)
