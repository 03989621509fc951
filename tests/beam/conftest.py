"""Fixtures for the beam_jobs tests: a compilation cache for the Beam workers (the
loopback GCS emulator is the session fixture of tests/conftest.py)."""

from __future__ import annotations

import os
import tempfile

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
