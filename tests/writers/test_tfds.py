"""tensorflow-datasets reads every archive: ``tfds.builder_from_directory(ARCHIVE/<split>/<kind>)``
with every feature of the kind, one TFDS split per device, counts as in the
manifest and records in seed order under the documented (default) read."""

import os

import numpy as np
import pytest

import writers
from writers.archive import write_arrays
from writers.legacy import adopt

from .test_writers_legacy import write_reference
from .writers_helpers import N_D, N_PARAMS, N_S, SHAPE

tfds = pytest.importorskip("tensorflow_datasets")


def _load(root, split, kind):
    return tfds.builder_from_directory(os.path.join(root, split, kind))


def _read(builder, split):
    ds = builder.as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(interleave_cycle_length=1)
    )
    return list(tfds.as_numpy(ds))


def _stack(examples):
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _check_counts(builder, m, split, kind):
    devices = m.layout[split][kind]["devices"]
    assert list(builder.info.splits) == [f"device-{d['device']}" for d in devices]
    for d in devices:
        info = builder.info.splits[f"device-{d['device']}"]
        assert info.num_examples == sum(f["count"] for f in d["files"])
        assert info.shard_lengths == [f["count"] for f in d["files"]]


def test_tfds_loads_two_device_numerical_archive(tmp_path, arrays):
    fid, der, _ = arrays
    root = str(tmp_path / "a")
    m = write_arrays(
        root,
        "numerical",
        [1.0, 2.0],
        [0.1, 0.2],
        fiducial=fid,
        derivative=der,
        validation_fiducial=fid + 10,
        validation_derivative=der + 10,
        n_devices=2,
        records_per_shard=6,
    )
    assert writers.validate(root).ok
    for split, off in (("train", 0), ("validation", 10)):
        b = _load(root, split, "fiducial")
        _check_counts(b, m, split, "fiducial")
        assert set(b.info.features) == {"data", "seed"}
        got = [_stack(_read(b, f"device-{d}")) for d in range(2)]
        np.testing.assert_array_equal(got[0]["seed"], np.arange(N_S // 2))
        np.testing.assert_array_equal(got[1]["seed"], np.arange(N_S // 2, N_S))
        np.testing.assert_array_equal(np.concatenate([g["data"] for g in got]), fid + off)
        assert got[0]["data"].dtype == np.float32

        b = _load(root, split, "derivative")
        _check_counts(b, m, split, "derivative")
        assert set(b.info.features) == {"data", "seed", "derivative", "parameter"}
        # the default read (no read_config) keeps the order too: disableShuffling
        every = _stack(list(tfds.as_numpy(b.as_dataset(split="all"))))
        np.testing.assert_array_equal(every["data"], (der + off).reshape((-1,) + SHAPE))
        np.testing.assert_array_equal(every["seed"], np.repeat(np.arange(N_D), 2 * N_PARAMS))
        np.testing.assert_array_equal(every["derivative"], np.tile([0, 0, 1, 1], N_D))
        np.testing.assert_array_equal(every["parameter"], np.tile([0, 1], 2 * N_D))
        dev1 = _stack(_read(b, "device-1"))
        np.testing.assert_array_equal(dev1["seed"], np.repeat(np.arange(N_D // 2, N_D), 4))


def test_tfds_loads_two_device_gradient_archive(tmp_path, arrays):
    fid, _, grad = arrays
    root = str(tmp_path / "g")
    m = write_arrays(
        root, "gradient", [1.0, 2.0], fiducial=fid, gradient=grad, n_devices=2, records_per_shard=3
    )
    b = _load(root, "train", "main")
    _check_counts(b, m, "train", "main")
    assert set(b.info.features) == {"data", "seed", "gradient"}
    got = [_stack(_read(b, f"device-{d}")) for d in range(2)]
    np.testing.assert_array_equal(np.concatenate([g["seed"] for g in got]), np.arange(N_D))
    np.testing.assert_array_equal(np.concatenate([g["data"] for g in got]), fid[:N_D])
    np.testing.assert_array_equal(np.concatenate([g["gradient"] for g in got]), grad)
    b = _load(root, "train", "remaining")
    _check_counts(b, m, "train", "remaining")
    assert set(b.info.features) == {"data", "seed"}
    rest = _stack(_read(b, "device-0") + _read(b, "device-1"))
    np.testing.assert_array_equal(rest["seed"], np.arange(N_D, N_S))
    np.testing.assert_array_equal(rest["data"], fid[N_D:])


def test_tfds_loads_float64_fiducial_archive(tmp_path, arrays):
    fid = arrays[0].astype(np.float64)
    root = str(tmp_path / "f")
    write_arrays(root, "fiducial", [1.0], fiducial=fid, n_devices=4, records_per_shard=1)
    b = _load(root, "train", "fiducial")
    assert len(b.info.splits) == 4 and b.info.splits["device-3"].num_shards == N_S // 4
    every = _stack(_read(b, "all"))
    np.testing.assert_array_equal(every["data"], fid)
    assert every["data"].dtype == np.float64


@pytest.mark.parametrize("record_size", [1, 100])
def test_tfds_loads_adopted_reference_archive(tmp_path, arrays, record_size):
    fid, der, _ = arrays
    d = str(tmp_path)
    write_reference(d, fid, der=der, record_size=record_size)
    _, report = adopt(d, "numerical", [1.0, 2.0], [0.1, 0.2], SHAPE)
    assert report.ok, str(report)
    assert writers.validate(d).ok
    b = _load(d, "train", "fiducial")
    assert sum(s.num_examples for s in b.info.splits.values()) == N_S
    if record_size == 100:
        assert list(b.info.splits) == ["device-0"]
    every = _stack(_read(b, "all"))
    np.testing.assert_array_equal(every["seed"], np.arange(N_S))
    np.testing.assert_array_equal(every["data"], fid)
    b = _load(d, "train", "derivative")
    every = _stack(_read(b, "all"))
    assert set(every) == {"data", "seed", "derivative", "parameter"}
    np.testing.assert_array_equal(every["data"], der.reshape((-1,) + SHAPE))


@pytest.mark.e2e
def test_tfds_loads_generated_gradient_archive(tmp_path):
    from beam_jobs.driver import generate

    root = str(tmp_path / "gen")
    m = generate(
        root, "toy", [0.0, 1.0], None, n_s=8, n_d=4, n_devices=2, mode="gradient",
        records_per_shard=1, n_validation=0, progress=False,
    )  # fmt: skip
    assert writers.validate(root).ok
    b = _load(root, "train", "main")
    _check_counts(b, m, "train", "main")
    got = _stack(_read(b, "device-0") + _read(b, "device-1"))
    assert set(got) == {"data", "seed", "gradient"}
    np.testing.assert_array_equal(got["seed"], np.arange(4))
    assert got["gradient"].shape == (4, 10, 2)
    from writers.streams import close_all, device_streams

    st = device_streams(root, "train", 1, 4)
    try:
        np.testing.assert_array_equal(next(st["main"][0])["gradient"], got["gradient"])
    finally:
        close_all(st)
