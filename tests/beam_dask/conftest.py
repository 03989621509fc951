"""A Dask cluster on loopback for the DaskRunner tests: ``dask scheduler`` and
``dask worker`` processes started from this virtualenv's ``bin`` (as separate
processes, the way a real cluster runs them) and stopped afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
#: the workers' persistent XLA cache (shared with tests/beam: the same simulators)
CACHE_DIR = os.path.join(tempfile.gettempdir(), "imnn-stream-test-jax-cache")


def _dask_cli() -> list:
    exe = BIN / "dask"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dask"]


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group (the process and any children), SIGKILL after ``grace``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # children left in the group, even when the leader has exited
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


class DaskCluster:
    """One ``dask scheduler`` on 127.0.0.1 (a free port) and its ``dask worker``s."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.env = dict(os.environ)
        self.env.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.workers: list[subprocess.Popen] = []
        self._procs: list[subprocess.Popen] = []
        info = workdir / "scheduler.json"
        self.scheduler = self._spawn(
            "scheduler",
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(info),
                "--idle-timeout",
                "900",  # a safety net: a scheduler left behind goes away by itself
            ],
        )
        deadline = time.time() + 60
        while not info.exists() or not info.read_text().strip():
            if self.scheduler.poll() is not None or time.time() > deadline:
                raise RuntimeError("dask scheduler did not start:\n" + self.log("scheduler"))
            time.sleep(0.1)
        time.sleep(0.1)  # the file is written whole, but be kind to a slow disk
        #: ``host:port`` as given to ``--dask_client_address``
        self.address = json.loads(info.read_text())["address"].removeprefix("tcp://")

    def _spawn(self, name: str, args: list) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [*_dask_cli(), *args],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        log.close()
        self._procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def add_workers(self, n: int = 1, timeout: float = 120) -> list:
        """Start ``n`` more ``dask worker`` processes (no nanny: killing the
        process kills the worker) and wait until the scheduler has them all."""
        started = []
        for _ in range(n):
            i = len(self.workers)
            proc = self._spawn(
                f"worker{i}",
                [
                    "worker",
                    f"tcp://{self.address}",
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--local-directory",
                    str(self.workdir / f"worker{i}"),
                    "--death-timeout",
                    "60",  # exits by itself if the scheduler is gone
                ],
            )
            self.workers.append(proc)
            started.append(proc)
        self.wait_for_workers(timeout)
        return started

    def alive_workers(self) -> list:
        return [w for w in self.workers if w.poll() is None]

    def client(self, **kwargs):
        from distributed import Client

        return Client(f"tcp://{self.address}", timeout=60, **kwargs)

    def wait_for_workers(self, timeout: float = 120) -> None:
        n = len(self.alive_workers())
        with self.client() as client:
            deadline = time.time() + timeout
            # wait_for_workers counts up; a killed worker may linger until the
            # scheduler notices, so wait for the exact number
            while len(client.scheduler_info(n_workers=-1)["workers"]) != n:
                if time.time() > deadline:
                    logs = "\n".join(self.log(f"worker{i}") for i in range(len(self.workers)))
                    raise RuntimeError(f"dask workers did not register ({n} expected):\n{logs}")
                time.sleep(0.2)

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """SIGKILL one worker, as a crash or a pre-empted machine would."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in reversed(self._procs):  # workers first, then the scheduler
            _stop(proc)
        assert all(p.poll() is not None for p in self._procs)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A scheduler and two workers on loopback; every process is stopped afterwards."""
    pytest.importorskip(
        "distributed", reason="dask[distributed] not installed (pip install '.[dask]')"
    )
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.add_workers(2)
        yield cluster
    finally:
        cluster.close()
