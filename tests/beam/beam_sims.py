"""Simulators for the beam_jobs tests, loaded by file path
(``/abs/path/beam_sims.py:name``) in the Beam worker processes."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from beam_jobs.simulators import gaussian_toy

#: seconds each vmapped call sleeps, so that a run can be interrupted half-way
SLEEP = 0.15


def _sleep_identity(x):
    time.sleep(SLEEP)
    return np.asarray(x)


def slow_toy(key, θ):
    """The 10-draw Gaussian toy, float32(10,), sleeping SLEEP s per vmapped call
    (a host callback that returns its input unchanged)."""
    x = gaussian_toy(key, θ)
    return jax.pure_callback(
        _sleep_identity, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="broadcast_all"
    )


def _fail_at_runtime(x):
    raise RuntimeError("detector offline")


def failing_toy(key, θ):
    """Traces fine (so it passes the driver's shape check) but raises on a worker."""
    x = gaussian_toy(key, θ)
    return jax.pure_callback(
        _fail_at_runtime, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="broadcast_all"
    )


def two_outputs(key, θ):
    """Wrong: returns a tuple instead of one array."""
    x = gaussian_toy(key, θ)
    return x, x


def integer_toy(key, θ):
    """Wrong: returns integers."""
    return jnp.round(gaussian_toy(key, θ)).astype(jnp.int32)
