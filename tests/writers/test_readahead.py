"""The read-ahead reader of bucket objects (writers.readahead via writers.fs.open_read)
returns exactly the object's bytes for random seek/read patterns, against the
loopback gs:// and s3:// servers."""

import io
import random

import pytest

from writers import fs
from writers.readahead import RangedReader

from .test_writers_cloud import gcs, s3  # noqa: F401  (fixtures)

SIZE = 700_001  # not a multiple of the chunk


def object_bytes(seed=0) -> bytes:
    return random.Random(seed).randbytes(SIZE)


def check_patterns(open_reader, data: bytes, n_ops=300, seed=1):
    rnd = random.Random(seed)
    with open_reader() as f:
        assert f.read(10) == data[:10]
        pos = 10
        for _ in range(n_ops):
            op = rnd.random()
            if op < 0.35:  # jump anywhere, even past the end
                pos = rnd.randrange(0, SIZE + 100)
                assert f.seek(pos) == pos
            elif op < 0.45:
                back = rnd.randrange(0, 50_000)
                pos = max(0, pos - back)
                f.seek(pos)
            elif op < 0.5:
                pos = f.seek(-rnd.randrange(1, 1000), io.SEEK_END)
            n = rnd.choice([0, 1, 7, 4096, 65_535, 65_536, 65_537, 200_000, -1])
            got = f.read(n)
            want = data[pos:] if n < 0 else data[pos : pos + n]
            assert got == want, (pos, n)
            pos += len(got)
            assert f.tell() == pos
        f.seek(0)
        assert f.read() == data
        assert f.read(5) == b""


def test_ranged_reader_in_memory():
    data = object_bytes()
    fetches = []

    def fetch(a, b):
        fetches.append((a, b))
        return data[a:b]

    check_patterns(lambda: RangedReader(fetch, SIZE, chunk=65_536, ahead=2), data)
    assert all(b - a <= 65_536 for a, b in fetches)


def test_ranged_reader_read_ahead_is_bounded():
    data = object_bytes()
    r = RangedReader(lambda a, b: data[a:b], SIZE, chunk=10_000, ahead=3)
    for pos in (0, 123_456, 5):
        r.seek(pos)
        r.read(100)
        assert len(r._pending) <= 3
        assert all(pos // 10_000 < k <= pos // 10_000 + 3 for k in r._pending)
    r.close()
    assert not r._pending


@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_bucket_reads_identical_bytes(store, request, monkeypatch):
    root = request.getfixturevalue("gcs") if store == "gcs" else request.getfixturevalue("s3")[0]
    monkeypatch.setattr("writers.readahead.CHUNK", 65_536)
    monkeypatch.setenv("IMNN_STREAM_READ_AHEAD", "1")  # both schemes (default: s3 only)
    data = object_bytes(seed=7)
    path = fs.join(root, f"readahead/{store}.bin")
    fs.write_bytes(path, data)
    try:
        f = fs.open_read(path)
        assert isinstance(f, RangedReader)
        f.close()
        check_patterns(lambda: fs.open_read(path), data)
        assert fs.read_bytes(path) == data
        # read-ahead off: Beam's own reader for gs://, one chunk at a time for s3://
        # (Beam's S3 client shares one download stream between threads)
        monkeypatch.setenv("IMNN_STREAM_READ_AHEAD", "0")
        with fs.open_read(path) as f:
            assert isinstance(f, RangedReader) == (store == "s3")
            assert f.read() == data
        check_patterns(lambda: fs.open_read(path), data, n_ops=50)
        monkeypatch.delenv("IMNN_STREAM_READ_AHEAD")  # default: read-ahead for s3 only
        with fs.open_read(path) as f:
            assert isinstance(f, RangedReader) == (store == "s3")
    finally:
        fs.delete(path)
