"""The mathematics against exact answers and the reference's forms."""

import jax.numpy as jnp
import numpy as np
import pytest

from imnn_stream import fisher


def test_covariance_and_mean_match_numpy():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float64)
    np.testing.assert_allclose(
        fisher.covariance(jnp.asarray(x)), np.cov(x, rowvar=False), rtol=1e-5
    )
    np.testing.assert_allclose(fisher.mean(jnp.asarray(x)), x.mean(0), rtol=1e-5)


def test_exact_fisher_of_toy_problem():
    # optimal summaries of 10 draws from N(μ, Σ) at (0, 1): x = (Σd, Σd²); the Fisher is diag(10, 5)
    rng = np.random.default_rng(1)
    d = rng.normal(size=(200000, 10))
    x = np.stack([d.sum(1), (d**2).sum(1)], 1)
    dμ_dθ = np.array([[10.0, 0.0], [0.0, 10.0]])  # ∂(Σd)/∂μ = 10, ∂(Σd²)/∂Σ = 10
    C = np.cov(x, rowvar=False)
    F = fisher.fisher(jnp.asarray(dμ_dθ), jnp.asarray(np.linalg.inv(C)))
    assert np.linalg.det(np.asarray(F)) == pytest.approx(50.0, rel=0.02)


def test_loss_form_matches_reference_expression():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 2)).astype(np.float32)
    dx = rng.normal(size=(40, 2, 2)).astype(np.float32) + np.eye(2, dtype=np.float32)
    λ, ϵ = 10.0, 0.1
    α = fisher.alpha(λ, ϵ)
    value, s = fisher.loss(jnp.asarray(x), jnp.asarray(dx), λ, α)
    C = np.cov(x, rowvar=False)
    invC = np.linalg.inv(C)
    dμ = dx.mean(0)
    F = dμ.T @ invC @ dμ
    Λ2 = np.linalg.norm(C - np.eye(2)) + np.linalg.norm(invC - np.eye(2))
    r = λ * Λ2 / (Λ2 + np.exp(-α * Λ2))
    expected = -np.log(np.linalg.det(F)) + r * Λ2
    assert float(value) == pytest.approx(expected, rel=1e-5)
    assert α == pytest.approx(-np.log(ϵ * (λ - 1) + ϵ**2 / (1 + ϵ)) / ϵ)


@pytest.mark.parametrize(
    "lam, eps",
    [
        (10.0, 0.12),
        (10.0, 0.5),
        (1.0, 2.0),
        (0.5, 0.1),
        (-1.0, 0.1),
        (10.0, 0.0),
        (float("nan"), 0.1),
    ],
)
def test_alpha_rejects_pairs_that_switch_the_regulariser_off(lam, eps):
    with pytest.raises(ValueError) as e:
        fisher.alpha(lam, eps)
    assert "λ" in str(e.value) or "ϵ" in str(e.value)


def test_alpha_error_names_both_values():
    with pytest.raises(ValueError, match=r"λ=10.0 and ϵ=0.12"):
        fisher.alpha(10.0, 0.12)


def test_numerical_derivative_divides_by_full_step():
    # outputs linear in θ: y = a·θ at θ ∓ δθ/2 must give exactly a
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)  # (n_summaries, n_params)
    δθ = np.array([0.1, 0.2], np.float32)
    θ = np.array([0.0, 1.0], np.float32)
    y = np.stack(
        [np.stack([a @ (θ - s * np.eye(2)[p] * δθ[p] / 2) for p in range(2)]) for s in (1, -1)]
    )[None]  # (1, 2, n_params, n_summaries)
    dx = fisher.numerical_derivative(jnp.asarray(y), jnp.asarray(δθ))
    np.testing.assert_allclose(dx[0], a, rtol=1e-5)


def test_quasi_ml_estimate_is_exact_for_linear_summaries():
    θ_fid = np.array([0.5, 1.0], np.float32)
    dμ = np.array([[2.0, 0.0], [1.0, 3.0]], np.float32)
    C = np.array([[1.0, 0.2], [0.2, 2.0]], np.float32)
    invC = np.linalg.inv(C)
    F = dμ.T @ invC @ dμ
    μ = np.array([0.3, -0.1], np.float32)
    θ = np.array([0.7, 0.9], np.float32)
    x = μ + dμ @ (θ - θ_fid)
    est = fisher.quasi_ml_estimate(jnp.asarray(x), θ_fid, np.linalg.inv(F), dμ, invC, μ)
    np.testing.assert_allclose(est, θ, rtol=1e-5)
