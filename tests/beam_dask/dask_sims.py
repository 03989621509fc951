"""Simulators for the Dask runner tests, loaded by file path
(``/abs/path/dask_sims.py:name``) in the ``dask worker`` processes."""

import time

import jax
import numpy as np

from beam_jobs.simulators import gaussian_toy

#: seconds each vmapped call sleeps, so that a run can be interrupted half-way
SLEEP = 0.3


def _sleep_identity(x):
    time.sleep(SLEEP)
    return np.asarray(x)


def slow_toy(key, θ):
    """The 10-draw Gaussian toy, float32(10,), sleeping SLEEP s per vmapped call."""
    x = gaussian_toy(key, θ)
    return jax.pure_callback(
        _sleep_identity, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="broadcast_all"
    )
