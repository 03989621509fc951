"""Helpers shared by the writers tests (importable as writers_helpers)."""

from __future__ import annotations

import json
import os

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


def rewrite_manifest(root, edit):
    """Apply ``edit(dict)`` to root/manifest.json in place."""
    path = os.path.join(root, "manifest.json")
    with open(path) as f:
        d = json.load(f)
    edit(d)
    with open(path, "w") as f:
        json.dump(d, f)
