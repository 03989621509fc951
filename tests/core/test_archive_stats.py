"""The fit's input normalisation comes from the manifest's ``input_statistics``
(issue 12 item 1) without reading the archive, and from reading the fiducial
training split where the manifest has none (archives before version 1.1) or
where they are invalid for the transform."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from beam_jobs.simulators import LOGNORMAL_THETA_FID, lognormal
from imnn_stream import normalise
from imnn_stream.app import archive_stats
from imnn_stream.app.fitting import FitConfig, fit_archive
from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, toy_data

Θ = np.asarray(LOGNORMAL_THETA_FID, np.float32)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    (f, d, _), (vf, vd, _) = (toy_data(s, 60, 60, lognormal, Θ, DELTA_THETA) for s in (0, 1))
    root = str(tmp_path_factory.mktemp("stats") / "archive")
    write_arrays(
        root,
        "numerical",
        Θ,
        DELTA_THETA,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
        records_per_shard=25,
    )
    return root, np.asarray(f)


def _old_manifest(root, tmp_path):
    """A copy of ``root`` whose manifest predates input_statistics (version 1)."""
    import shutil

    old = str(tmp_path / "old")
    shutil.copytree(root, old)
    path = os.path.join(old, "manifest.json")
    with open(path) as fh:
        d = json.load(fh)
    d.pop("input_statistics")
    d["version"] = 1
    with open(path, "w") as fh:
        json.dump(d, fh)
    return old


def _no_reading(*args, **kwargs):
    raise AssertionError("read the archive although the manifest has its statistics")


@pytest.mark.parametrize("transform", ["none", "log1p", "asinh"])
def test_statistics_come_from_the_manifest_without_reading(archive, transform, monkeypatch):
    root, fid = archive
    monkeypatch.setattr(archive_stats, "read_normalisation", _no_reading)
    got = archive_stats.archive_normalisation(root, transform)
    want = normalise.from_arrays(fid, transform)
    assert got.transform == transform
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(got.std, want.std, rtol=1e-6)


def test_old_manifest_falls_back_to_reading_and_agrees(archive, tmp_path):
    root, _ = archive
    old = _old_manifest(root, tmp_path)
    for t in ("none", "log1p"):
        a, b = (
            archive_stats.archive_normalisation(root, t),
            archive_stats.archive_normalisation(old, t),
        )
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-6)


def test_invalid_statistics_fall_back_to_reading(tmp_path, monkeypatch):
    fid = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32) - 2  # log1p undefined
    root = str(tmp_path / "a")
    write_arrays(root, "numerical", [0.0], [0.1], fiducial=fid, derivative=np.zeros((2, 2, 1, 3)))
    calls = []
    real = archive_stats.read_normalisation

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(archive_stats, "read_normalisation", spy)
    with pytest.raises(ValueError, match="log1p"):
        archive_stats.archive_normalisation(root, "log1p")
    assert len(calls) == 1  # read, as before manifests recorded statistics
    archive_stats.archive_normalisation(root, "asinh")
    assert len(calls) == 1


CONFIG = FitConfig(
    model="mlp:8",
    devices=1,
    n_per_device=30,
    max_iterations=2,
    min_iterations=0,
    input_transform="log1p",
)


def test_fit_uses_the_manifest_statistics(archive, tmp_path, monkeypatch):
    root, fid = archive
    monkeypatch.setattr(archive_stats, "read_normalisation", _no_reading)
    imnn, _ = fit_archive(root, CONFIG, str(tmp_path / "run"), progress=False)
    want = normalise.from_arrays(fid, "log1p")
    np.testing.assert_allclose(imnn.normalisation.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(imnn.normalisation.std, want.std, rtol=1e-6)


def test_old_archive_still_fits(archive, tmp_path):
    root, fid = archive
    imnn, _ = fit_archive(
        _old_manifest(root, tmp_path), CONFIG, str(tmp_path / "run"), progress=False
    )
    want = normalise.from_arrays(fid, "log1p")
    np.testing.assert_allclose(imnn.normalisation.mean, want.mean, rtol=1e-6)
    np.testing.assert_allclose(imnn.normalisation.std, want.std, rtol=1e-6)
