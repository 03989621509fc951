"""Per-device batch sources for the two-pass strategies.

A source is one device's share of one kind. ``epoch()`` yields, for every
batch of one pass, ``(positions int64(n), batch dict, check)``: the batch's
global positions (see :mod:`imnn_stream.modes`), its arrays, and a value
that must be identical in every later pass (a digest of the positions where the
data carry their seed indices, a fingerprint of the bytes where they do not).
The two-pass engine keeps one check per batch for the whole epoch, so a check is
a few bytes per batch, never per record (issue 10: the positions themselves, 8
bytes a record kept for train and validation, were part of what grew with n_s).
"""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Iterator

import numpy as np

from writers.errors import LayoutError
from writers.layout import device_blocks as _device_blocks
from writers.stream_prefetch import batch_records

from .modes import record_positions

__all__ = [
    "ArraySource",
    "StreamSource",
    "IteratorSource",
    "OrderError",
    "every_source",
    "fingerprint",
    "positions_digest",
    "device_blocks",
    "device_places",
    "cache_budget",
    "default_cache_bytes",
]


class OrderError(ValueError):
    """A pass saw different samples, or a different order, than the first pass."""


def every_source(sources, attribute: str) -> bool:
    """Whether there are sources (dict kind -> per-device list) and every one has
    ``attribute`` true (e.g. ``resident``, ``carries_positions``)."""
    every = [s for per in sources.values() for s in per]
    return bool(every) and all(getattr(s, attribute, False) for s in every)


def device_blocks(count: int, n_devices: int, argument: str):
    """Contiguous (start, stop) position blocks of ``count`` samples over devices
    (:func:`writers.layout.device_blocks`, the archive's device split)."""
    try:
        return _device_blocks(count, n_devices)
    except LayoutError as e:
        why = (
            e.detail
            if n_devices < 1
            else f"{count} samples cannot be split evenly over {n_devices} devices"
        )
        raise ValueError(f"`{argument}`: {why}") from None


#: bytes of the batches a source hands the engine when its samples are small: whole
#: multiples of n_per_device up to this size (the engine splits them again into
#: n_per_device where the network must see that many at a time). Every batch costs the
#: reader, the order check and the engine a fixed ~100 µs of interpreter time: the toy
#: problem's 150 batches of 100 records an iteration were bound by it (issue 10).
BATCH_BYTES = 1 << 20


#: default decoded-epoch cache budget: this fraction of MemAvailable
CACHE_FRACTION = 0.25


def default_cache_bytes() -> int:
    """The default host-memory budget of the decoded-epoch cache:
    :data:`CACHE_FRACTION` of ``MemAvailable`` (``/proc/meminfo``); 0 where that
    cannot be read (the cache is then off)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * CACHE_FRACTION)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cache_budget(cache) -> float:
    """Bytes the decoded-epoch cache may hold: ``cache`` None → the default
    (:func:`default_cache_bytes`), False/0 → none, True → no limit, a number →
    that many bytes."""
    if cache is None:
        return float(default_cache_bytes())
    if isinstance(cache, bool):
        return float("inf") if cache else 0.0
    if cache < 0:
        raise ValueError(f"`cache`: a byte budget ≥ 0 (or None, True, False), got {cache!r}")
    return float(cache)


def device_places(devices):
    """Per device, where a cached epoch is kept: on the device itself where that is a
    CPU device (its memory is the host memory the cache budget counts, and a cached
    batch then costs no transfer an epoch: issue 10, small records); None elsewhere
    (an accelerator's memory is not what the budget counts)."""
    import jax

    if not all(d.platform == "cpu" for d in devices):
        return None
    return [functools.partial(jax.device_put, device=d) for d in devices]


class ArraySource:
    """Slices of arrays held in host memory: positions [start, stop), ``batch`` at a
    time (a whole multiple of ``n_per_device``, the ``unit``, within ``batch_bytes``:
    :func:`writers.stream_prefetch.batch_records`).

    arrays: dict field -> array(count, ...)
    place: where the batches are kept instead, ``batch dict -> batch dict`` (e.g. a
    ``jax.device_put`` to a CPU device: :func:`device_places`), placed once here;
    every epoch then hands the engine the placed batches.
    """

    #: the arrays are not written during a fit: a batch is handed on without a copy
    fresh_batches = True
    #: a batch's positions are its rows' own (pass 2 need not read it again to pair
    #: cotangents with samples: :mod:`imnn_stream.residuals`)
    carries_positions = True

    def __init__(
        self,
        arrays: dict,
        start: int,
        stop: int,
        n_per_device: int,
        batch_bytes=BATCH_BYTES,
        place=None,
    ):
        self.arrays, self.start, self.stop, self.unit = arrays, start, stop, n_per_device
        row = _row_bytes(arrays)
        self.n = batch_records(n_per_device, stop - start, row, batch_bytes if row else None)
        self.placed = None if place is None else [(p, place(b), c) for p, b, c in self._slices()]

    @property
    def resident(self) -> bool:
        """Whether every batch is already on its device (``place``)."""
        return self.placed is not None

    def epoch(self):
        return iter(self.placed) if self.placed is not None else self._slices()

    def _slices(self):
        for b in range(self.start, self.stop, self.n):
            e = min(b + self.n, self.stop)
            positions = np.arange(b, e, dtype=np.int64)
            yield positions, {k: v[b:e] for k, v in self.arrays.items()}, (b, e)


class StreamSource:
    """An infinite iterator of record batches that carry their seed indices
    (``writers.streams.device_streams``): dicts with ``seed``, ``data`` and, by
    kind, ``derivative``/``parameter`` or ``gradient``.

    cache: keep the first complete epoch's decoded batches in host memory and serve
    every later epoch from them, as ``tf.data.Dataset.cache()`` does; the reader is
    then closed (``close``, e.g. the device stream's). The cached epoch yields the
    positions its records carried, so the two-pass order check compares them with
    the first pass exactly as for a read epoch.

    place: where a cached batch is kept, ``batch dict -> batch dict`` (e.g. a
    ``jax.device_put`` to a CPU device, whose memory is host memory): the cache then
    holds the placed copy in place of the decoded one, and later epochs hand the
    engine arrays already on its device (no transfer, no copy an epoch).
    """

    #: every batch is a new array that the reader never writes again (no copy needed)
    fresh_batches = True
    #: positions are the seed indices the records carry, not their order
    carries_positions = True

    def __init__(
        self,
        iterator: Iterator[dict],
        kind: str,
        fields,
        n_batches: int,
        n_d: int,
        n_params: int,
        cache: bool = False,
        close=None,
        unit=None,
        place=None,
    ):
        self.it, self.kind, self.fields, self.n_batches = iterator, kind, tuple(fields), n_batches
        self.n_d, self.n_params = n_d, n_params
        self.unit = unit  # samples per network call where groups are scanned: n_per_device
        self.wait_seconds = 0.0  # time spent blocked on the reader: input not hidden by compute
        self.cache, self._close, self._place = cache, close, place
        self.cached = None  # list of (positions, batch) once an epoch is kept

    @property
    def resident(self) -> bool:
        """Whether every batch of an epoch is already on its device (a cached epoch
        kept where ``place`` put it)."""
        return self.cached is not None and self._place is not None

    def epoch(self):
        if self.cached is not None:
            for positions, batch, check in self.cached:
                yield positions, batch, check
            return
        keep = [] if self.cache else None
        for _ in range(self.n_batches):
            t0 = time.perf_counter()
            item = next(self.it)
            self.wait_seconds += time.perf_counter() - t0
            positions = record_positions(self.kind, item, self.n_d, self.n_params)
            batch = {f: item[f] for f in self.fields}
            check = positions_digest(positions)
            if keep is not None:
                if self._place is not None:
                    batch = self._place(batch)
                keep.append((positions, batch, check))
            yield positions, batch, check
        if keep is not None:  # a whole epoch was read: serve the next ones from memory
            self.cached = keep
            if self._close is not None:
                self._close()


def _row_bytes(arrays: dict) -> int:
    """Bytes of one sample of ``arrays``; 0 where that is not plain bytes (typed PRNG
    key arrays)."""
    try:
        return sum(int(a.nbytes) // max(len(a), 1) for a in arrays.values())
    except (AttributeError, TypeError):
        return 0


def positions_digest(positions) -> bytes:
    """16-byte identity of a batch's positions int64(n) (its length and every value)."""
    p = np.ascontiguousarray(positions, np.int64)
    return hashlib.blake2b(
        p.tobytes(), digest_size=16, person=len(p).to_bytes(8, "little")
    ).digest()


def fingerprint(arrays) -> bytes:
    """Cheap identity of a batch: shapes plus a hash of ≤ 64 strided values per record."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.asarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        flat = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
        step = max(1, flat.shape[1] // 64)
        h.update(np.ascontiguousarray(flat[:, ::step]).tobytes())
    return h.digest()


class IteratorSource:
    """A user-built infinite iterator of bare arrays (or tuples of arrays, in the
    order of ``fields``), as in the seed document's tf.data recipes. Positions are
    assigned by order from ``start``; the fingerprint guards the order.
    """

    def __init__(self, iterator, fields, start: int, count: int, n_per_device: int):
        self.it, self.fields, self.start, self.count = iterator, tuple(fields), start, count
        self.n_batches = -(-count // n_per_device)

    def epoch(self):
        position = self.start
        for _ in range(self.n_batches):
            item = next(self.it)
            arrays = tuple(item) if isinstance(item, (tuple, list)) else (item,)
            if len(arrays) != len(self.fields):
                raise ValueError(
                    f"user iterator yielded {len(arrays)} arrays per batch, expected "
                    f"{len(self.fields)} ({', '.join(self.fields)})"
                )
            n = len(arrays[0])
            positions = np.arange(position, position + n, dtype=np.int64)
            position += n
            yield positions, dict(zip(self.fields, arrays)), fingerprint(arrays)
