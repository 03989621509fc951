"""Built-in example simulators written in JAX: ``simulator(key, θ) -> float32(input_shape)``.

They are pure functions of a PRNG key and the physical parameters, so the same
key at θ_fid ∓ δθ/2 gives seed-matched finite differences, and ``jax.jacfwd``
w.r.t. θ gives exact simulation gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "gaussian_toy",
    "gaussian_random_field",
    "lognormal",
    "toy_fisher",
    "grf_fisher",
    "lognormal_fisher",
    "TOY_THETA_FID",
    "TOY_EXACT_DET_F",
    "LOGNORMAL_THETA_FID",
]

# Every built-in simulator carries its exact Fisher information as an attribute,
# ``simulator.fisher(θ) -> float64(n_params, n_params)`` (``infer`` and the
# benchmarks report det F / det F_exact with it).

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


def toy_fisher(θ, n_draws: int = 10):
    """Exact Fisher of ``n_draws`` draws from N(μ, Σ): diag(n/Σ, n/(2Σ²)) (θ = (μ, Σ);
    diag(10, 5), det 50, at the fiducial (0, 1)). -> float64(2, 2)"""
    Σ = float(θ[1])
    return np.diag([n_draws / Σ, n_draws / (2 * Σ**2)])


gaussian_toy.fisher = toy_fisher


#: fiducial (μ, σ) of the log-normal problem: draws span about four decades
LOGNORMAL_THETA_FID = (1.0, 1.5)


def lognormal(key, θ, n_draws: int = 10):
    """``n_draws`` positive, heavy-tailed draws exp(μ + σ z), z ~ N(0, 1) (θ = (μ, σ)).

    At the fiducial (1, 1.5) the draws span about 0.03 to 300: raw values that an
    unnormalised network handles badly. -> float32(n_draws,)
    """
    μ, σ = θ[0], θ[1]
    return jnp.exp(μ + σ * jax.random.normal(key, (n_draws,))).astype(jnp.float32)


def lognormal_fisher(θ, n_draws: int = 10):
    """Exact Fisher of :func:`lognormal`: that of N(μ, σ²) for ln x, diag(n/σ², 2n/σ²)."""
    σ = float(θ[1])
    return np.diag([n_draws / σ**2, 2 * n_draws / σ**2])


lognormal.fisher = lognormal_fisher


def _grf_modes(size):
    """|k| of every grid mode, in units of the fundamental (k = 0 included)."""
    kx = np.fft.fftfreq(size) * size
    return np.sqrt(kx[:, None] ** 2 + kx[None, :] ** 2)


def grf_fisher(θ, size: int = 32):
    """Exact Fisher of :func:`gaussian_random_field` at θ = (A, B).

    The field is white noise convolved with a kernel whose Fourier transform is
    sqrt(P(k)), P(k) = A k^−B: a zero-mean Gaussian whose circulant covariance has
    eigenvalue P(k) on each of the size² − 1 modes k ≠ 0 (k = 0 is removed). For a
    zero-mean Gaussian F_ab = ½ tr(C⁻¹ ∂_a C C⁻¹ ∂_b C) = ½ Σ_k ∂_a ln P ∂_b ln P with
    ∂_A ln P = 1/A and ∂_B ln P = −ln k:

        F_AA = (size² − 1) / (2A²),  F_AB = −Σ ln k / (2A),  F_BB = Σ (ln k)² / 2.

    B enters only through ln k, so F does not depend on B. -> float64(2, 2)
    """
    A = float(θ[0])
    ln_k = np.log(_grf_modes(size)[_grf_modes(size) > 0])
    F_AA = len(ln_k) / (2 * A**2)
    F_AB = -ln_k.sum() / (2 * A)
    F_BB = (ln_k**2).sum() / 2
    return np.array([[F_AA, F_AB], [F_AB, F_BB]])


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
    simulator.fisher = lambda θ: grf_fisher(θ, size)
    return simulator
