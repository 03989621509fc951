"""Loss and the per-iteration statistics recorded in the fitting history."""

from __future__ import annotations

import jax.numpy as jnp

from . import fisher

__all__ = ["loss_and_stats", "HISTORY_KEYS"]

#: statistics recorded per iteration (validation twins get a ``val_`` prefix)
HISTORY_KEYS = ("detF", "detC", "detinvC", "Λ2", "r")


def loss_and_stats(x, dx, λ, α):
    """(loss float(), stats dict of float()) for summaries x float(n_s, n_summaries)
    and derivatives dx float(n_d, n_summaries, n_params).

    stats: detF, detC, detinvC, Λ2, r, logdetF (sign·ln|det F|, what early stopping
    compares) and finite (all of x, dx and the loss finite).
    """
    value, s = fisher.loss(x, dx, λ, α)
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(dx)) & jnp.isfinite(value)
    stats = dict(
        detF=jnp.linalg.det(s["F"]),
        detC=jnp.linalg.det(s["C"]),
        detinvC=jnp.linalg.det(s["invC"]),
        Λ2=s["Λ2"],
        r=s["r"],
        logdetF=fisher.log_det(s["F"]),
        finite=finite,
        loss=value,
    )
    return value, stats
