"""Per-record Parquet index beside the manifest (``index.parquet``).

One row per record: ``split, kind, seed, derivative, parameter, file,
record, offset, length`` (derivative/parameter −1 where absent; ``record``
is the 0-based position in ``file``; ``offset``/``length`` locate the framed
record in bytes), so tools can find any simulation without scanning the
archive.  Published schema: docs/index.schema.json; the Parquet key-value
metadata ``imnn_stream.index_format_version`` names its version.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import durable, fs
from .layout import INDEX_NAME, RECORD_COLUMNS, record_entry
from .schema import record_seed
from .shard import records_array
from .framing import FRAMING_BYTES, iter_records, read_upto

COLUMNS = ("split", "kind", "seed", "derivative", "parameter", "file", "record", "offset", "length")
#: Parquet key-value metadata: the index format (docs/index.schema.json)
FORMAT_KEY, FORMAT_VERSION = "imnn_stream.index_format_version", "1"


def scan_file(path: str) -> list[tuple]:
    """``(seed, derivative, parameter, offset, length)`` per record of a file."""
    out = []
    with fs.open_read(path) as f:
        for offset, raw in iter_records(f, path, check_crc=False, with_offsets=True):
            out.append(record_entry(*record_seed(raw), offset, len(raw) + FRAMING_BYTES))
    return out


def build_table(root: str, manifest) -> pa.Table:
    """The index as a pyarrow Table (scans files whose entries were not
    gathered while writing).  ``manifest``: a :class:`writers.manifest.Manifest`
    (only its ``layout``, ``files`` and ``record_entries`` are used).

    Built column-wise: one int64 array ``(count, 5)`` per file, concatenated, and
    the string columns as dictionary indices into the (split, kind, file) names,
    so no Python object is created per record (millions in a large archive)."""
    names, keys, nums, records = [], [], [], []
    for split in manifest.layout:
        for kind in manifest.layout[split]:
            for f in manifest.files(split, kind):
                entries = manifest.record_entries(f["path"])
                if entries is None:
                    entries = scan_file(fs.join(root, f["path"]))
                a = records_array(entries)
                keys.append(np.full(len(a), len(names), np.int32))
                names.append((split, kind, f["path"]))
                nums.append(a)
                records.append(np.arange(len(a), dtype=np.int64))
    which = pa.array(np.concatenate(keys) if keys else np.zeros(0, np.int32))
    a = np.concatenate(nums) if nums else np.zeros((0, len(RECORD_COLUMNS)), np.int64)
    col = dict(zip(RECORD_COLUMNS, a.T))

    def strings(j):
        return pc.take(pa.array([n[j] for n in names], pa.string()), which)

    cols = {
        "split": strings(0),
        "kind": strings(1),
        "seed": pa.array(col["seed"]),
        "derivative": pa.array(col["derivative"].astype(np.int8)),
        "parameter": pa.array(col["parameter"].astype(np.int32)),
        "file": strings(2),
        "record": pa.array(np.concatenate(records) if records else np.zeros(0, np.int64)),
        "offset": pa.array(col["offset"]),
        "length": pa.array(col["length"]),
    }
    schema = pa.schema(
        [
            ("split", pa.string()),
            ("kind", pa.string()),
            ("seed", pa.int64()),
            ("derivative", pa.int8()),
            ("parameter", pa.int32()),
            ("file", pa.string()),
            ("record", pa.int64()),
            ("offset", pa.int64()),
            ("length", pa.int64()),
        ]
    )
    return pa.table(
        [cols[c] for c in COLUMNS], schema=schema.with_metadata({FORMAT_KEY: FORMAT_VERSION})
    )


def write_index(root: str, manifest) -> str:
    """Write ``root/index.parquet`` atomically; returns its path."""
    table = build_table(root, manifest)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = fs.join(root, INDEX_NAME)
    durable.write_atomic(path, buf.getvalue())
    return path


def read_index(root: str) -> pa.Table:
    """The archive's index as a pyarrow Table."""
    # No pyarrow thread may hold the bytes: with pre-buffering (the default) an I/O pool
    # thread drops the last reference to the Python buffer, which needs the GIL; when
    # that happens during interpreter shutdown the thread is force-unwound through
    # noexcept C++ frames and the process aborts ("terminate called without an active
    # exception", ~1 in 5 `validate` runs with pyarrow 25; gdb: ~PyBuffer in
    # ReadRangeCache). Copied into Arrow-owned memory and read on this thread, nothing
    # Python-owned outlives the call. The index is small; one thread reads it fast.
    data = fs.read_bytes(fs.join(root, INDEX_NAME))
    owned = pa.allocate_buffer(len(data))
    np.frombuffer(owned, np.uint8)[:] = np.frombuffer(data, np.uint8)
    return pq.read_table(pa.BufferReader(owned), use_threads=False, pre_buffer=False)


def find(root: str, **where) -> list[dict]:
    """Rows of the index matching every ``column=value`` given, e.g.
    ``find(root, split="train", kind="derivative", seed=5, derivative=1)``."""
    import pyarrow.compute as pc

    table = read_index(root)
    mask = None
    for column, value in where.items():
        if column not in COLUMNS:
            raise ValueError(f"unknown index column {column!r} (have {COLUMNS})")
        m = pc.equal(table.column(column), value)
        mask = m if mask is None else pc.and_(mask, m)
    return (table.filter(mask) if mask is not None else table).to_pylist()


def read_record(root: str, row: dict) -> bytes:
    """The payload of the record an index row points to (one ranged read)."""
    path = fs.join(root, row["file"])
    with fs.open_read(path) as f:
        f.seek(row["offset"])
        framed = read_upto(f, row["length"])
    return next(iter_records(io.BytesIO(framed), row["file"]))
