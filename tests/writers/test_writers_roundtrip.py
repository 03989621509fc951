"""Write → validate → read back through the per-device streams."""

import math

import numpy as np
import pytest

import writers
from writers.archive import write_arrays
from writers.errors import ArchiveError, LayoutError
from writers.streams import close_all, device_streams, epoch_records

from .writers_helpers import N_D, N_PARAMS, N_S, SHAPE, make_arrays


def read_epoch(streams, kind, n_devices, epoch):
    """Concatenate one epoch of every device's stream, in device order."""
    out = []
    for dev in streams[kind]:
        batches = [next(dev) for _ in range(math.ceil(epoch / dev.n_per_device))]
        out.append({k: np.concatenate([b[k] for b in batches]) for k in batches[0]})
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


@pytest.mark.parametrize("n_devices", [1, 2, 4])
def test_numerical_round_trip(numerical_archive, arrays, n_devices):
    root, m = numerical_archive
    fid, der, _ = arrays
    report = writers.validate(root)
    assert report.ok, str(report)
    for split, offset in (("train", 0), ("validation", 10)):
        streams = device_streams(root, split, n_devices, n_per_device=3)
        try:
            e = epoch_records(m, split, "fiducial", n_devices)
            assert e == N_S // n_devices
            got = read_epoch(streams, "fiducial", n_devices, e)
            np.testing.assert_array_equal(got["data"], fid + offset)
            np.testing.assert_array_equal(got["seed"], np.arange(N_S))
            e = epoch_records(m, split, "derivative", n_devices)
            got = read_epoch(streams, "derivative", n_devices, e)
            np.testing.assert_array_equal(got["data"], (der + offset).reshape((-1,) + SHAPE))
            np.testing.assert_array_equal(got["seed"], np.repeat(np.arange(N_D), 2 * N_PARAMS))
            np.testing.assert_array_equal(
                got["derivative"], np.tile(np.repeat([0, 1], N_PARAMS), N_D)
            )
            np.testing.assert_array_equal(got["parameter"], np.tile(np.arange(N_PARAMS), 2 * N_D))
        finally:
            close_all(streams)


@pytest.mark.parametrize("n_devices", [1, 2, 4])
def test_gradient_round_trip_float64(tmp_path, n_devices):
    fid, _, grad = make_arrays(dtype=np.float64)
    root = str(tmp_path / "g")
    write_arrays(
        root,
        "gradient",
        [1.0, 2.0],
        None,
        fiducial=fid,
        gradient=grad,
        n_devices=4,
        records_per_shard=1,
    )
    assert writers.validate(root).ok
    m = writers.manifest.read_manifest(root)
    assert m.dtype == "float64"  # never silently down-cast
    streams = device_streams(root, "train", n_devices, n_per_device=2)
    try:
        main = read_epoch(streams, "main", n_devices, N_D // n_devices)
        assert main["data"].dtype == np.float64
        np.testing.assert_array_equal(main["data"], fid[:N_D])
        np.testing.assert_array_equal(main["gradient"], grad)
        np.testing.assert_array_equal(main["seed"], np.arange(N_D))
        rem = read_epoch(streams, "remaining", n_devices, (N_S - N_D) // n_devices)
        np.testing.assert_array_equal(rem["data"], fid[N_D:])
        np.testing.assert_array_equal(rem["seed"], np.arange(N_D, N_S))
        assert "gradient" not in rem
    finally:
        close_all(streams)


def test_streams_repeat_and_short_last_batch(tmp_path):
    fid, _, _ = make_arrays()
    root = str(tmp_path / "f")
    write_arrays(root, "fiducial", [1.0, 2.0], fiducial=fid, records_per_shard=5)
    streams = device_streams(root, "train", 2, n_per_device=3)
    try:
        dev = streams["fiducial"][1]
        sizes = [len(next(dev)["seed"]) for _ in range(6)]
        assert sizes == [3, 3, 2, 3, 3, 2]  # epoch of 8 records, repeated
        seeds = np.concatenate([next(dev)["seed"] for _ in range(3)])
        np.testing.assert_array_equal(seeds, np.arange(8, 16))
    finally:
        close_all(streams)


def test_batch_bytes_gives_whole_multiples_of_n_per_device(tmp_path):
    """batch_bytes: batches of whole multiples of n_per_device within that many decoded
    bytes, epoch-aligned, the same records in the same order as batches of n_per_device."""
    from writers.stream_prefetch import batch_records

    assert batch_records(3, 8, 100) == 3  # no batch_bytes: n_per_device
    assert batch_records(3, 8, 100, 700) == 6  # 2 × 3 rows of 100 bytes fit in 700
    assert batch_records(3, 8, 100, 1 << 20) == 9  # never past the epoch (8 -> 3 × 3)
    assert batch_records(3, 8, 1000, 700) == 3  # at least n_per_device
    fid, _, _ = make_arrays()
    root = str(tmp_path / "f")
    write_arrays(root, "fiducial", [1.0, 2.0], fiducial=fid, records_per_shard=5)
    small = device_streams(root, "train", 2, n_per_device=3)
    row = small["fiducial"][1].epoch_bytes // 8
    big = device_streams(root, "train", 2, n_per_device=3, batch_bytes=2 * 3 * row)
    try:
        dev = big["fiducial"][1]
        assert (dev.batch_records, dev.batches_per_epoch) == (6, 2)
        sizes = [len(next(dev)["seed"]) for _ in range(4)]
        assert sizes == [6, 2, 6, 2]  # epoch of 8 records, repeated
        a = [next(small["fiducial"][1]) for _ in range(6)]
        b = [next(dev) for _ in range(4)]
        for k in a[0]:
            np.testing.assert_array_equal(
                np.concatenate([x[k] for x in a]), np.concatenate([x[k] for x in b])
            )
    finally:
        close_all(small)
        close_all(big)


def test_device_count_must_divide(numerical_archive):
    root, _ = numerical_archive
    with pytest.raises(LayoutError, match="3 devices"):
        device_streams(root, "train", 3, 2)


def test_stream_reports_corruption(numerical_archive):
    root, m = numerical_archive
    rel = m.files("train", "fiducial")[0]["path"]
    path = f"{root}/{rel}"
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 0xFF
    open(path, "wb").write(data)
    streams = device_streams(root, "train", 1, 16)
    try:
        with pytest.raises(ArchiveError, match=rel):
            next(streams["fiducial"][0])
    finally:
        close_all(streams)


def test_write_arrays_refuses_existing_archive(numerical_archive, arrays):
    root, _ = numerical_archive
    before = open(f"{root}/manifest.json").read()
    with pytest.raises(ArchiveError, match="already exists"):
        write_arrays(root, "fiducial", [1.0, 2.0], fiducial=arrays[0])
    assert open(f"{root}/manifest.json").read() == before


def test_shards_capped_by_bytes(tmp_path):
    fid, _, _ = make_arrays()
    root = str(tmp_path / "b")
    m = write_arrays(
        root, "fiducial", [1.0, 2.0], fiducial=fid, records_per_shard=1000, max_bytes=250
    )
    files = m.files("train", "fiducial")
    assert len(files) > 1 and all(f["bytes"] <= 250 for f in files)
    assert writers.validate(root).ok


def test_streams_across_varint_widths_and_negative_values(tmp_path):
    """Seeds 0..299 span one- and two-byte varints (records of two lengths)."""
    fid = np.arange(300 * 2, dtype=np.float32).reshape(300, 2) - 7
    root = str(tmp_path / "v")
    write_arrays(root, "fiducial", [1.0], fiducial=fid, records_per_shard=77)
    for n_devices, n in ((1, 64), (3, 50), (4, 75)):
        streams = device_streams(root, "train", n_devices, n)
        try:
            got = read_epoch(streams, "fiducial", n_devices, 300 // n_devices)
            np.testing.assert_array_equal(got["data"], fid)
            np.testing.assert_array_equal(got["seed"], np.arange(300))
        finally:
            close_all(streams)


def test_stream_names_out_of_order_record(numerical_archive):
    from writers.framing import frame, read_records

    root, m = numerical_archive
    rel = m.files("train", "fiducial")[0]["path"]
    recs = read_records(f"{root}/{rel}")
    recs[2], recs[3] = recs[3], recs[2]
    with open(f"{root}/{rel}", "wb") as f:
        f.write(b"".join(frame(r) for r in recs))
    streams = device_streams(root, "train", 1, 16)
    try:
        with pytest.raises(ArchiveError, match=rf"{rel}, record 2: expected seed 2, got 3"):
            next(streams["fiducial"][0])
    finally:
        close_all(streams)
