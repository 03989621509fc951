"""Input statistics of the fiducial training data (issue 12 item 1): the
mergeable accumulator (writers.input_stats), what write_arrays and adopt record
in the manifest, and what the validator checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import writers
from imnn_stream import normalise
from writers.archive import write_arrays
from writers.framing import frame
from writers.input_stats import InputStats, json_errors, merge_all, reduce_axes, stats_shape
from writers.legacy import adopt
from writers.manifest import new_manifest, read_manifest
from writers.schema import encode_example
from writers.shard import write_shard
from writers.layout import plan_shards

from .writers_helpers import make_arrays, rewrite_manifest

T = {"none": lambda x: x, "log1p": np.log1p, "asinh": np.arcsinh}
SHAPES = [(), (5,), (4, 6), (3, 4, 2), (2, 2, 2, 2)]


def numpy_stats(x, transform):
    """(mean, var ddof=1) of T(x) per element or channel, straight from numpy."""
    axes = (0,) + tuple(a + 1 for a in reduce_axes(x.shape[1:]))
    y = T[transform](np.asarray(x, np.float64))
    return y.mean(axes), y.var(axes, ddof=1)


@pytest.mark.parametrize("shape", SHAPES)
def test_statistics_per_element_or_channel_match_numpy_and_normalise(shape):
    x = np.random.default_rng(1).lognormal(size=(60,) + shape).astype(np.float32)
    s = InputStats(shape)
    for chunk in np.array_split(x, 7):
        s.update(chunk)
    assert (s.records, s.count) == (60, 60 * s.per_value)
    for t in T:
        mean, var = numpy_stats(x, t)
        assert s.mean(t).shape == stats_shape(shape) == np.shape(mean)
        np.testing.assert_allclose(s.mean(t), mean, rtol=1e-12)
        np.testing.assert_allclose(s.var(t), var, rtol=1e-10)
        # the trainers' normalisation is the same statistic (imnn_stream.normalise)
        n = normalise.from_arrays(x, t)
        np.testing.assert_allclose(normalise.from_statistics(s, t).mean, n.mean, rtol=1e-6)
        np.testing.assert_allclose(normalise.from_statistics(s, t).std, n.std, rtol=1e-6)


def test_merge_is_order_independent():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(101, 4, 4, 3))
    parts = [InputStats(x.shape[1:]).update(p) for p in np.array_split(x, 9)]
    whole = InputStats(x.shape[1:]).update(x)
    for order in (range(9), range(8, -1, -1), rng.permutation(9)):
        merged = merge_all(parts[i] for i in order)
        assert not whole.differences(merged, rtol=1e-12), whole.differences(merged, rtol=1e-12)
    tree = merge_all([merge_all(parts[:4]), merge_all(parts[4:])])
    assert not whole.differences(tree, rtol=1e-12)
    assert merge_all([parts[0], None]) is None and merge_all([]) is None


def test_undefined_transforms_are_recorded_invalid():
    s = InputStats((3,)).update(np.array([[0.5, 1.0, 2.0], [0.0, -1.5, 1.0]]))
    assert s.valid("none") and s.valid("asinh") and not s.valid("log1p")
    assert s.to_json()["transforms"]["log1p"] is None
    good = InputStats((3,)).update(np.ones((4, 3)))
    assert not good.merge(s).valid("log1p") and good.merge(s).valid("none")
    nan = InputStats((3,)).update(np.array([[np.nan, 1.0, 2.0]]))
    assert not any(nan.valid(t) for t in T)
    with pytest.raises(ValueError, match="log1p"):
        normalise.from_statistics(s, "log1p")


def test_json_round_trip_and_shape_checks():
    s = InputStats((4, 4, 2)).update(np.random.default_rng(3).lognormal(size=(10, 4, 4, 2)))
    d = json.loads(json.dumps(s.to_json("train", ["fiducial"])))
    assert d["axes"] == [0, 1] and d["count"] == 160 and not json_errors(d, (4, 4, 2))
    assert not s.differences(InputStats.from_json(d, (4, 4, 2)), rtol=0)
    assert any("axes" in e for e in json_errors(d, (4, 4, 3, 1)))
    assert any("shape [2], expected [3]" in e for e in json_errors(d, (4, 4, 3)))
    d["transforms"]["none"]["m2"] = [-1.0, 1.0]
    assert any("m2" in e for e in json_errors(d, (4, 4, 2)))


def test_write_arrays_records_train_fiducial_statistics(tmp_path):
    fid, der, _ = make_arrays(dtype=np.float64)
    root = str(tmp_path / "a")
    write_arrays(
        root,
        "numerical",
        [1.0, 2.0],
        [0.1, 0.2],
        fiducial=fid,
        derivative=der,
        validation_fiducial=fid + 100,  # not in the statistics
        validation_derivative=der,
        n_devices=2,
        records_per_shard=3,
    )
    m = read_manifest(root)
    st = m.input_statistics
    assert (m.version, st["split"], st["kinds"], st["records"]) == (
        "1.1",
        "train",
        ["fiducial"],
        16,
    )
    for t in ("none", "asinh"):
        mean, var = numpy_stats(fid, t)
        np.testing.assert_allclose(m.input_stats().mean(t), mean, rtol=1e-12)
        np.testing.assert_allclose(m.input_stats().var(t), var, rtol=1e-10)
    assert writers.validate(root).ok


def test_gradient_write_arrays_covers_main_and_remaining(tmp_path):
    fid, _, grad = make_arrays(n_s=12, n_d=4)
    root = str(tmp_path / "g")
    write_arrays(root, "gradient", [1.0, 2.0], None, fiducial=fid, gradient=grad)
    m = read_manifest(root)
    assert m.input_statistics["kinds"] == ["main", "remaining"]
    np.testing.assert_allclose(m.input_stats().mean("none"), numpy_stats(fid, "none")[0])


def test_manifest_merges_only_when_every_training_file_brought_statistics(tmp_path):
    fid = make_arrays()[0]
    m = new_manifest("fiducial", [1.0], None, 16, 0, fid.shape[1:], records_per_shard=8)
    for i, spec in enumerate(plan_shards("fiducial", 16, 0, 1, 1, 8, splits=("train",))):
        records = (encode_example(fid[s], s) for s in range(spec.first_seed, spec.last_seed + 1))
        meta = write_shard(str(tmp_path), spec, records)  # plain records: no statistics
        if i == 0:
            meta.input_stats = InputStats(fid.shape[1:]).update(fid[:8])
        m.add_file(spec, meta)
    m.gather_input_statistics()
    assert m.input_statistics is None and m.version == 1


def _reference_archive(root, fid):
    """Reference-format (imnn 0.3) fiducial files: fiducial_<n>.tfrecords."""
    os.makedirs(root)
    for c in range(0, len(fid), 5):
        with open(os.path.join(root, f"fiducial_{c // 5}.tfrecords"), "wb") as f:
            for i in range(c, min(c + 5, len(fid))):
                f.write(frame(encode_example(fid[i], i)))


def test_adopt_records_statistics_from_its_validation_pass(tmp_path):
    fid = np.random.default_rng(4).lognormal(size=(13, 3, 2)).astype(np.float32)
    root = str(tmp_path / "ref")
    _reference_archive(root, fid)
    _, report = adopt(root, "fiducial", [1.0], None, (3, 2))
    assert report.ok, str(report)
    m = read_manifest(root)
    assert m.version == "1.1" and m.input_statistics["kinds"] == ["fiducial"]
    for t in T:
        mean, var = numpy_stats(fid, t)
        np.testing.assert_allclose(m.input_stats().mean(t), mean, rtol=1e-12)
        np.testing.assert_allclose(m.input_stats().var(t), var, rtol=1e-10)


def test_validator_checks_recorded_statistics(numerical_archive):
    root, _ = numerical_archive
    assert writers.validate(root).ok

    def shift(d):
        d["input_statistics"]["transforms"]["none"]["mean"] += 1e-3  # scalar: (3, 2) inputs

    rewrite_manifest(root, shift)
    (err,) = writers.validate(root).errors
    assert "input_statistics disagree" in err.message and "none: mean" in err.message

    def reshape(d):
        d["input_statistics"]["transforms"]["none"]["mean"] = [0.0, 0.0]

    rewrite_manifest(root, reshape)
    (err,) = writers.validate(root).errors
    assert "input_statistics.transforms.none.mean: shape [2], expected []" in err.message

    def recount(d):
        d["input_statistics"].update(records=3, count=18)  # 3 inputs of 6 values
        d["input_statistics"]["transforms"]["none"]["mean"] = 0.0

    rewrite_manifest(root, recount)
    assert any("n_s = 16" in e.message for e in writers.validate(root).errors)
