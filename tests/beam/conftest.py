"""Fixtures for the beam_jobs tests: test simulators, Beam flags, a loopback
GCS emulator (the same start-up as tests/writers/conftest.py, duplicated so the
beam tests run on their own)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Persistent XLA compilation cache shared by the test processes and the Beam
# worker processes they start (inherited through the environment): each worker
# would otherwise recompile the same simulators (seconds each on 2 cores).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "imnn-stream-test-jax-cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402  (already imported by tests/conftest.py: configure it directly)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

SIMS = str(Path(__file__).with_name("beam_sims.py"))


def sim(name: str) -> str:
    """``path/beam_sims.py:name``: a test simulator the workers can import."""
    return f"{SIMS}:{name}"


def multi(workers: int = 2) -> list:
    """Beam flags: the default FnApiRunner in multi-process mode, ``workers`` processes."""
    return [f"--direct_num_workers={workers}"]


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
