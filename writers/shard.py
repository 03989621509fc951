"""Write one shard file from an iterator of serialised records."""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import numpy as np

from . import durable, fs
from .errors import ArchiveError
from .layout import OFFSET_COLUMN, RECORD_COLUMNS, ShardSpec, record_entry
from .schema import record_seed
from .framing import frame
from .input_stats import FIDUCIAL_KINDS, InputStats, StatsRecords


def records_array(entries) -> np.ndarray:
    """Per-record index entries (an array, a sequence of 5-tuples or
    :func:`pack_records` bytes) as one C-contiguous int64 array of shape ``(n, 5)``."""
    if isinstance(entries, (bytes, bytearray, memoryview)):
        return unpack_records(entries)
    return np.ascontiguousarray(entries, dtype=np.int64).reshape(-1, len(RECORD_COLUMNS))


_PACKED = struct.Struct("<4sQ")  # magic, records
_PACKED_MAGIC = b"RIX1"


def pack_records(records) -> bytes:
    """A shard's record index int64(n, 5) as compact bytes, to move it between
    processes (the shard writers' Beam elements, gathered for the manifest step):
    column after column, the offsets as differences (a shard's records are of one or
    a few lengths), zlib level 1. A 4096-record shard's 160 KiB index packs to ~5 KiB
    in ~0.4 ms. Why (issue 10, measured): Beam handed the raw indexes on at ~1.8 µs a
    record after the last shard was written, 4 s of the 40 GB archive's 200 s run;
    packed, that hand-over is 0.2 s at a quarter of that scale, against 1.1 s."""
    a = records_array(records)
    cols = a.T.copy()  # a copy whatever the shape: the offsets row is written next
    cols[OFFSET_COLUMN, 1:] = np.diff(a[:, OFFSET_COLUMN])
    return _PACKED.pack(_PACKED_MAGIC, a.shape[0]) + zlib.compress(cols.tobytes(), 1)


def unpack_records(data) -> np.ndarray:
    """:func:`pack_records` bytes -> the record index int64(n, 5)."""
    data = bytes(data)
    if len(data) < _PACKED.size or data[:4] != _PACKED_MAGIC:
        raise ValueError("not a packed record index (pack_records)")
    (_, n) = _PACKED.unpack_from(data)
    try:
        raw = zlib.decompress(data[_PACKED.size :])
    except zlib.error as e:
        raise ValueError(f"packed record index: {e}") from None
    width = len(RECORD_COLUMNS)
    if len(raw) != n * width * 8:
        raise ValueError(
            f"packed record index: {len(raw)} bytes for {n} records, expected {n * width * 8}"
        )
    cols = np.frombuffer(raw, "<i8").reshape(width, n).astype(np.int64)
    cols[OFFSET_COLUMN] = np.cumsum(cols[OFFSET_COLUMN])
    return np.ascontiguousarray(cols.T)


@dataclass
class FileMeta:
    """Metadata of one written file (JSON-able via :meth:`to_json`).

    path: relative to the archive root; count: records; first_seed /
    last_seed: seeds of the first and last record; bytes: file size;
    sha256: hex digest of the file's bytes.  ``records`` is an int64 array
    ``(count, 5)`` holding, per record, ``(seed, derivative, parameter, offset,
    length)`` (derivative/parameter -1 when absent; offset/length of the framed
    record in bytes) for the Parquet index; it is not stored in the manifest.
    One array rather than a tuple per record: ~40 instead of ~180 bytes per
    record where Beam gathers every shard's index for the manifest step, and it
    pickles as raw bytes.  ``input_stats``: the
    :class:`writers.input_stats.InputStats` of the file's inputs where the
    writer gathered them (fiducial training shards), merged into the
    manifest's ``input_statistics``; not stored per file either.
    """

    path: str
    count: int
    first_seed: int
    last_seed: int
    bytes: int
    sha256: str
    records: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    input_stats: Optional[InputStats] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.records is not None:
            self.records = records_array(self.records)

    def to_json(self, include_records: bool = False) -> dict:
        # a shallow dict: dataclasses.asdict would deep-copy the per-record index
        # (~13 µs per record, serial in the manifest step of large archives)
        d = {
            k: getattr(self, k)
            for k in ("path", "count", "first_seed", "last_seed", "bytes", "sha256")
        }
        if include_records:
            d["records"] = None if self.records is None else self.records.tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "FileMeta":
        keys = ("path", "count", "first_seed", "last_seed", "bytes", "sha256", "records")
        return cls(**{k: d[k] for k in keys if k in d}, input_stats=d.get("input_stats"))


def write_shard(
    root: str, spec_or_relpath: Union[ShardSpec, str], records: Iterable[bytes]
) -> FileMeta:
    """Write ``records`` (serialised tf.train.Examples) as one TFRecord file.

    The file is written under a temporary name and renamed (local) or
    uploaded (object stores) only when complete, so an interrupted write
    never leaves a half-file under the final name.  With a
    :class:`ShardSpec` the record count and seed range are checked before
    the file is committed; a mismatch raises :class:`ArchiveError` and
    leaves nothing behind.  Returns the file's :class:`FileMeta`, with the
    statistics of its inputs when ``records`` is a
    :class:`writers.input_stats.StatsRecords` and the spec is of fiducial
    training data (or there is no spec).
    """
    if isinstance(spec_or_relpath, ShardSpec):
        spec, relpath = spec_or_relpath, spec_or_relpath.path
    else:
        spec, relpath = None, str(spec_or_relpath)
    with_stats = isinstance(records, StatsRecords)
    if with_stats and spec is not None and not gathers_input_stats(spec):
        records.stats = None  # nothing to gather: validation or derivative records
    path = fs.join(root, relpath)
    digest = hashlib.sha256()
    index = []
    offset = 0
    with durable.atomic_writer(path) as f:
        for i, raw in enumerate(records):
            seed, sign, parameter = record_seed(raw)
            if seed is None:
                raise ArchiveError("record has no int64 'seed' feature", relpath, i)
            if spec is not None and not spec.first_seed <= seed <= spec.last_seed:
                raise ArchiveError(
                    f"seed {seed} outside the shard's range {spec.first_seed}..{spec.last_seed}",
                    relpath,
                    i,
                )
            framed = frame(raw)
            f.write(framed)
            digest.update(framed)
            index.append(record_entry(seed, sign, parameter, offset, len(framed)))
            offset += len(framed)
        if not index:
            raise ArchiveError("no records to write", relpath)
        if spec is not None and len(index) != spec.n_records:
            raise ArchiveError(f"expected {spec.n_records} records, got {len(index)}", relpath)
    return FileMeta(
        relpath,
        len(index),
        index[0][0],
        index[-1][0],
        offset,
        digest.hexdigest(),
        index,
        records.stats if with_stats else None,
    )


def gathers_input_stats(spec: ShardSpec) -> bool:
    """Whether a shard's inputs go into the manifest's ``input_statistics``: the
    fiducial kinds of the train split."""
    return spec.split == "train" and spec.kind in FIDUCIAL_KINDS


def file_digest(path: str) -> tuple[int, str]:
    """``(bytes, sha256 hex)`` of a file (local path or URL), streamed."""
    digest = hashlib.sha256()
    n = 0
    with fs.open_read(path) as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
            n += len(chunk)
    return n, digest.hexdigest()


class HashingReader:
    """File wrapper that hashes and counts the bytes read through it."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def read(self, n=-1):
        b = self.f.read(n)
        self.sha.update(b)
        self.n += len(b)
        return b

    def drain(self):
        while self.read(4 << 20):
            pass
