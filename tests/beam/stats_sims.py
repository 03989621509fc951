"""Simulators for the input-statistics tests, loaded by file path in the Beam
workers (``/abs/path/stats_sims.py:name``)."""

import jax
import jax.numpy as jnp


def channels(key, θ):
    """A positive rank-3 field float32(4, 4, 2) whose two channels differ in
    scale by decades (per-channel statistics, log1p), differentiable in θ."""
    z = jax.random.normal(key, (4, 4, 2))
    return (jnp.exp(θ[0] + θ[1] * z) * jnp.array([1.0, 100.0])).astype(jnp.float32)
