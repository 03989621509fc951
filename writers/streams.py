"""Per-device record streams built from a manifest.

For a split and a device count, :func:`device_streams` returns, for each
kind, one infinite (repeated, unshuffled) iterator per device, each yielding
batches of up to ``n_per_device`` records as dicts of numpy arrays::

    seed        int64(n)
    data        dtype(n, *input_shape)
    derivative  int64(n)   finite-difference records (0 below, 1 above)
    parameter   int64(n)   finite-difference records
    gradient    dtype(n, *input_shape, n_params)   gradient-mode ``main``

Device ``d`` of ``D`` reads the contiguous seed block
``[first + d·m, first + (d+1)·m)``, ``m = n_seeds / D``, whatever device
count the archive was written for (files are regrouped by seed range).
Files are read through :mod:`writers.fs` (local paths and URLs) with the
TFRecord framing and CRC32C checked here; each iterator reads ahead in a
background thread into a queue of at most ``prefetch`` batches, so memory
is bounded by ``prefetch + 2`` batches per iterator (plus a 1 MiB read
buffer).
"""
from __future__ import annotations

import itertools
import queue
import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from . import fs
from .errors import ArchiveError, LayoutError
from .layout import KindInfo, device_seeds
from .manifest import Manifest, read_manifest
from .schema import RecordSpec, _parse_flat, parse_flat
from .tfrecord import FOOTER_BYTES, HEADER_BYTES, iter_records

_LEN = struct.Struct("<Q")


@dataclass(frozen=True)
class Segment:
    """Records ``[skip, skip + take)`` of one file (path relative to root)."""
    path: str
    skip: int
    take: int
    first_seed: int  # seed of the first record read


def segments(manifest: Manifest, split: str, kind: str, n_devices: int,
             device: int) -> list[Segment]:
    """The file pieces device ``device`` of ``n_devices`` reads for a kind."""
    info = manifest.kind_info(split, kind)
    try:
        a, b = device_seeds(info, n_devices, device)
    except LayoutError as e:
        raise LayoutError(
            f"cannot split split {split!r} between {n_devices} devices: {e.detail} "
            f"(archive written for {manifest.n_devices})", manifest_path(manifest)) from None
    rps = info.records_per_seed
    out = []
    for f in manifest.files(split, kind):
        lo, hi = max(a, f["first_seed"]), min(b, f["last_seed"] + 1)
        if lo < hi:
            out.append(Segment(f["path"], (lo - f["first_seed"]) * rps, (hi - lo) * rps, lo))
    return out


def manifest_path(manifest) -> str:
    return "manifest.json"


def epoch_records(manifest: Manifest, split: str, kind: str, n_devices: int) -> int:
    """Records of ``kind`` per device per epoch for ``n_devices`` devices."""
    info = manifest.kind_info(split, kind)
    a, b = device_seeds(info, n_devices, 0)
    return (b - a) * info.records_per_seed


def _skip_records(f, n: int, path: str) -> None:
    """Seek past ``n`` framed records without reading their payloads."""
    for r in range(n):
        header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            raise ArchiveError(f"truncated: file ends before record {n}", path, r)
        (length,) = _LEN.unpack_from(header)
        f.seek(length + FOOTER_BYTES, 1)


def iter_segment_raw(root: str, segs: list[Segment], info: KindInfo,
                     check_crc: bool = True) -> Iterator[tuple[str, int, int, bytes]]:
    """Yield ``(path, record_number, expected_seed, payload)`` for every
    record of the segments (framing and CRCs checked, payload not parsed)."""
    rps = info.records_per_seed
    for seg in segs:
        path = fs.join(root, seg.path)
        with fs.open_read(path) as f:
            _skip_records(f, seg.skip, path)
            it = iter_records(f, path, check_crc)
            for i in range(seg.take):
                try:
                    raw = next(it)
                except StopIteration:
                    raise ArchiveError(f"file ends after {seg.skip + i} records, expected at "
                                       f"least {seg.skip + seg.take}", path,
                                       seg.skip + i) from None
                yield path, seg.skip + i, seg.first_seed + i // rps, raw


def iter_segment_records(root: str, segs: list[Segment], info: KindInfo,
                         check_crc: bool = True) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(path, record_number, features)`` (see
    :func:`writers.schema.parse_flat`), checking that seeds come in order."""
    for path, r, seed, raw in iter_segment_raw(root, segs, info, check_crc):
        feats = _parse(raw, path, r)
        if feats.get("seed") != seed:
            raise ArchiveError(f"expected seed {seed}, got {feats.get('seed')} "
                               f"(records out of order or missing)", path, r)
        yield path, r, feats


def _parse(raw, path, r) -> dict:
    try:
        return parse_flat(raw)
    except ValueError as e:
        raise ArchiveError(f"malformed tf.train.Example: {e}", path, r) from None


def _bytes_into(out: np.ndarray, i: int, feats: dict, name: str, path, r) -> None:
    value = feats.get(name)
    flat = out.reshape(out.shape[0], -1).view(np.uint8)  # a view: rows of raw bytes
    if not isinstance(value, bytes) or len(value) != flat.shape[1]:
        got = len(value) if isinstance(value, bytes) else type(value).__name__
        raise ArchiveError(f"feature {name!r}: expected {flat.shape[1]} bytes "
                           f"({out.dtype.name}{list(out.shape[1:])}), got {got}", path, r)
    flat[i] = np.frombuffer(value, np.uint8)


def _int_into(out: np.ndarray, i: int, feats: dict, name: str, path, r) -> None:
    value = feats.get(name)
    if not isinstance(value, int):
        raise ArchiveError(f"feature {name!r}: expected one int64, got {value!r:.40}", path, r)
    out[i] = value


class _Template:
    """Byte layout shared by a run of equal-length records: where each
    field's value sits, and the bytes every record must share elsewhere.
    Lets a run be decoded with a few NumPy slices instead of a parse per
    record; any record that differs falls back to the per-record parser."""

    def __init__(self, raw: bytes, fields):
        offsets = {}
        _parse_flat(raw, offsets)
        self.length = len(raw)
        self.slices = {}
        mask = np.ones(len(raw), bool)
        for name, _, typ, _ in fields:
            if name not in offsets:
                raise ValueError(name)
            start, end = offsets[name]
            self.slices[name] = (start, end)
            mask[start:end] = False
        self.fixed = np.flatnonzero(mask)
        self.expected = np.frombuffer(raw, np.uint8)[self.fixed]

    def matches(self, arr: np.ndarray) -> bool:
        return bool((arr[:, self.fixed] == self.expected).all())


def _varints(cols: np.ndarray) -> Optional[np.ndarray]:
    """Decode fixed-width varint columns (n, w) → int64(n); None if not valid."""
    w = cols.shape[1]
    if (cols[:, -1] >= 0x80).any() or (w > 1 and (cols[:, :-1] < 0x80).any()):
        return None
    value = np.zeros(cols.shape[0], np.uint64)
    for j in range(w):
        value |= (cols[:, j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    return value.view(np.int64)


class _Source:
    """One kind's records for one device, with how its features map to the
    batch: ``fields`` is a list of (feature name, batch key, "bytes"/"int",
    shape)."""

    def __init__(self, root, segs, info, fields, check_crc):
        self.root, self.segs, self.info = root, segs, info
        self.fields, self.check_crc = fields, check_crc
        self.template = None

    def raw(self):
        return iter_segment_raw(self.root, self.segs, self.info, self.check_crc)

    def fill(self, batch: dict, i0: int, records: list) -> None:
        """Decode ``records`` [(path, r, expected_seed, payload)] into rows
        ``i0..`` of the batch arrays."""
        start = 0
        while start < len(records):
            path, length = records[start][0], len(records[start][3])
            stop = start + 1
            while (stop < len(records) and records[stop][0] == path
                   and len(records[stop][3]) == length):
                stop += 1
            run = records[start:stop]
            if not (len(run) > 1 and self._fill_vectorised(batch, i0 + start, run)):
                self._fill_each(batch, i0 + start, run)
            start = stop

    def _fill_each(self, batch, i0, run):
        for j, (path, r, seed, raw) in enumerate(run):
            feats = _parse(raw, path, r)
            if feats.get("seed") != seed:
                raise ArchiveError(f"expected seed {seed}, got {feats.get('seed')} "
                                   f"(records out of order or missing)", path, r)
            for name, key, typ, _ in self.fields:
                (_int_into if typ == "int" else _bytes_into)(batch[key], i0 + j, feats,
                                                             name, path, r)

    def _fill_vectorised(self, batch, i0, run) -> bool:
        length = len(run[0][3])
        if self.template is None or self.template.length != length:
            try:
                self.template = _Template(run[0][3], self.fields)
            except (ValueError, IndexError):
                self.template = None
                return False
        t = self.template
        arr = np.frombuffer(b"".join(x[3] for x in run), np.uint8).reshape(len(run), length)
        if not t.matches(arr):
            return False
        values = {}
        for name, key, typ, _ in self.fields:
            a, b = t.slices[name]
            if typ == "int":
                v = _varints(arr[:, a:b])
                if v is None:
                    return False
                values[key] = v
            else:
                out = batch[key]
                if b - a != out[0].nbytes:
                    return False  # wrong size: the per-record path reports it
                values[key] = arr[:, a:b]
        seeds = values.get("seed")
        expected = np.fromiter((x[2] for x in run), np.int64, len(run))
        if seeds is None or not np.array_equal(seeds, expected):
            return False  # the per-record path names the first bad record
        n = len(run)
        for key, v in values.items():
            out = batch[key]
            if v.ndim == 1:
                out[i0:i0 + n] = v
            else:
                out[i0:i0 + n].reshape(n, -1).view(np.uint8)[:] = v
        return True


class DeviceStream:
    """Infinite iterator of batches for one device (see module docstring).

    Reads ahead in a daemon thread; call :meth:`close` (or let it be garbage
    collected) to stop the thread.  Errors in the reader (corrupt file,
    missing file) are raised from ``next()``.
    """

    def __init__(self, sources: list[_Source], n_per_device: int, epoch: int,
                 dtype: np.dtype, prefetch: int = 2):
        if n_per_device < 1:
            raise ValueError(f"n_per_device must be >= 1, got {n_per_device}")
        self.n_per_device, self.epoch = n_per_device, epoch
        self._queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce, args=(sources, n_per_device, epoch, dtype, self._queue,
                                   self._stop), daemon=True)
        self._thread.start()
        weakref.finalize(self, self._stop.set)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._stop.set()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        try:  # unblock a producer waiting on a full queue
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _produce(sources, n, epoch, dtype, q, stop):
    try:
        while not stop.is_set():
            its = [s.raw() for s in sources]
            done = 0
            while done < epoch and not stop.is_set():
                size = min(n, epoch - done)
                batch = {}
                for s in sources:
                    for _, key, typ, shape in s.fields:
                        if key not in batch:
                            batch[key] = (np.empty((size,), np.int64) if typ == "int"
                                          else np.empty((size,) + shape, dtype))
                # Each source checks its records' seeds against the device's
                # seed range, so zipped sources are matched by seed.
                for s, it in zip(sources, its):
                    records = list(itertools.islice(it, size))
                    if len(records) != size:
                        raise ArchiveError(f"stream ended after {done + len(records)} "
                                           f"records of an epoch of {epoch}")
                    s.fill(batch, 0, records)
                done += size
                if not _put(q, batch, stop):
                    return
            for it in its:
                it.close()
    except BaseException as e:  # hand the error to the consumer
        _put(q, e, stop)


def _fields(spec: RecordSpec) -> list:
    shape = tuple(spec.input_shape)
    f = [("seed", "seed", "int", ()), ("data", "data", "bytes", shape)]
    if spec.finite_difference:
        f += [("derivative", "derivative", "int", ()), ("parameter", "parameter", "int", ())]
    if spec.gradient:
        f.append(("gradient", "gradient", "bytes", spec.gradient_shape))
    return f


def stream_kinds(manifest: Manifest) -> list[str]:
    """Kinds the trainers consume for this archive's mode."""
    return {"numerical": ["fiducial", "derivative"],
            "gradient": ["main", "remaining"] if manifest.n_s > manifest.n_d else ["main"],
            "fiducial": ["fiducial"]}[manifest.mode]


def device_streams(root: str, split: str, n_devices: int, n_per_device: int,
                   prefetch: int = 2, manifest: Optional[Manifest] = None,
                   check_crc: bool = True) -> dict[str, list[DeviceStream]]:
    """Per-kind lists of per-device batch iterators (see module docstring).

    Raises :class:`LayoutError` when ``n_devices`` does not divide a kind's
    seed count.
    """
    m = manifest if manifest is not None else read_manifest(root)
    if split not in m.layout:
        raise ArchiveError(f"no split {split!r} in the archive (has {list(m.layout)})",
                           fs.join(root, "manifest.json"))
    dtype = np.dtype(m.dtype).newbyteorder("<")
    out = {}
    legacy_gradient = m.record_format == "imnn-0.3" and m.mode == "gradient"
    for kind in stream_kinds(m):
        if legacy_gradient:
            # Adopted reference archive: main = fiducial seeds 0..n_d-1 zipped
            # (by seed) with the derivative files, whose `data` is dsim/dθ.
            fid = m.kind_info(split, "fiducial")
            sub = KindInfo(kind, 0 if kind == "main" else m.n_d,
                           m.n_d if kind == "main" else m.n_s - m.n_d, 1)
            spec = RecordSpec(tuple(m.input_shape), m.dtype, m.n_params)
            grad_shape = spec.gradient_shape
        else:
            info = m.kind_info(split, kind)
            spec = m.record_spec(split, kind)
        streams = []
        for d in range(n_devices):
            if legacy_gradient:
                try:
                    a, b = device_seeds(sub, n_devices, d)
                except LayoutError as e:
                    raise LayoutError(f"cannot split split {split!r} between {n_devices} "
                                      f"devices: {e.detail}", "manifest.json") from None
                sources = [_Source(root, _seed_segments(m, split, "fiducial", a, b), fid,
                                   _fields(spec), check_crc)]
                if kind == "main":
                    dinfo = m.kind_info(split, "derivative")
                    sources.append(_Source(
                        root, _seed_segments(m, split, "derivative", a, b), dinfo,
                        [("seed", "seed", "int", ()), ("data", "gradient", "bytes", grad_shape)],
                        check_crc))
                epoch = b - a
            else:
                sources = [_Source(root, segments(m, split, kind, n_devices, d), info,
                                   _fields(spec), check_crc)]
                epoch = epoch_records(m, split, kind, n_devices)
            streams.append(DeviceStream(sources, n_per_device, epoch, dtype, prefetch))
        out[kind] = streams
    return out


def _seed_segments(m: Manifest, split: str, kind: str, a: int, b: int) -> list[Segment]:
    rps = m.kind_info(split, kind).records_per_seed
    out = []
    for f in m.files(split, kind):
        lo, hi = max(a, f["first_seed"]), min(b, f["last_seed"] + 1)
        if lo < hi:
            out.append(Segment(f["path"], (lo - f["first_seed"]) * rps, (hi - lo) * rps, lo))
    return out


def close_all(streams: dict) -> None:
    """Stop the reader threads of a :func:`device_streams` result."""
    for lst in streams.values():
        for s in lst:
            s.close()
