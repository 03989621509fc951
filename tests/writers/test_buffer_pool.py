"""writers.buffer_pool: batch memory is reused only once nothing refers to it, so a
batch (or any view, slice or buffer export of it) that a consumer still holds is
never overwritten, and a stream that is consumed and dropped batch by batch
allocates nothing in the steady state."""

import gc

import numpy as np
import pytest

from writers import stream_prefetch
from writers.archive import write_arrays
from writers.buffer_pool import ALIGN, BatchPool
from writers.crc32c_native import crc32c
from writers.streams import close_all, device_streams

LAYOUT = [("seed", np.dtype(np.int64), ()), ("data", np.dtype("<f4"), (3, 5))]


def test_dropped_batch_is_reused_held_batch_is_not():
    pool = BatchPool(keep=4)
    a = pool.batch(LAYOUT, 10)
    a["data"][:] = 1.0
    b = pool.batch(LAYOUT, 10)  # a is held: a new buffer
    assert not np.shares_memory(a["data"], b["data"])
    del b
    c = pool.batch(LAYOUT, 10)  # b was dropped: its buffer again
    assert pool.reused == 1 and pool.allocated == 2
    c["data"][:] = 2.0
    assert (a["data"] == 1.0).all()


@pytest.mark.parametrize(
    "hold",
    [
        lambda b: b["data"][None],  # the trainer's one-batch group
        lambda b: b["data"][3:5],
        lambda b: memoryview(b["seed"]),
        lambda b: b["data"].reshape(-1).view(np.uint8),
        lambda b: {"seed": b["seed"]},  # another key of the same batch
    ],
)
def test_any_view_or_export_keeps_the_memory(hold):
    pool = BatchPool(keep=1)
    batch = pool.batch(LAYOUT, 10)
    batch["seed"][:] = 7
    batch["data"][:] = 7.0
    kept = hold(batch)
    del batch
    gc.collect()
    for _ in range(5):
        other = pool.batch(LAYOUT, 10)
        other["seed"][:] = -1
        other["data"][:] = -1.0
    arr = kept["seed"] if isinstance(kept, dict) else np.asarray(kept)
    assert (arr.view(np.uint8) != 0xFF).all()  # never overwritten with -1 bytes


def test_arrays_are_aligned_and_sized():
    pool = BatchPool(keep=2)
    for size in (1, 7, 1000):
        b = pool.batch(LAYOUT, size)
        assert b["data"].shape == (size, 3, 5) and b["seed"].shape == (size,)
        assert b["data"].ctypes.data % ALIGN == 0 and b["seed"].ctypes.data % ALIGN == 0
        assert not np.shares_memory(b["data"], b["seed"])


def test_stream_steady_state_reuses_and_held_batches_stay_intact(tmp_path, monkeypatch):
    """A consumer that keeps every third batch for the whole test: those never change,
    while the dropped ones' memory is reused (few buffers for many batches)."""
    pools = []
    original = stream_prefetch.BatchPool

    def recording(keep):
        pools.append(original(keep))
        return pools[-1]

    monkeypatch.setattr(stream_prefetch, "BatchPool", recording)
    fid = np.arange(400 * 6, dtype=np.float32).reshape(400, 6)
    root = str(tmp_path / "a")
    write_arrays(root, "fiducial", [1.0, 2.0], fiducial=fid, n_devices=1, records_per_shard=50)
    streams = device_streams(root, "train", 1, 16, prefetch=2)
    it = streams["fiducial"][0]
    held = []
    try:
        for i in range(3 * 25):  # three epochs of 25 batches
            batch = next(it)
            start = (i % 25) * 16
            assert (batch["data"] == fid[start : start + 16]).all()
            assert (batch["seed"] == np.arange(start, start + 16)).all()
            if i % 3 == 0:
                held.append((start, batch))
            del batch
        for start, batch in held:
            assert (batch["data"] == fid[start : start + 16]).all()
    finally:
        close_all(streams)
    (pool,) = pools
    assert pool.reused > 3 * 25 // 2, (pool.allocated, pool.reused)


def test_native_crc_matches_google_crc32c():
    import google_crc32c

    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8)
    raw = data.tobytes()
    for start, n in [(0, -1), (3, 17), (1000, 50_000), (99_999, 1), (5, 0)]:
        want = google_crc32c.value(raw[start : start + n if n >= 0 else None])
        assert crc32c(data, start, n) == want
        assert crc32c(raw, start, n) == want
        assert crc32c(bytearray(raw), start, n) == want
    with pytest.raises(ValueError):
        crc32c(data, 99_000, 2000)
