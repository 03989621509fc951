"""Buffered reading of a stream source's file pieces, a batch at a time.

:class:`Reader` reads each file in large chunks, finds runs of equal-length
records arithmetically, checks their framing and CRCs with
:func:`writers.framing.scan_run` and hands them to the source's vectorised
decoder; any record that breaks the pattern goes through the per-record
path, whose errors (:func:`writers.framing.header_length`,
:func:`writers.framing.check_payload`) name the file and record, numbered
from the start of the file.

Small local files of one record size (at most :data:`MAX_RUN_BYTES` together)
are read back to back into the one buffer and decoded as a single run
(:meth:`Reader._small_files`, :meth:`Reader._decode_joined`): a run's fixed cost is
then paid once for many files. Any mismatch sends those files through the
per-file path, which names the fault as it would have without joining.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np

from . import fs
from .errors import ArchiveError
from .framing import (
    FRAMING_BYTES,
    HEADER_BYTES,
    check_payload,
    header_length,
    masked_crc,
    scan_run,
    true_prefix,
)
from .stream_decode import Source

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")

READ_CHUNK = 1 << 20  # bytes read at a time when the segment has that many left
MAX_RUN_BYTES = 4 << 20  # at most this many bytes of records decoded per step
BLOCK_BYTES = 1 << 20  # decoded records kept ahead of small batches
DIRECT_BYTES = 256 << 10  # batches at least this large are decoded in place
MAX_READ = 64 << 20  # bytes one read call may ask for (larger reads are split)
AHEAD_BYTES = 16 << 20  # a local file's bytes the kernel is asked to read ahead of the reader


def _readinto(f, out: np.ndarray) -> int:
    """Read up to ``len(out)`` bytes of ``f`` into ``out``; 0 at the end of the file."""
    readinto = getattr(f, "readinto", None)
    if readinto is not None:
        try:
            got = readinto(memoryview(out))
        except (io.UnsupportedOperation, NotImplementedError):
            got = None
        else:
            return got or 0
    chunk = f.read(len(out))
    if not chunk:
        return 0
    out[: len(chunk)] = np.frombuffer(chunk, np.uint8)
    return len(chunk)


def _local_fd(f):
    """The OS file descriptor of a local file object, else None."""
    try:
        fd = f.fileno()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None


class Reader:
    """Reads a :class:`~writers.stream_decode.Source`'s segments in order, a batch at a time.

    Reads each file in chunks (up to the bytes the rest of the segment
    needs, at least :data:`READ_CHUNK` when the segment has that many left,
    and at most the batch's bytes or :data:`MAX_RUN_BYTES`, whichever is
    larger) into one preallocated buffer (``readinto``: the steady state
    allocates nothing; the buffer grows only for a record larger than it) and
    decodes runs of equal-length records with vectorised
    framing checks (:func:`writers.framing.scan_run`) and the source's
    vectorised decoder.  Small batches are cut from a reused block of up to
    :data:`BLOCK_BYTES` of decoded records, so that the fixed NumPy cost of
    a run is shared by many batches.  The first record a vectorised step cannot take
    (different layout, bad CRC, truncation, wrong seed, ...) goes through
    the per-record path, which decodes it or raises an
    :class:`ArchiveError` naming the file and record.  :meth:`restart` reads
    the segments again with the same buffers (the next epoch).
    """

    def __init__(self, source: Source, dtype: np.dtype):
        self.src = source
        self.rps = source.info.records_per_seed
        self.f = None
        self.mem = np.empty(0, np.uint8)  # the read buffer: valid bytes are mem[:end]
        self.block, self.bpos, self.blen = {}, 0, 0  # decoded records not yet handed out
        self.block_mem = {}  # the block's arrays, reused from refill to refill
        self.keys = {key for _, key, _, _ in source.fields}
        # each segment's full path, joined (and checked) once, not every epoch
        self.paths = [fs.join(source.root, seg.path) for seg in source.segs]
        self.row_bytes = max(
            1,
            sum(
                8 if typ == "int" else int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                for _, _, typ, shape in source.fields
            ),
        )
        self.restart()

    def restart(self) -> None:
        """Back to the first segment (the next epoch), keeping the buffers."""
        self._close_file()
        self._next = 0  # index in src.segs of the next segment to open
        self.seg = None
        self.path = None
        self.done = 0  # records of the segment consumed
        self.end = self.pos = self.base = 0  # valid bytes, read position, file offset of mem[0]
        self.eof = False
        self.advised = 0  # file offset up to which the kernel was asked to read ahead
        self.fd = None  # the open local file's descriptor (for the read-ahead advice)
        self.block, self.bpos, self.blen = {}, 0, 0

    def _close_file(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def close(self) -> None:
        self._close_file()
        self.mem = np.empty(0, np.uint8)
        self.block, self.bpos, self.blen, self.block_mem = {}, 0, 0, {}

    # -- buffer
    @property
    def buf(self) -> np.ndarray:
        """The valid bytes of the read buffer (a view)."""
        return self.mem[: self.end]

    def _fill(self, target: int) -> None:
        """Read until ``end >= target`` or the end of the file."""
        while self.end < target and not self.eof:
            # capped per call: a forged record length (valid header CRC) must not make
            # one read allocate it; the file's end stops the loop, and the framing check
            # then names the truncated record
            stop = min(target, self.end + MAX_READ)
            if stop > self.mem.shape[0]:
                grown = np.empty(
                    max(stop, min(2 * self.mem.shape[0], self.end + MAX_READ)), np.uint8
                )
                grown[: self.end] = self.mem[: self.end]
                self.mem = grown
            got = _readinto(self.f, self.mem[self.end : stop])
            if not got:
                self.eof = True
                break
            self.end += got
        self._advise()

    def _have(self) -> int:
        return self.end - self.pos

    def _ensure(self, need: int, want: int = 0) -> int:
        """Make ``need`` bytes available from ``pos`` (fewer at the end of
        the file), reading ``want`` if more are missing; returns the bytes
        available."""
        have = self._have()
        if have >= need or self.eof:
            return have
        if self.pos:  # move the unread tail (part of a record) to the front
            if have:
                self.mem[:have] = self.mem[self.pos : self.end]  # NumPy copes with overlap
            self.base += self.pos
            self.pos, self.end = 0, have
        self._fill(max(need, want))
        return self._have()

    def _seek(self, offset: int) -> None:
        self.f.seek(offset)
        self.pos = self.end = 0
        self.base, self.eof, self.advised = offset, False, offset

    def _advise(self) -> None:
        """Ask the kernel to read the next :data:`AHEAD_BYTES` of a local file
        while this thread decodes (disk reads overlap decoding); a no-op elsewhere."""
        fd = self.fd
        at = self.base + self.end
        if fd is None or at + AHEAD_BYTES // 2 < self.advised:
            return
        try:
            os.posix_fadvise(fd, at, AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            self.fd = None
            return
        self.advised = at + AHEAD_BYTES

    # -- segments
    def _next_segment(self) -> bool:
        self._close_file()
        if self._next >= len(self.src.segs):
            self.seg = None
            return False
        self.seg, self.path = self.src.segs[self._next], self.paths[self._next]
        self._next += 1
        # unbuffered for a local file: readinto fills our own buffer, and a 1 MiB
        # file buffer per open (every segment, every epoch) cost ~3 % of a toy fit
        self.f = fs.open_read(self.path, buffer_size=0)
        self.fd = _local_fd(self.f)
        self.pos = self.end = self.base = self.done = self.advised = 0
        self.eof = False
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
                k = true_prefix(lengths == length)
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
                    batch[key][i : i + k] = arr[self.bpos : self.bpos + k]
                i += k
                self.bpos += k
            elif not self._segment_left():
                break
            elif (size - i) * self.row_bytes >= DIRECT_BYTES:
                i += self._step(batch, i, size - i)
            else:
                cap = max(size - i, BLOCK_BYTES // self.row_bytes)
                one = min(self.seg.take - self.done, cap)  # records of this file alone
                joined = self._small_files(cap)
                n = sum(seg.take for seg in joined) if joined else one
                block = {}
                for key in batch:
                    if key in self.keys:
                        have = self.block_mem.get(key)
                        if have is None or have.shape[0] < n:
                            have = np.empty((n,) + batch[key].shape[1:], batch[key].dtype)
                            self.block_mem[key] = have
                        block[key] = have[:n]
                if not (joined and self._decode_joined(block, joined)):
                    n = one
                    block = {key: a[:n] for key, a in block.items()}
                    j = 0
                    while j < n:
                        j += self._step(block, j, n - j)
                self.block, self.bpos, self.blen = block, 0, n
        return i

    # -- small files, joined
    def _small_files(self, cap: int) -> list:
        """The segments from the current one (just opened, local) on whose files are
        small, whole and of one record size, to be decoded as one run (at most ``cap``
        records and :data:`MAX_RUN_BYTES`); [] when fewer than two qualify.

        Why: a run's fixed cost (its CRC check, template match and decode: ~0.3 ms)
        was paid per file, and archives of small records often come in small files (the
        toy benchmark's 250-record files: 60 runs an iteration, most of the reader's
        time). The current file is read whole here either way; the others are read by
        :meth:`_decode_joined`."""
        seg = self.seg
        if self.done or seg.skip or self.fd is None or self.end:
            return []
        try:
            first = os.fstat(self.fd).st_size
        except OSError:
            return []
        if first > MAX_RUN_BYTES or first < HEADER_BYTES:
            return []
        self._fill(first)
        (length,) = _LEN.unpack_from(self.buf, 0)
        rec = length + FRAMING_BYTES
        if first != seg.take * rec:
            return []
        out, records, nbytes = [seg], seg.take, first
        for nxt, path in zip(self.src.segs[self._next :], self.paths[self._next :]):
            if nxt.skip or fs.is_url(path) or records + nxt.take > cap:
                break
            try:
                size = os.stat(path).st_size
            except OSError:
                break  # the per-file path names what is wrong with it
            if size != nxt.take * rec or nbytes + size > MAX_RUN_BYTES:
                break
            out.append(nxt)
            records += nxt.take
            nbytes += size
        return out if len(out) > 1 else []

    def _decode_joined(self, block: dict, segs: list) -> bool:
        """Read the other files of ``segs`` after the current one's bytes and decode all
        their records into ``block`` rows 0.. as one run; on any mismatch (a short
        file, a bad CRC, an unexpected seed, ...) False, with the current file's bytes
        kept as they were, so that the per-file path reads on and names the fault."""
        first = self.end
        rec = first // segs[0].take
        total = sum(seg.take for seg in segs)
        need = total * rec
        if need > self.mem.shape[0]:
            grown = np.empty(need, np.uint8)
            grown[:first] = self.mem[:first]
            self.mem = grown
        at = first
        for seg, path in zip(segs[1:], self.paths[self._next :]):
            try:
                with fs.open_read(path, buffer_size=0) as f:
                    size = seg.take * rec
                    got = 0
                    while got < size:
                        step = _readinto(f, self.mem[at + got : at + size])
                        if not step:
                            break
                        got += step
            except (OSError, ArchiveError):
                return False
            if got != size:
                return False
            at += size
        buf = self.mem[:need]
        length, k = scan_run(buf, 0, total, self.src.check_crc)
        if k != total or length + FRAMING_BYTES != rec:
            return False
        seeds = np.concatenate([seg.first_seed + np.arange(seg.take) // self.rps for seg in segs])
        arr = np.ndarray((total, length), np.uint8, buf, HEADER_BYTES, (rec, 1))
        if self.src.decode(block, 0, arr, seeds) != total:
            return False
        # every joined segment consumed: on to the one after the last
        self._close_file()
        self._next += len(segs) - 1
        self.seg, self.done = segs[-1], segs[-1].take
        self.path = self.paths[self._next - 1]
        self.pos = self.end = self.base = 0
        self.fd = None
        return True

    def _step(self, batch: dict, i0: int, want: int) -> int:
        seg, src = self.seg, self.src
        left = seg.take - self.done
        want = min(want, left)
        if self._ensure(HEADER_BYTES, READ_CHUNK) < HEADER_BYTES:
            return self._one(batch, i0)
        buf = self.buf
        (length,) = _LEN.unpack_from(buf, self.pos)
        rec = length + FRAMING_BYTES
        if (
            src.check_crc
            and masked_crc(buf[self.pos : self.pos + 8].tobytes())
            != _CRC.unpack_from(buf, self.pos + 8)[0]
        ):
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
        """The next record through the per-record checks and parser (the
        framing errors of :func:`writers.framing.iter_records`)."""
        seg, path = self.seg, self.path
        r = seg.skip + self.done
        offset = self.base + self.pos
        if self._ensure(HEADER_BYTES, READ_CHUNK) == 0:
            raise ArchiveError(
                f"file ends after {r} records, expected at least {seg.skip + seg.take}", path, r
            )
        length = header_length(self.buf, self.pos, offset, path, r, self.src.check_crc)
        rec = length + FRAMING_BYTES
        self._ensure(rec)
        payload = check_payload(
            self.buf, self.pos + HEADER_BYTES, length, offset, path, r, self.src.check_crc
        )
        seed = seg.first_seed + self.done // self.rps
        self.src.fill_one(batch, i0, path, r, seed, bytes(payload))
        self.pos += rec
        self.done += 1
        return 1
