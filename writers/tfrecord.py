"""TFRecord framing in plain NumPy/Python, with CRC32C checks.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes)
    | payload (length bytes)      | uint32 masked_crc32c(payload)

This module reads and writes that framing without TensorFlow so that files
can be read from any file-like object (local files, gs://, s3://).
"""
from __future__ import annotations

import struct
from functools import lru_cache
from typing import BinaryIO, Iterator

import google_crc32c
import numpy as np

from .errors import ArchiveError

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
HEADER_BYTES = 12
FOOTER_BYTES = 4
FRAMING_BYTES = HEADER_BYTES + FOOTER_BYTES


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data`` (uint32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@lru_cache(maxsize=64)
def length_crc(length: int) -> int:
    """Masked CRC of a record header's 8 length bytes (the same for every
    record of that length)."""
    return masked_crc(struct.pack("<Q", length))


def _prefix(ok: np.ndarray) -> int:
    """Length of the leading run of True in a bool vector."""
    return len(ok) if ok.all() else int(np.argmin(ok))


def scan_run(buf: bytes, pos: int, limit: int, check_crc: bool = True) -> tuple[int, int]:
    """Vectorised framing check of equal-length records in a buffer.

    Looks at the record whose header starts at ``buf[pos]`` (at least
    :data:`HEADER_BYTES` must be there) and returns ``(L, k)``: its payload
    length ``L`` and the number ``k`` (at most ``limit``) of consecutive
    records from ``pos`` that are complete in ``buf``, all of payload length
    ``L`` and, with ``check_crc``, all with correct length and payload CRCs.
    Record ``i`` of the run starts at ``pos + i·(L + 16)`` and its payload
    at ``pos + 12 + i·(L + 16)``.  ``k`` stops before the first record that
    differs or fails a check (``k == 0`` when the first one does: read that
    one with the per-record checks of :func:`iter_records` for the error).
    """
    (length,) = struct.unpack_from("<Q", buf, pos)
    rec = length + FRAMING_BYTES
    k = min(limit, (len(buf) - pos) // rec)
    if k <= 0:
        return length, 0
    if k > 1:
        lengths = np.ndarray((k,), "<u8", buf, pos, (rec,))
        k = _prefix(lengths == length)
    if check_crc:
        header_crcs = np.ndarray((k,), "<u4", buf, pos + 8, (rec,))
        k = _prefix(header_crcs == length_crc(length))
        if k:
            start = pos + HEADER_BYTES
            value = google_crc32c.value
            crc = np.array([value(buf[o:o + length]) for o in range(start, start + k * rec, rec)],
                           np.uint32)
            masked = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_MASK_DELTA)
            stored = np.ndarray((k,), "<u4", buf, start + length, (rec,))
            k = _prefix(masked == stored)
    return length, k


def frame(payload: bytes) -> bytes:
    """One framed record (header + payload + footer) as bytes."""
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked_crc(length)) + payload
            + struct.pack("<I", masked_crc(payload)))


def iter_records(f: BinaryIO, path: str = "<stream>", check_crc: bool = True,
                 with_offsets: bool = False) -> Iterator:
    """Yield the payloads (bytes) of the records in a TFRecord stream.

    ``with_offsets=True`` yields ``(offset, payload)`` with ``offset`` the
    byte position of the record's header in the file.  Raises
    :class:`ArchiveError` naming ``path`` and the record number on a
    truncated record or a CRC mismatch.
    """
    offset = 0
    record = 0
    while True:
        header = f.read(HEADER_BYTES)
        if not header:
            return
        if len(header) < HEADER_BYTES:
            raise ArchiveError(
                f"truncated record header ({len(header)} of {HEADER_BYTES} bytes at byte {offset})",
                path, record)
        length, length_crc = _HEADER.unpack(header)
        if check_crc and masked_crc(header[:8]) != length_crc:
            raise ArchiveError(f"length CRC mismatch at byte {offset} (corrupt framing)",
                               path, record)
        body = f.read(length + FOOTER_BYTES)
        if len(body) < length + FOOTER_BYTES:
            raise ArchiveError(
                f"truncated record: expected {length + FOOTER_BYTES} bytes of payload and "
                f"CRC after byte {offset + HEADER_BYTES}, got {len(body)}", path, record)
        payload = body[:length]
        if check_crc:
            (data_crc,) = struct.unpack_from("<I", body, length)
            if masked_crc(payload) != data_crc:
                raise ArchiveError(f"payload CRC mismatch at byte {offset} (corrupt data)",
                                   path, record)
        yield (offset, payload) if with_offsets else payload
        offset += HEADER_BYTES + length + FOOTER_BYTES
        record += 1


def read_records(path: str, check_crc: bool = True) -> list[bytes]:
    """All payloads of one TFRecord file (local path or URL) as a list."""
    from . import fs
    with fs.open_read(path) as f:
        return list(iter_records(f, path, check_crc))
