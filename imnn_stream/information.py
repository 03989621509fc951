"""How much of the information a fitted IMNN keeps, and how honest its Fisher
estimate is.

* **Fraction.** With the exact det F known (the built-in simulators carry it as
  ``simulator.fisher(θ)``; a user passes ``fit(expected_detF=…)`` /
  ``--expected-detF``), the history gets ``detF_fraction`` and ``val_detF_fraction``
  (det F / expected per iteration) and the progress bar, plot and run summary
  show the fraction.
* **Hartlap correction.** Ĉ⁻¹ of n_s samples is a biased estimate of C⁻¹:
  E[Ĉ⁻¹] = C⁻¹ (n_s − 1)/(n_s − n_summaries − 2). The corrected Fisher is
  F_H = h F with h = (n_s − n_summaries − 2)/(n_s − 1) (det F_H = h^n_params det F);
  summaries report both, and ``infer``'s error bars σ use F_H.
* **Finite differences.** In numerical mode ∂μ/∂θ is a mean of n_d seed-matched
  differences; its own noise adds to F a positive bias of about
  tr(C⁻¹ Σ_d)/n_d per parameter (Σ_d the covariance of one difference divided by
  δθ): small when the seed-matched differences are smooth (n_d ≳ 10 n_summaries
  and δθ not so small that float32 round-off of x(θ ± δθ/2) dominates), large for
  noisy or discontinuous summaries, where det F on the training set can exceed the
  exact value. The validation det F is the honest one.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "hartlap_factor",
    "update_fractions",
    "fraction_postfix",
    "information_summary",
    "diagnose",
]

#: the fraction of the expected det F below which the end-of-fit summary warns
LOW_FRACTION = 0.8
#: Λ2 above which C is judged far from the identity at the end of a fit
HIGH_LAMBDA2 = 1.0


def hartlap_factor(n_s: int, n_summaries: int) -> float:
    """h = (n_s − n_summaries − 2)/(n_s − 1): E[h Ĉ⁻¹] = C⁻¹ for Gaussian summaries."""
    return (n_s - n_summaries - 2) / (n_s - 1)


def update_fractions(history: dict, expected_detF) -> None:
    """Set ``detF_fraction`` / ``val_detF_fraction`` (det F / expected per iteration)
    in ``history``; without an expected value, drop stale ones."""
    for k in ("detF", "val_detF"):
        if expected_detF is not None and k in history:
            history[k + "_fraction"] = np.asarray(history[k], np.float32) / np.float32(
                expected_detF
            )
        elif k + "_fraction" in history and len(history[k + "_fraction"]) != len(history[k]):
            del history[k + "_fraction"]


def fraction_postfix(post: dict, detF, val_detF, expected_detF) -> dict:
    """Add the fraction of the monitored det F to a progress-bar postfix."""
    if expected_detF is not None:
        value = val_detF if val_detF is not None else detF
        post["frac"] = f"{value / expected_detF:.2f}"
    return post


def information_summary(imnn, expected_detF=None) -> dict:
    """The information entries of a run summary: det F of the statistics (validation
    when there is one), its Hartlap-corrected value, best validation det F and, with
    an expected value, both as fractions; ``warnings`` from :func:`diagnose`."""
    h = imnn.history
    detF = float(np.linalg.det(imnn.F))
    factor = float(getattr(imnn, "hartlap", 1.0))
    out = dict(
        detF_hartlap=detF * factor**imnn.n_params,
        hartlap_factor=factor,
        final_Λ2=float(h["val_Λ2" if imnn.validate else "Λ2"][-1]) if len(h["Λ2"]) else None,
    )
    best = float(h["max_detF"][-1]) if len(h["max_detF"]) else None
    if expected_detF is not None:
        out.update(
            expected_detF=float(expected_detF),
            detF_fraction=detF / expected_detF,
            detF_hartlap_fraction=out["detF_hartlap"] / expected_detF,
            best_detF_fraction=None if best is None else best / expected_detF,
        )
    out["warnings"] = diagnose(out.get("detF_fraction"), out["final_Λ2"])
    return out


def diagnose(fraction, Λ2) -> list:
    """Plain-language warnings for a fit that kept little information or whose C is
    far from the identity, with the likely causes."""
    warnings = []
    if fraction is not None and fraction < LOW_FRACTION:
        warnings.append(
            f"det F is {fraction:.0%} of the expected value: likely causes are inputs on a "
            "wide or shifted scale (keep input normalisation on; for positive heavy-tailed "
            "data use a log1p or asinh transform), too few iterations or too little "
            "patience, a learning rate too high (det F jumps) or too low (det F creeps), "
            "a network too small for the data, or too few simulations (n_s, n_d) so that "
            "the fit overfits the training set (training det F well above validation)"
        )
    if Λ2 is not None and Λ2 > HIGH_LAMBDA2:
        warnings.append(
            f"Λ2 = {Λ2:.3g} at the end: the summaries' covariance C is far from the "
            "identity, so the regulariser has not settled; likely causes are λ too small, "
            "ϵ too large, too few iterations, or summaries whose scale still drifts "
            "(a learning rate too high)"
        )
    return warnings
