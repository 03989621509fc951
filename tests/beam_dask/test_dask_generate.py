"""``imnn-stream generate --runner=DaskRunner`` against a real Dask cluster on
loopback (a ``dask scheduler`` and ``dask worker`` processes, conftest.py).

The reference is the same job on the default runner: the Dask archive must be
the same, file for file and byte for byte (shards, manifest, index, TFDS
metadata), after a worker is killed mid-run too, and a run stopped half-way
resumes on Dask as it does locally.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import writers
from beam_jobs import run_generation

pytestmark = pytest.mark.e2e  # end to end: real processes

HERE = Path(__file__).parent
# a path relative to the directory generate runs in (HERE), as a user types it:
# the workers run elsewhere (their own working directory), the driver resolves it
SIM = "dask_sims.py:slow_toy"
# 24 shards: fiducial 4 seeds per shard, derivative 1 seed (4 records) per shard
JOB = dict(
    simulator=SIM,
    theta_fid=[0.0, 1.0],
    delta_theta=[0.1, 0.2],
    n_s=16,
    n_d=8,
    n_devices=2,
    mode="numerical",
    records_per_shard=4,
    batch_size=4,
    seeds={"train": 3, "validation": 4},
)
N_SHARDS = 24


def cli_command(out, address) -> list:
    """The command line as a user types it (the console script of this venv)."""
    script = Path(sys.executable).with_name("imnn-stream")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "imnn_stream.app.cli"]
    return [
        *exe,
        "generate",
        "--simulator",
        SIM,
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
        "--no-progress",
        "--out",
        str(out),
        "--runner=DaskRunner",
        f"--dask_client_address={address}",
    ]


def every_file(root) -> dict:
    """{relative path: bytes} of every file below root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def shards(root) -> list:
    return [p for p in every_file(root) if p.endswith(".tfrecords")]


def run_cli(out, cluster, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(out, cluster.address),
        env=cluster.env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(out, cluster) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(out, cluster.address),
        env=cluster.env,
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_shards(root, n, proc, timeout=180) -> None:
    deadline = time.time() + timeout
    while len(shards(root)) < n:
        assert proc.poll() is None, f"generate ended early:\n{proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no shards appeared"
        time.sleep(0.05)


def summary(stderr: str) -> tuple:
    m = re.search(r"(\d+) shards \((\d+) written, (\d+) kept\)", stderr)
    assert m, stderr[-3000:]
    return tuple(int(g) for g in m.groups())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The job on the default runner (in one process: the bytes do not depend on it)."""
    root = tmp_path_factory.mktemp("reference") / "archive"
    beam_args = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    cwd = os.getcwd()
    os.chdir(HERE)  # the simulator's relative path, as in cli_command
    try:
        run_generation(str(root), **JOB, beam_args=beam_args, progress=False)
    finally:
        os.chdir(cwd)
    files = every_file(root)
    assert len([p for p in files if p.endswith(".tfrecords")]) == N_SHARDS
    return files


def test_dask_archive_is_byte_identical_and_uses_every_worker(dask_cluster, reference, tmp_path):
    out = tmp_path / "dask"
    proc = run_cli(out, dask_cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # no counters from the Dask runner: the driver tells from the files
    assert summary(proc.stderr) == (N_SHARDS, N_SHARDS, 0)
    report = writers.validate(str(out))
    assert report.ok, str(report)
    got = every_file(out)
    assert sorted(got) == sorted(reference)  # shards, manifest.json, index, TFDS metadata
    different = [p for p in reference if got[p] != reference[p]]
    assert not different, f"differ from the default runner's archive: {different}"
    # one partition per shard: both workers simulated (each built the job's simulator)
    with dask_cluster.client() as client:
        built = client.run(lambda: len(sys.modules["beam_jobs.pipeline"]._BATCHERS))
    assert len(built) == 2 and all(n >= 1 for n in built.values()), built


def test_killed_worker_mid_run(dask_cluster, reference, tmp_path):
    """SIGKILL one worker mid-run: Dask re-runs its tasks on the other worker
    (shards it had published are kept, the temporary file of the write it was
    in is removed before the manifest) and the run completes with the
    reference archive."""
    out = tmp_path / "killed"
    victim = dask_cluster.alive_workers()[0]
    proc = start_cli(out, dask_cluster)
    try:
        wait_for_shards(out, 6, proc)
        dask_cluster.kill_worker(victim)
        done_at_kill = len(shards(out))
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert done_at_kill < N_SHARDS, "the worker was not killed mid-run"
    report = writers.validate(str(out))
    assert report.ok, str(report)
    assert every_file(out) == reference


def test_interrupted_run_resumes_on_dask(dask_cluster, reference, tmp_path):
    """The driver and every worker SIGKILLed half-way (a crash): the same
    command on a fresh worker keeps every finished shard and writes the rest,
    giving the reference archive."""
    out = tmp_path / "resumed"
    if not dask_cluster.alive_workers():
        dask_cluster.add_workers(1)
    proc = start_cli(out, dask_cluster)
    try:
        wait_for_shards(out, 6, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver
        proc.wait()
    # a worker finishes the tasks it holds even without a client: kill them all
    for worker in dask_cluster.alive_workers():
        dask_cluster.kill_worker(worker)
    with dask_cluster.client() as client:  # the scheduler forgets the dead run's tasks
        deadline = time.time() + 60
        while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
            assert time.time() < deadline, "the scheduler kept the killed run's tasks"
            time.sleep(0.1)
    done = len(shards(out))
    assert 6 <= done < N_SHARDS, "the run was not interrupted half-way"
    assert not (out / "manifest.json").exists()
    assert not writers.validate(str(out)).ok

    dask_cluster.add_workers(1)  # a fresh worker, as after a pre-emption
    rerun = run_cli(out, dask_cluster)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert summary(rerun.stderr) == (N_SHARDS, N_SHARDS - done, done)
    report = writers.validate(str(out))
    assert report.ok, str(report)
    assert every_file(out) == reference
