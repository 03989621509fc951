"""The built-in simulators' exact Fisher matrices against a numerical estimate: the
IMNN Fisher formula applied to their sufficient statistics (linear in the score, so
they keep all the information), with seed-matched finite-difference derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beam_jobs.simulators import (
    LOGNORMAL_THETA_FID,
    TOY_THETA_FID,
    gaussian_random_field,
    gaussian_toy,
    lognormal,
)
from imnn_stream import fisher


def _numerical_fisher(simulator, statistic, θ, δθ, n_s=4000, n_d=2000, seed=0):
    θ, δθ = jnp.asarray(θ, jnp.float32), jnp.asarray(δθ, jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_s)
    x = jax.vmap(lambda k: statistic(simulator(k, θ)))(keys)

    def derivative(k):  # seed-matched central differences, one column per parameter
        cols = []
        for a in range(len(θ)):
            step = jnp.zeros_like(θ).at[a].set(δθ[a] / 2)
            cols.append(
                (statistic(simulator(k, θ + step)) - statistic(simulator(k, θ - step))) / δθ[a]
            )
        return jnp.stack(cols, -1)

    dx = jax.vmap(derivative)(keys[:n_d])
    F, *_ = fisher.fisher_statistics(x, dx)
    return np.asarray(F, float)


def _close(F, exact, rtol):
    # compare det and diagonal (the off-diagonal of the toy is 0 up to noise)
    assert np.linalg.det(F) == pytest.approx(np.linalg.det(exact), rel=2 * rtol)
    np.testing.assert_allclose(np.diag(F), np.diag(exact), rtol=rtol)


def test_toy_exact_fisher():
    for θ in (TOY_THETA_FID, (0.5, 2.0)):
        F = _numerical_fisher(
            gaussian_toy, lambda d: jnp.stack([d.sum(), (d**2).sum()]), θ, (0.1, 0.1)
        )
        _close(F, gaussian_toy.fisher(θ), 0.08)
    np.testing.assert_allclose(gaussian_toy.fisher(TOY_THETA_FID), np.diag([10.0, 5.0]))


def test_lognormal_exact_fisher():
    def stat(d):
        y = jnp.log(d)
        return jnp.stack([y.sum(), (y**2).sum()])

    F = _numerical_fisher(lognormal, stat, LOGNORMAL_THETA_FID, (0.1, 0.1))
    _close(F, lognormal.fisher(LOGNORMAL_THETA_FID), 0.08)


def test_grf_exact_fisher():
    size, θ = 16, (1.0, 2.0)
    sim = gaussian_random_field(size)
    kx = jnp.fft.fftfreq(size) * size
    k = jnp.sqrt(kx[:, None] ** 2 + kx[None, :] ** 2)
    w = jnp.where(k > 0, k ** θ[1], 0.0)  # |f̃|²/P weighting of the score at θ
    ln_k = jnp.log(jnp.where(k > 0, k, 1.0))

    def stat(d):
        p = jnp.abs(jnp.fft.fft2(d)) ** 2 * w
        return jnp.stack([p.sum(), (ln_k * p).sum()])

    F = _numerical_fisher(sim, stat, θ, (0.05, 0.05))
    exact = sim.fisher(θ)
    _close(F, exact, 0.08)
    np.testing.assert_allclose(F[0, 1], exact[0, 1], rtol=0.1)
