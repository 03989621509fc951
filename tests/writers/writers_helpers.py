"""Helpers shared by the writers tests (importable as writers_helpers)."""
from __future__ import annotations

import json
import os
import socket
import time

import numpy as np

N_S, N_D, N_PARAMS, SHAPE = 16, 8, 2, (3, 2)


def make_arrays(seed=0, dtype=np.float32, n_s=N_S, n_d=N_D, shape=SHAPE):
    """(fiducial (n_s, *shape), derivative (n_d, 2, N_PARAMS, *shape),
    gradient (n_d, *shape, N_PARAMS)) of random values."""
    rng = np.random.default_rng(seed)
    fid = rng.normal(size=(n_s,) + shape).astype(dtype)
    der = rng.normal(size=(n_d, 2, N_PARAMS) + shape).astype(dtype)
    grad = rng.normal(size=(n_d,) + shape + (N_PARAMS,)).astype(dtype)
    return fid, der, grad


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


def rewrite_manifest(root, edit):
    """Apply ``edit(dict)`` to root/manifest.json in place."""
    path = os.path.join(root, "manifest.json")
    with open(path) as f:
        d = json.load(f)
    edit(d)
    with open(path, "w") as f:
        json.dump(d, f)
