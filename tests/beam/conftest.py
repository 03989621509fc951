"""Fixtures for the beam_jobs tests: a compilation cache for the Beam workers and a
loopback GCS emulator (the same start-up as tests/writers/conftest.py, duplicated
so the beam tests run on their own). Helpers are in beam_helpers.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

CACHE_DIR = os.path.join(tempfile.gettempdir(), "imnn-stream-test-jax-cache")


@pytest.fixture(scope="module", autouse=True)
def worker_compilation_cache():
    """A persistent XLA compilation cache for the Beam worker processes these
    tests start (they inherit the environment): each worker would otherwise
    recompile the same simulators, seconds each on 2 cores. Set per module and
    removed afterwards, so no other package's tests see it."""
    mp = pytest.MonkeyPatch()
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)
    mp.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    yield
    mp.undo()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc, timeout=30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start within {timeout}s")


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A gcp-storage-emulator on 127.0.0.1:<free port> with bucket imnn-test;
    yields its host URL (for STORAGE_EMULATOR_HOST)."""
    pytest.importorskip("gcp_storage_emulator",
                        reason="gcp-storage-emulator not installed (pip install '.[test]')")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from gcp_storage_emulator.__main__ import main; main()",
         "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
         "--default-bucket", "imnn-test"],
        stdout=open(tmp_path_factory.mktemp("server") / "log.txt", "wb"),
        stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
