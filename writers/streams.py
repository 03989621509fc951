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
is bounded by ``prefetch + 2`` batches per iterator plus, per iterator,
one read buffer (at most the larger of 4 MiB and one batch of records) and
one block of decoded records (at most the larger of 1 MiB and one batch).

Files are read in large chunks, and runs of equal-length records (the
normal case: every record of a kind has one size) are located
arithmetically, framed, CRC-checked and decoded with a few NumPy operations
per run (:func:`writers.tfrecord.scan_run`; long runs check their payload
CRCs together, see there); any record that breaks the pattern is read
through the per-record path, which names the file and record (numbered from
the start of the file) in its errors.
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
from .schema import RecordSpec, _parse_flat, parse_flat
from .tfrecord import (FOOTER_BYTES, FRAMING_BYTES, HEADER_BYTES, _prefix, iter_records,
                       masked_crc, scan_run)

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")


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
    return _seed_segments(manifest, split, kind, a, b)


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

    def matches(self, arr: np.ndarray) -> np.ndarray:
        """Per row of ``arr`` (n, length): does it share the fixed bytes?"""
        return (arr[:, self.fixed] == self.expected).all(axis=1)


def _varints(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode fixed-width varint columns (n, w) → (int64(n), valid bool(n))."""
    w = cols.shape[1]
    valid = cols[:, -1] < 0x80
    if w == 1:
        return cols[:, 0].astype(np.int64), valid
    if w > 1:
        valid &= (cols[:, :-1] >= 0x80).all(axis=1)
    value = np.zeros(cols.shape[0], np.uint64)
    for j in range(w):
        value |= (cols[:, j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    return value.view(np.int64), valid


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

    def reader(self, dtype) -> "_Reader":
        return _Reader(self, np.dtype(dtype))

    def fill(self, batch: dict, i0: int, records: list) -> None:
        """Decode ``records`` [(path, r, expected_seed, payload)] into rows
        ``i0..`` of the batch arrays (the per-record interface; the streams
        use :class:`_Reader`)."""
        start = 0
        while start < len(records):
            path, length = records[start][0], len(records[start][3])
            stop = start + 1
            while (stop < len(records) and records[stop][0] == path
                   and len(records[stop][3]) == length):
                stop += 1
            run = records[start:stop]
            done = 0
            if len(run) > 1:
                arr = np.frombuffer(b"".join(x[3] for x in run), np.uint8).reshape(
                    len(run), length)
                seeds = np.fromiter((x[2] for x in run), np.int64, len(run))
                done = self.decode(batch, i0 + start, arr, seeds)
            if done < len(run):
                self._fill_each(batch, i0 + start + done, run[done:])
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

    def _template_for(self, row: np.ndarray, rebuild: bool) -> Optional[_Template]:
        t = self.template
        if rebuild or t is None or t.length != row.shape[0]:
            try:
                t = _Template(row.tobytes(), self.fields)
            except (ValueError, IndexError, UnicodeDecodeError):
                t = None
            self.template = t
        return t

    def decode(self, batch: dict, i0: int, arr: np.ndarray, seeds: np.ndarray) -> int:
        """Decode payload rows ``arr`` (n, L) uint8 with expected seeds
        ``seeds`` into batch rows ``i0..`` with a few NumPy operations.

        Returns how many leading rows were decoded (they all share one byte
        layout, valid varints, the right value sizes and the expected
        seeds); the caller decodes the next row with the per-record parser,
        which names the record in any error."""
        n = arr.shape[0]
        t = self._template_for(arr[0], False)
        if t is None:
            return 0
        ok = t.matches(arr)
        if not ok[0]:  # a new layout of the same length: template from row 0
            t = self._template_for(arr[0], True)
            if t is None:
                return 0
            ok = t.matches(arr)
        m = _prefix(ok)
        values = {}
        for name, key, typ, _ in self.fields:
            a, b = t.slices[name]
            if typ == "int":
                v, valid = _varints(arr[:m, a:b])
                m = min(m, _prefix(valid))
                values[key] = v
            else:
                if b - a != batch[key][0].nbytes:
                    return 0  # wrong size: the per-record path reports it
                values[key] = arr[:, a:b]
        if "seed" not in values:
            return 0
        m = min(m, _prefix(values["seed"][:m] == seeds[:m]))
        if m == 0:
            return 0
        for key, v in values.items():
            out = batch[key][i0:i0 + m]
            if v.ndim == 1:
                out[:] = v[:m]
            else:
                out.reshape(m, -1).view(np.uint8)[:] = v[:m]
        return m


READ_CHUNK = 1 << 20   # bytes read at a time when the segment has that many left
MAX_RUN_BYTES = 4 << 20  # at most this many bytes of records decoded per step
BLOCK_BYTES = 1 << 20    # decoded records kept ahead of small batches
DIRECT_BYTES = 256 << 10  # batches at least this large are decoded in place


class _Reader:
    """Reads a :class:`_Source`'s segments in order, a batch at a time.

    Reads each file in chunks (up to the bytes the rest of the segment
    needs, at least :data:`READ_CHUNK` when the segment has that many left,
    and at most the batch's bytes or :data:`MAX_RUN_BYTES`, whichever is
    larger) and decodes runs of equal-length records with vectorised
    framing checks (:func:`writers.tfrecord.scan_run`) and the source's
    vectorised decoder.  Small batches are cut from a block of up to
    :data:`BLOCK_BYTES` of decoded records, so that the fixed NumPy cost of
    a run is shared by many batches.  The first record a vectorised step cannot take
    (different layout, bad CRC, truncation, wrong seed, ...) goes through
    the per-record path, which decodes it or raises an
    :class:`ArchiveError` naming the file and record.
    """

    def __init__(self, source: _Source, dtype: np.dtype):
        self.src = source
        self.rps = source.info.records_per_seed
        self._segs = iter(source.segs)
        self.seg = None
        self.f = None
        self.path = None
        self.done = 0      # records of the segment consumed
        self.buf = b""
        self.pos = 0       # read position in buf
        self.base = 0      # file offset of buf[0]
        self.eof = False
        self.block, self.bpos, self.blen = {}, 0, 0  # decoded records not yet handed out
        self.keys = {key for _, key, _, _ in source.fields}
        self.row_bytes = max(1, sum(8 if typ == "int" else
                                    int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                                    for _, _, typ, shape in source.fields))

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
        self.buf = b""
        self.block, self.bpos, self.blen = {}, 0, 0

    # -- buffer
    def _read(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self.f.read(n - got)
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _have(self) -> int:
        return len(self.buf) - self.pos

    def _ensure(self, need: int, want: int = 0) -> int:
        """Make ``need`` bytes available from ``pos`` (fewer at the end of
        the file), reading ``want`` if more are missing; returns the bytes
        available."""
        have = self._have()
        if have >= need or self.eof:
            return have
        chunk = self._read(max(need, want) - have)
        self.base += self.pos
        self.buf = self.buf[self.pos:] + chunk if have else chunk
        self.pos = 0
        return self._have()

    def _seek(self, offset: int) -> None:
        self.f.seek(offset)
        self.buf, self.pos, self.base, self.eof = b"", 0, offset, False

    # -- segments
    def _next_segment(self) -> bool:
        self.close()
        self.seg = next(self._segs, None)
        if self.seg is None:
            return False
        self.path = fs.join(self.src.root, self.seg.path)
        self.f = fs.open_read(self.path)
        self.buf, self.pos, self.base, self.eof, self.done = b"", 0, 0, False, 0
        self._skip(self.seg.skip)
        return True

    def _skip(self, n: int) -> None:
        """Move past ``n`` framed records (lengths only, like the seek-based
        skip: their CRCs are not checked)."""
        r = 0
        while r < n:
            if self._ensure(HEADER_BYTES, READ_CHUNK) < HEADER_BYTES:
                raise ArchiveError(f"truncated: file ends before record {n}", self.path, r)
            (length,) = _LEN.unpack_from(self.buf, self.pos)
            rec = length + FRAMING_BYTES
            k = min(n - r, self._have() // rec)
            if k > 1:
                lengths = np.ndarray((k,), "<u8", self.buf, self.pos, (rec,))
                k = _prefix(lengths == length)
            if k:
                self.pos += k * rec
                r += k
            else:  # the record runs past the buffer
                self._seek(self.base + self.pos + rec)
                r += 1

    def _segment_left(self) -> bool:
        """Is there a record left to read (opening the next segment if needed)?"""
        while self.seg is None or self.done == self.seg.take:
            if not self._next_segment():
                return False
        return True

    def read_into(self, batch: dict, size: int) -> int:
        """Decode up to ``size`` records into rows ``0..`` of the batch;
        returns how many (fewer only when the segments are exhausted).

        Small batches are served from a decoded block of up to
        :data:`BLOCK_BYTES` (so the per-run NumPy work is shared by many
        batches); large ones are decoded straight into the batch."""
        i = 0
        while i < size:
            if self.bpos < self.blen:
                k = min(size - i, self.blen - self.bpos)
                for key, arr in self.block.items():
                    batch[key][i:i + k] = arr[self.bpos:self.bpos + k]
                i += k
                self.bpos += k
            elif not self._segment_left():
                break
            elif (size - i) * self.row_bytes >= DIRECT_BYTES:
                i += self._step(batch, i, size - i)
            else:
                n = min(self.seg.take - self.done,
                        max(size - i, BLOCK_BYTES // self.row_bytes))
                block = {key: np.empty((n,) + batch[key].shape[1:], batch[key].dtype)
                         for key in batch if key in self.keys}
                j = 0
                while j < n:
                    j += self._step(block, j, n - j)
                self.block, self.bpos, self.blen = block, 0, n
        return i

    def _step(self, batch: dict, i0: int, want: int) -> int:
        seg, src = self.seg, self.src
        left = seg.take - self.done
        want = min(want, left)
        if self._ensure(HEADER_BYTES, READ_CHUNK) < HEADER_BYTES:
            return self._one(batch, i0)
        (length,) = _LEN.unpack_from(self.buf, self.pos)
        rec = length + FRAMING_BYTES
        if src.check_crc and masked_crc(self.buf[self.pos:self.pos + 8]) != \
                _CRC.unpack_from(self.buf, self.pos + 8)[0]:
            return self._one(batch, i0)  # corrupt framing: do not trust the length
        want = min(want, max(1, MAX_RUN_BYTES // rec))
        self._ensure(want * rec, min(left * rec, max(READ_CHUNK, want * rec)))
        length, k = scan_run(self.buf, self.pos, want, src.check_crc)
        if k == 0:
            return self._one(batch, i0)
        start = self.pos + HEADER_BYTES
        arr = np.ndarray((k, length), np.uint8, self.buf, start, (rec, 1))
        first = self.done + np.arange(k)
        seeds = seg.first_seed + first // self.rps if self.rps > 1 else seg.first_seed + first
        m = src.decode(batch, i0, arr, seeds)
        if m == 0:
            return self._one(batch, i0)
        self.pos += m * rec
        self.done += m
        return m

    def _one(self, batch: dict, i0: int) -> int:
        """The next record through the per-record checks and parser
        (messages as :func:`writers.tfrecord.iter_records`)."""
        seg, path = self.seg, self.path
        r = seg.skip + self.done
        offset = self.base + self.pos
        have = self._ensure(HEADER_BYTES, READ_CHUNK)
        if have == 0:
            raise ArchiveError(f"file ends after {r} records, expected at least "
                               f"{seg.skip + seg.take}", path, r)
        if have < HEADER_BYTES:
            raise ArchiveError(f"truncated record header ({have} of {HEADER_BYTES} bytes at "
                               f"byte {offset})", path, r)
        (length,) = _LEN.unpack_from(self.buf, self.pos)
        if self.src.check_crc and masked_crc(self.buf[self.pos:self.pos + 8]) != \
                _CRC.unpack_from(self.buf, self.pos + 8)[0]:
            raise ArchiveError(f"length CRC mismatch at byte {offset} (corrupt framing)",
                               path, r)
        rec = length + FRAMING_BYTES
        have = self._ensure(rec)
        if have < rec:
            raise ArchiveError(
                f"truncated record: expected {length + FOOTER_BYTES} bytes of payload and "
                f"CRC after byte {offset + HEADER_BYTES}, got {have - HEADER_BYTES}", path, r)
        start = self.pos + HEADER_BYTES
        payload = self.buf[start:start + length]
        if self.src.check_crc and masked_crc(payload) != \
                _CRC.unpack_from(self.buf, start + length)[0]:
            raise ArchiveError(f"payload CRC mismatch at byte {offset} (corrupt data)", path, r)
        seed = seg.first_seed + self.done // self.rps
        self.src._fill_each(batch, i0, [(path, r, seed, payload)])
        self.pos += rec
        self.done += 1
        return 1


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
            readers = [s.reader(dtype) for s in sources]
            try:
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
                    for r in readers:
                        got = r.read_into(batch, size)
                        if got != size:
                            raise ArchiveError(f"stream ended after {done + got} "
                                               f"records of an epoch of {epoch}")
                    done += size
                    if not _put(q, batch, stop):
                        return
            finally:
                for r in readers:
                    r.close()
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
    """The file pieces holding seeds [a, b) of a kind."""
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
