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
from .schema import RecordSpec, parse_features
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


def iter_segment_records(root: str, segs: list[Segment], info: KindInfo,
                         check_crc: bool = True) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(path, record_number, features)`` for every record of the
    segments, checking that seeds come in the expected order."""
    rps = info.records_per_seed
    for seg in segs:
        path = fs.join(root, seg.path)
        with fs.open_read(path) as f:
            _skip_records(f, seg.skip, path)
            it = iter_records(f, path, check_crc)
            for i in range(seg.take):
                r = seg.skip + i
                try:
                    raw = next(it)
                except StopIteration:
                    raise ArchiveError(f"file ends after {r} records, expected at least "
                                       f"{seg.skip + seg.take}", path, r) from None
                try:
                    feats = parse_features(raw)
                except ValueError as e:
                    raise ArchiveError(str(e), path, r) from None
                seed = seg.first_seed + i // rps
                got = feats.get("seed", (None, [None]))[1]
                if not got or got[0] != seed:
                    raise ArchiveError(f"expected seed {seed}, got {got[:1]} "
                                       f"(records out of order or missing)", path, r)
                yield path, r, feats


def _bytes_into(out: np.ndarray, i: int, feats: dict, name: str, path, r) -> None:
    kind, values = feats.get(name, (None, []))
    row = out[i]
    if kind != "bytes" or len(values) != 1 or len(values[0]) != row.nbytes:
        got = len(values[0]) if kind == "bytes" and values else kind
        raise ArchiveError(f"feature {name!r}: expected {row.nbytes} bytes "
                           f"({out.dtype.name}{list(row.shape)}), got {got}", path, r)
    row.reshape(-1).view(np.uint8)[:] = np.frombuffer(values[0], np.uint8)


def _int_into(out: np.ndarray, i: int, feats: dict, name: str, path, r) -> None:
    kind, values = feats.get(name, (None, []))
    if kind != "int64" or len(values) != 1:
        raise ArchiveError(f"feature {name!r}: expected one int64, got {kind}", path, r)
    out[i] = values[0]


class _Source:
    """One kind's records for one device, with how its features map to the
    batch: ``fields`` is a list of (feature name, batch key, "bytes"/"int",
    shape)."""

    def __init__(self, root, segs, info, fields, check_crc):
        self.root, self.segs, self.info = root, segs, info
        self.fields, self.check_crc = fields, check_crc

    def records(self):
        return iter_segment_records(self.root, self.segs, self.info, self.check_crc)


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
            its = [s.records() for s in sources]
            done = 0
            while done < epoch and not stop.is_set():
                size = min(n, epoch - done)
                batch = {}
                for s in sources:
                    for _, key, typ, shape in s.fields:
                        if key not in batch:
                            batch[key] = (np.empty((size,), np.int64) if typ == "int"
                                          else np.empty((size,) + shape, dtype))
                for i in range(size):
                    seeds = []
                    for s, it in zip(sources, its):
                        path, r, feats = next(it)
                        seeds.append((feats["seed"][1][0], path, r))
                        for name, key, typ, _ in s.fields:
                            (_int_into if typ == "int" else _bytes_into)(
                                batch[key], i, feats, name, path, r)
                    if len({x[0] for x in seeds}) != 1:  # zipped sources must agree
                        raise ArchiveError(f"seed mismatch between {seeds}", seeds[0][1],
                                           seeds[0][2])
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
                        [("data", "gradient", "bytes", grad_shape)], check_crc))
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
