"""The IMNN mathematics as pure functions (no I/O, no state).

Notation: n_s fiducial summaries x_i, n_d summary-derivatives ∂x_i/∂θ_α,
n_summaries network outputs, n_params physical parameters.
These are exactly the forms of the reference implementation (imnn 0.3.2), so
losses and Fisher matrices agree to floating-point precision.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .checks import ascii_aliases

__all__ = [
    "mean",
    "covariance",
    "derivative_of_mean",
    "fisher",
    "log_det",
    "regularisation",
    "regularisation_strength",
    "alpha",
    "loss",
    "fisher_statistics",
    "quasi_ml_estimate",
    "estimate",
    "numerical_derivative",
]


def mean(x):
    """Mean summary μ. x: float(n_s, n_summaries) -> float(n_summaries,)."""
    return jnp.mean(x, axis=0)


def covariance(x):
    """Sample covariance C with 1/(n_s − 1) normalisation.

    x: float(n_s, n_summaries) -> float(n_summaries, n_summaries)
    """
    d = x - jnp.mean(x, axis=0)
    return d.T @ d / (x.shape[0] - 1)


def derivative_of_mean(dx):
    """∂μ/∂θ. dx: float(n_d, n_summaries, n_params) -> float(n_summaries, n_params)."""
    return jnp.mean(dx, axis=0)


def fisher(dμ_dθ, invC):
    """F = (∂μ/∂θ)ᵀ C⁻¹ (∂μ/∂θ).

    dμ_dθ: float(n_summaries, n_params); invC: float(n_summaries, n_summaries)
    -> float(n_params, n_params)
    """
    return jnp.einsum("ij,ik,kl->jl", dμ_dθ, invC, dμ_dθ)


def log_det(M):
    """sign · ln|det M| (as the reference: a negative determinant gives −ln|det|)."""
    sign, logabs = jnp.linalg.slogdet(M)
    return sign * logabs


def regularisation(C, invC):
    """Λ2 = ‖C − I‖_F + ‖C⁻¹ − I‖_F (Frobenius norms). -> float()"""
    I = jnp.eye(C.shape[0], dtype=C.dtype)
    return jnp.linalg.norm(C - I) + jnp.linalg.norm(invC - I)


def regularisation_strength(Λ2, λ, α):
    """r(Λ2) = λ Λ2 / (Λ2 + exp(−α Λ2)) (the reference's code form). -> float()"""
    return λ * Λ2 / (Λ2 + jnp.exp(-α * Λ2))


@ascii_aliases
def alpha(λ: float, ϵ: float) -> float:
    """α(λ, ϵ) = −ln(ϵ(λ − 1) + ϵ²/(1 + ϵ)) / ϵ, the sharpness of r(Λ2).

    Chosen so that the strength at Λ2 = ϵ is λ(1+ϵ)/(λ(1+ϵ)+ϵ) ≈ 1: the
    regulariser fades out once the covariance is within ϵ of identity. Raises ValueError when α ≤ 0: the
    regulariser would then grow without bound or switch off (the reference
    silently accepts such pairs, e.g. λ = 10, ϵ = 0.12).
    """
    λ = float(λ)
    ϵ = float(ϵ)
    if not (math.isfinite(λ) and λ > 0):
        raise ValueError(f"λ must be a finite positive number, got λ={λ!r}")
    if not (math.isfinite(ϵ) and ϵ > 0):
        raise ValueError(f"ϵ must be a finite positive number, got ϵ={ϵ!r}")
    inner = ϵ * (λ - 1.0) + ϵ**2 / (1.0 + ϵ)
    if inner <= 0:
        raise ValueError(
            f"λ={λ!r} and ϵ={ϵ!r} give ϵ(λ−1)+ϵ²/(1+ϵ) = {inner:.4g} ≤ 0, so α is undefined; "
            "use λ > 1"
        )
    a = -math.log(inner) / ϵ
    if a <= 0:
        raise ValueError(
            f"λ={λ!r} and ϵ={ϵ!r} give α = {a:.4g} ≤ 0 (ϵ(λ−1)+ϵ²/(1+ϵ) = {inner:.4g} ≥ 1): "
            "the covariance regulariser would be switched off; choose a smaller λ or ϵ"
        )
    return a


def fisher_statistics(x, dx):
    """F, C, C⁻¹, ∂μ/∂θ and μ from summaries and summary-derivatives.

    x: float(n_s, n_summaries); dx: float(n_d, n_summaries, n_params)
    Returns (F float(n_params, n_params), C, invC float(n_summaries, n_summaries),
    dμ_dθ float(n_summaries, n_params), μ float(n_summaries,))
    """
    μ = mean(x)
    C = covariance(x)
    invC = jnp.linalg.inv(C)
    dμ_dθ = derivative_of_mean(dx)
    return fisher(dμ_dθ, invC), C, invC, dμ_dθ, μ


def loss(x, dx, λ, α):
    """IMNN loss −ln|F| + r(Λ2) Λ2 and its statistics.

    x: float(n_s, n_summaries); dx: float(n_d, n_summaries, n_params);
    λ, α: float() (traced, so changing them does not recompile).
    Returns (loss float(), dict(F, C, invC, Λ2, r, dμ_dθ, μ)).
    """
    F, C, invC, dμ_dθ, μ = fisher_statistics(x, dx)
    Λ2 = regularisation(C, invC)
    r = regularisation_strength(Λ2, λ, α)
    value = -log_det(F) + r * Λ2
    return value, dict(F=F, C=C, invC=invC, Λ2=Λ2, r=r, dμ_dθ=dμ_dθ, μ=μ)


def numerical_derivative(y, δθ):
    """Finite-difference summary-derivatives from seed-matched outputs.

    y: float(n_d, 2, n_params, n_summaries), outputs at θ_fid − δθ_α/2 (index 0)
    and θ_fid + δθ_α/2 (index 1); δθ: float(n_params,)
    -> float(n_d, n_summaries, n_params)
    """
    return jnp.swapaxes((y[:, 1] - y[:, 0]) / δθ[None, :, None], 1, 2)


def quasi_ml_estimate(x, θ_fid, invF, dμ_dθ, invC, μ):
    """θ̂ = θ_fid + F⁻¹ (∂μ/∂θ)ᵀ C⁻¹ (x − μ).

    x: float(..., n_summaries) summaries of the data -> float(..., n_params)
    """
    return θ_fid + jnp.einsum("ij,kj,kl,...l->...i", invF, dμ_dθ, invC, x - μ)


def estimate(apply, w, input_shape, θ_fid, statistics, d, chunk=4096):
    """θ̂ for one input float(*input_shape) or a batch float(n, *input_shape), the
    network applied ``chunk`` inputs at a time. statistics: invF, dμ_dθ, invC, μ."""
    d = np.asarray(d)
    k = len(input_shape)
    if d.shape == tuple(input_shape):
        x = apply(w, d)
    elif d.ndim == k + 1 and d.shape[1:] == tuple(input_shape):
        x = np.concatenate(
            [np.asarray(apply(w, d[i : i + chunk])) for i in range(0, len(d), chunk)]
            or [np.zeros((0, np.shape(statistics["μ"])[0]), np.float32)]
        )
    else:
        raise ValueError(
            f"`d` must have shape {tuple(input_shape)} (one input) or "
            f"(n, {', '.join(map(str, input_shape))}) (a batch), got {d.shape}"
        )
    return np.asarray(
        quasi_ml_estimate(
            jnp.asarray(x),
            θ_fid,
            statistics["invF"],
            statistics["dμ_dθ"],
            statistics["invC"],
            statistics["μ"],
        )
    )
