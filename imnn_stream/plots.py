"""History plot: det F, det C / det C⁻¹, Λ2 / r against iteration."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_history"]


def plot_history(
    history,
    validate,
    ax=None,
    expected_detF=None,
    colour="C0",
    figsize=(5, 12),
    label="",
    filename=None,
    ncol=2,
):
    import matplotlib

    if ax is None and filename is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(3, 1, sharex=True, figsize=figsize)
        plt.subplots_adjust(hspace=0.05)
    else:
        fig = ax[0].figure
    it = np.arange(len(history["detF"]))
    prefixes = [("", "-", "training")] + ([("val_", "--", "validation")] if validate else [])
    for prefix, ls, name in prefixes:
        ax[0].plot(it, history[prefix + "detF"], ls, color=colour, label=f"{label} {name}".strip())
        ax[1].plot(it, history[prefix + "detC"], ls, color=colour, label=f"det C ({name})")
        ax[1].plot(
            it, history[prefix + "detinvC"], ls, color=colour, alpha=0.5, label=f"det C⁻¹ ({name})"
        )
        ax[2].plot(it, history[prefix + "Λ2"], ls, color=colour, label=f"Λ2 ({name})")
        ax[2].plot(it, history[prefix + "r"], ls, color=colour, alpha=0.5, label=f"r ({name})")
    if expected_detF is not None:
        m = np.asarray(history["max_detF"], float)
        best = m[np.isfinite(m)].max() if np.isfinite(m).any() else np.nan
        ax[0].axhline(
            expected_detF,
            color="k",
            ls=":",
            label=f"expected det F = {expected_detF:g} (best {best / expected_detF:.0%})",
        )
    ax[0].set_ylabel(r"$|\mathbf{F}|$")
    ax[1].set_ylabel(r"$|\mathbf{C}|$, $|\mathbf{C}^{-1}|$")
    ax[1].axhline(1, color="k", ls=":")
    ax[1].set_yscale("log")
    ax[2].set_ylabel(r"$\Lambda_2$, $r$")
    ax[2].set_yscale("log")
    ax[2].set_xlabel("iteration")
    for a in ax:
        a.legend(frameon=False, ncol=ncol, fontsize="small")
    if filename is not None:
        fig.savefig(filename, bbox_inches="tight")
    return ax
