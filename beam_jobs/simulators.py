"""Built-in example simulators written in JAX: ``simulator(key, θ) -> float32(input_shape)``.

They are pure functions of a PRNG key and the physical parameters, so the same
key at θ_fid ∓ δθ/2 gives seed-matched finite differences, and ``jax.jacfwd``
w.r.t. θ gives exact simulation gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["gaussian_toy", "gaussian_random_field", "TOY_THETA_FID", "TOY_EXACT_DET_F"]

#: fiducial (μ, Σ) of the toy problem and det F of 10 draws there: diag(10, 5)
TOY_THETA_FID = (0.0, 1.0)
TOY_EXACT_DET_F = 50.0


def gaussian_toy(key, θ, n_draws: int = 10):
    """10 independent draws from N(μ, Σ).

    Parameters
    ----------
    key : PRNG key
    θ : float(2,)
        (μ, Σ): mean and variance (not standard deviation).

    Returns
    -------
    float32(n_draws,)
    """
    μ, Σ = θ[0], θ[1]
    return (μ + jnp.sqrt(Σ) * jax.random.normal(key, (n_draws,))).astype(jnp.float32)


def gaussian_random_field(size: int = 32):
    """Factory: a 2-D Gaussian random field with power spectrum P(k) = A k^−B.

    The field is white noise coloured in Fourier space by sqrt(P(k)), with k in
    units of the fundamental mode (k = 1 for the longest wave on the grid); the
    k = 0 mode is set to zero so the field has zero mean.

    Returns
    -------
    simulator(key, θ) -> float32(size, size), θ = (A, B): amplitude, slope.
    """
    kx = jnp.fft.fftfreq(size) * size
    k = jnp.sqrt(kx[:, None] ** 2 + kx[None, :] ** 2)
    k_safe = jnp.where(k > 0, k, 1.0)

    def simulator(key, θ):
        A, B = θ[0], θ[1]
        amplitude = jnp.where(k > 0, jnp.sqrt(A * k_safe ** (-B)), 0.0)
        noise = jax.random.normal(key, (size, size))
        field = jnp.fft.ifft2(jnp.fft.fft2(noise) * amplitude).real
        return field.astype(jnp.float32)

    simulator.__name__ = f"gaussian_random_field_{size}"
    return simulator
