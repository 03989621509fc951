"""Real Beam pipelines (FnApiRunner, multi-process) writing real archives.

One numerical archive (2 workers) is the reference: the same job with 1 worker
and the resumed, interrupted job must reproduce its shard files byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import writers
from beam_jobs import JobError, cli, generate, run_generation
from beam_jobs.job import JOB_NAME
from beam_jobs.simulators import gaussian_random_field, gaussian_toy
from writers.manifest import read_manifest
from writers.schema import decode_example
from writers.framing import iter_records

from .beam_helpers import multi, sim

pytestmark = pytest.mark.e2e  # end to end: real processes, minutes

THETA, DELTA = [0.0, 1.0], [0.1, 0.2]
# 24 shards: fiducial 4 seeds per shard, derivative 1 seed (4 records) per shard
NUMERICAL = dict(
    simulator=sim("slow_toy"),
    theta_fid=THETA,
    delta_theta=DELTA,
    n_s=16,
    n_d=8,
    n_devices=2,
    mode="numerical",
    records_per_shard=4,
    batch_size=4,
    seeds={"train": 3, "validation": 4},
)


def cli_args(out):
    return [
        "generate",
        "--simulator",
        sim("slow_toy"),
        "--theta-fid",
        "0,1",
        "--delta-theta",
        "0.1,0.2",
        "--n-s",
        "16",
        "--n-d",
        "8",
        "--n-devices",
        "2",
        "--mode",
        "numerical",
        "--records-per-shard",
        "4",
        "--batch-size",
        "4",
        "--seed",
        "3",
        "--validation-seed",
        "4",
        "--out",
        str(out),
    ]


def records(root, split, kind):
    """Every record of a kind in manifest order (devices concatenated)."""
    m = read_manifest(root)
    spec = m.record_spec(split, kind)
    out = []
    for f in m.files(split, kind):
        with open(os.path.join(root, f["path"]), "rb") as fh:
            out += [decode_example(raw, spec) for raw in iter_records(fh, f["path"])]
    return out


def shard_bytes(root):
    """{relative path: bytes} of every shard file."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".tfrecords"):
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def all_mtimes(root):
    """{path: mtime_ns} of every file and directory below root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            out[path] = os.stat(path).st_mtime_ns
    return out


def key(base, i):
    return jax.random.fold_in(jax.random.PRNGKey(base), i)


@pytest.fixture(scope="module")
def numerical(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("numerical") / "archive")
    result = run_generation(root, **NUMERICAL, beam_args=multi(2), progress=False)
    return root, result


def test_numerical_archive_validates_and_is_seed_matched(numerical):
    root, result = numerical
    assert result.written == result.n_shards == 24 and result.kept == 0
    report = writers.validate(root)
    assert report.ok, str(report)
    assert not os.path.exists(os.path.join(root, JOB_NAME))  # committed: manifest only
    m = read_manifest(root)
    assert (m.mode, m.n_s, m.n_d, m.input_shape) == ("numerical", 16, 8, [10])
    assert m.base_seeds == {"train": 3, "validation": 4}
    θ = jnp.asarray(THETA)
    for split, base in (("train", 3), ("validation", 4)):
        fid = records(root, split, "fiducial")
        assert [r["seed"] for r in fid] == list(range(16))
        for i in (0, 7, 15):  # recomputed directly with the simulator
            np.testing.assert_array_equal(fid[i]["data"], gaussian_toy(key(base, i), θ))
        der = records(root, split, "derivative")
        # order seed → sign → parameter, at θ_fid ∓ δθ_α/2 with the fiducial key
        assert [(r["seed"], r["derivative"], r["parameter"]) for r in der] == [
            (s, sign, a) for s in range(8) for sign in range(2) for a in range(2)
        ]
        for r in der[::3]:
            step = np.zeros(2, np.float32)
            step[r["parameter"]] = DELTA[r["parameter"]] / 2
            t = np.asarray(THETA, np.float32) + (step if r["derivative"] else -step)
            np.testing.assert_array_equal(
                r["data"], gaussian_toy(key(base, r["seed"]), jnp.asarray(t))
            )
    # same seeds, different splits: different simulations
    assert not np.array_equal(
        records(root, "train", "fiducial")[0]["data"],
        records(root, "validation", "fiducial")[0]["data"],
    )


def test_one_worker_gives_byte_identical_shards(numerical, tmp_path):
    root, _ = numerical
    other = str(tmp_path / "one-worker")
    generate(other, **NUMERICAL, beam_args=multi(1), progress=False)
    a, b = shard_bytes(root), shard_bytes(other)
    assert len(a) == 24 and a == b

    def files(r):
        return {f["path"]: f["sha256"] for f in read_manifest(r).all_files()}

    assert files(root) == files(other)


def test_different_parameters_are_refused(numerical):
    root, _ = numerical
    before = shard_bytes(root)
    manifest = open(os.path.join(root, "manifest.json")).read()
    with pytest.raises(JobError, match="theta_fid"):
        generate(root, **{**NUMERICAL, "theta_fid": [0.5, 1.0]}, progress=False)
    with pytest.raises(JobError, match="n_s"):
        generate(root, **{**NUMERICAL, "n_s": 32}, progress=False)
    assert shard_bytes(root) == before
    assert open(os.path.join(root, "manifest.json")).read() == manifest


def test_interrupted_run_resumes_to_identical_archive(numerical, tmp_path, capsys):
    reference, _ = numerical
    root = tmp_path / "resumed"
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "beam_jobs.cli", *cli_args(root), "--no-progress", *multi(2)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(shard_bytes(root)) >= 4:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # driver and its Beam worker processes
        proc.wait()
    done = shard_bytes(root)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 4 <= len(done) < 24, "the run was not interrupted half-way"
    assert not (root / "manifest.json").exists()  # recognisably unfinished
    assert (root / JOB_NAME).exists()
    assert not writers.validate(str(root)).ok
    # a different job is refused on the partial archive too
    with pytest.raises(JobError, match="delta_theta"):
        generate(str(root), **{**NUMERICAL, "delta_theta": [0.2, 0.2]}, progress=False)
    # damage one finished shard: it must be rewritten, the others kept
    damaged = sorted(done)[0]
    with open(root / damaged, "r+b") as f:
        f.truncate(len(done[damaged]) - 5)

    result = run_generation(str(root), **NUMERICAL, beam_args=multi(2), progress=False)
    assert (result.written, result.kept) == (24 - len(done) + 1, len(done) - 1)
    report = writers.validate(str(root))
    assert report.ok, str(report)
    assert shard_bytes(root) == shard_bytes(reference)

    # a second re-run (same command line) writes nothing and says so
    mtimes = all_mtimes(root)
    capsys.readouterr()
    assert cli.main([*cli_args(root), "--no-progress"]) == 0
    assert (
        "archive already complete and valid (24 shards); nothing written" in capsys.readouterr().err
    )
    assert mtimes == all_mtimes(root)
    assert shard_bytes(root) == shard_bytes(reference)


def test_gradient_archive(tmp_path):
    root = str(tmp_path / "gradient")
    n_s, n_d = 8, 4
    generate(
        root,
        "grf",
        [1.0, 2.0],
        None,
        n_s,
        n_d,
        2,
        "gradient",
        records_per_shard=2,
        simulator_config={"size": 8},
        batch_size=4,
        beam_args=multi(2),
        seeds={"train": 0},
        progress=False,
    )
    report = writers.validate(root)
    assert report.ok, str(report)
    m = read_manifest(root)
    assert m.input_shape == [8, 8] and list(m.layout) == ["train"]
    main, rest = records(root, "train", "main"), records(root, "train", "remaining")
    assert [r["seed"] for r in main] == list(range(n_d))
    assert [r["seed"] for r in rest] == list(range(n_d, n_s))
    simulator, θ = gaussian_random_field(8), jnp.array([1.0, 2.0])
    for r in (main[0], main[3]):
        assert r["gradient"].shape == (8, 8, 2)
        np.testing.assert_allclose(r["data"], simulator(key(0, r["seed"]), θ), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            r["gradient"],
            jax.jacfwd(simulator, argnums=1)(key(0, r["seed"]), θ),
            rtol=1e-5,
            atol=1e-6,
        )
    np.testing.assert_allclose(
        rest[-1]["data"], simulator(key(0, n_s - 1), θ), rtol=1e-5, atol=1e-6
    )


@pytest.fixture(scope="module")
def fiducial_only(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fiducial") / "target")
    generate(
        root,
        "toy",
        THETA,
        None,
        6,
        0,
        3,
        "fiducial",
        records_per_shard=1,
        seeds={"train": 42},
        batch_size=8,
        beam_args=multi(2),
        progress=False,
    )
    return root


def test_fiducial_only_archive(fiducial_only):
    report = writers.validate(fiducial_only)
    assert report.ok, str(report)
    m = read_manifest(fiducial_only)
    assert m.mode == "fiducial" and list(m.layout) == ["train"] and m.base_seeds == {"train": 42}
    recs = records(fiducial_only, "train", "fiducial")
    assert [r["seed"] for r in recs] == list(range(6))
    np.testing.assert_array_equal(recs[5]["data"], gaussian_toy(key(42, 5), jnp.asarray(THETA)))


def test_gcs_output_matches_local(fiducial_only, gcs_server, monkeypatch):
    """gs:// through Beam's GCS file system against a local emulator; the workers
    (here in-process, passed through as a Beam flag) write the same bytes."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    url = "gs://imnn-test/target"
    flags = ["--no_auth", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    generate(
        url,
        "toy",
        THETA,
        None,
        6,
        0,
        3,
        "fiducial",
        records_per_shard=1,
        seeds={"train": 42},
        batch_size=8,
        beam_args=flags,
        progress=False,
    )
    from writers import fs

    fs.configure(["--no_auth"])
    try:
        report = writers.validate(url)
        assert report.ok, str(report)
        local = shard_bytes(fiducial_only)
        assert len(local) == 6
        for rel, data in local.items():
            assert fs.read_bytes(fs.join(url, rel)) == data
        # and a re-run finds it complete
        again = run_generation(
            url,
            "toy",
            THETA,
            None,
            6,
            0,
            3,
            "fiducial",
            records_per_shard=1,
            seeds={"train": 42},
            beam_args=flags,
            progress=False,
        )
        assert again.nothing_to_do
    finally:
        fs.configure([])
