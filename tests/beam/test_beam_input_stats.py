"""Issue 12 item 1: ``generate`` records the fiducial training inputs' statistics
in the manifest while the Beam job writes the shards (no second pass), equal to
those of the archive's records as read back, for a vector and a field
simulator, and a resumed job (kept shards re-checked) records the same."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import writers
from beam_jobs import run_generation
from beam_jobs.job import JOB_NAME, Job
from imnn_stream.app.archive_stats import archive_normalisation, read_normalisation
from writers.input_stats import InputStats
from writers.manifest import read_manifest
from writers.streams import close_all, device_streams, epoch_records

from .beam_helpers import SIMS

IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
CHANNELS = os.path.join(os.path.dirname(SIMS), "stats_sims.py") + ":channels"


def read_stats(root) -> InputStats:
    """The statistics of the train split's fiducial inputs, read back from the files."""
    m = read_manifest(root)
    kinds = [k for k in m.kinds("train") if k != "derivative"]
    streams = device_streams(root, "train", 1, m.n_s, manifest=m)
    out = InputStats(m.input_shape)
    try:
        for kind in kinds:
            out.update(next(streams[kind][0])["data"][: epoch_records(m, "train", kind, 1)])
    finally:
        close_all(streams)
    return out


def assert_recorded_as_read(root, kinds):
    m = read_manifest(root)
    assert m.version == "1.1" and m.input_statistics["kinds"] == kinds
    recorded, read = m.input_stats(), read_stats(root)
    assert (recorded.records, recorded.count) == (read.records, read.count) == (m.n_s, read.count)
    for t in ("none", "log1p", "asinh"):
        assert recorded.valid(t) == read.valid(t)
        if not read.valid(t):  # log1p of values ≤ −1: the fit reads, and refuses
            with pytest.raises(ValueError, match="log1p"):
                archive_normalisation(root, t)
            continue
        np.testing.assert_allclose(recorded.mean(t), read.mean(t), rtol=1e-6)
        np.testing.assert_allclose(recorded.var(t), read.var(t), rtol=1e-6)
        # the fit takes them from the manifest: the same constants as reading the archive
        a, b = archive_normalisation(root, t), read_normalisation(root, t)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-6)
    report = writers.validate(root)  # recomputes them in its pass over the records
    assert report.ok, str(report)
    return m


@pytest.fixture(scope="module")
def vector(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vector") / "archive")
    run_generation(
        root,
        "toy",
        [0.5, 2.0],
        [0.1, 0.2],
        9,
        3,
        1,
        "numerical",
        records_per_shard=4,
        batch_size=4,
        seeds={"train": 5, "validation": 6},
        beam_args=IN_PROCESS,
        progress=False,
    )
    return root


def test_vector_generation_records_statistics_as_read(vector):
    m = assert_recorded_as_read(vector, ["fiducial"])
    assert m.input_statistics["axes"] == [] and np.shape(m.input_stats().mean("none")) == (10,)
    assert m.input_statistics["transforms"]["log1p"] is None  # Gaussian draws below −1
    # validation inputs (another base seed) are not in them
    assert m.input_statistics["records"] == 9


def test_field_generation_records_per_channel_statistics_as_read(tmp_path):
    root = str(tmp_path / "field")
    run_generation(
        root,
        CHANNELS,
        [0.0, 0.5],
        None,
        7,
        3,
        1,
        "gradient",
        records_per_shard=2,
        batch_size=4,
        seeds={"train": 1},
        beam_args=IN_PROCESS,
        progress=False,
    )
    m = assert_recorded_as_read(root, ["main", "remaining"])
    assert m.input_statistics["axes"] == [0, 1] and m.input_statistics["count"] == 7 * 16
    mean = m.input_stats().mean("none")
    assert mean.shape == (2,) and 30 < mean[1] / mean[0] < 300  # per channel


def test_resumed_generation_records_the_same_statistics(vector, tmp_path):
    """Kept shards are re-read by writers.check.check_shard, which gathers their
    statistics: the resumed manifest records what the first run recorded."""
    root = str(tmp_path / "resumed")
    shutil.copytree(vector, root)
    m = read_manifest(root)
    job = Job.from_manifest(m)
    with open(os.path.join(root, JOB_NAME), "w") as f:
        json.dump(job.to_json(), f)
    os.remove(os.path.join(root, "manifest.json"))
    os.remove(os.path.join(root, m.files("train", "fiducial")[1]["path"]))  # rewritten
    result = run_generation(
        root,
        "toy",
        [0.5, 2.0],
        [0.1, 0.2],
        9,
        3,
        1,
        "numerical",
        records_per_shard=4,
        batch_size=4,
        seeds={"train": 5, "validation": 6},
        beam_args=IN_PROCESS,
        progress=False,
    )
    assert result.written == 1 and result.kept > 1
    again = read_manifest(root)
    assert not m.input_stats().differences(again.input_stats(), rtol=1e-12)
