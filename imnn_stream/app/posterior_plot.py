"""The posterior of ``infer`` as a corner plot: the Gaussian approximation
N(θ̂, (n·F)⁻¹) as 1σ and 2σ contours and marginal curves, the rejection-ABC
samples as points and histograms, and the path of the fiducial points over the
rounds (θ_fid of each round → the final θ̂)."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["axis_limits", "plot_posterior"]

_LEVELS = (2.30, 6.18)  # Δχ² of the 68 % and 95 % regions of a 2-D Gaussian


def _ellipse(mean, cov, delta_chi2, n=200):
    vals, vecs = np.linalg.eigh(cov)
    t = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(t), np.sin(t)])
    return (vecs @ (np.sqrt(np.maximum(vals, 0) * delta_chi2)[:, None] * circle)).T + mean


def axis_limits(θ_hat, σ, abc=None, path=None, truth=None, box=None):
    """(low, high) float(p,) of each parameter's axis: θ̂ ± 4σ, widened to show the
    ABC samples float(k, p), the fiducial path float(r, p) and the truth float(p,);
    then cut at the prior box (low, high) where it is narrower, since the posterior
    has no mass outside it — but never so far as to hide θ̂, the path or the truth."""
    lo, hi = θ_hat - 4 * σ, θ_hat + 4 * σ
    for extra in (abc, path, None if truth is None else truth[None]):
        if extra is not None:
            lo = np.minimum(lo, extra.min(0) - 0.5 * σ)
            hi = np.maximum(hi, extra.max(0) + 0.5 * σ)
    if box is not None:
        shown = np.concatenate(
            [θ_hat[None]]
            + [e for e in (path, None if truth is None else truth[None]) if e is not None]
        )
        lo = np.maximum(lo, np.minimum(box[0], shown.min(0)))
        hi = np.minimum(hi, np.maximum(box[1], shown.max(0)))
    return lo, hi


def plot_posterior(
    θ_hat, F, rows=(), filename="posterior.png", abc=None, truth=None, names=None, prior=None
):
    """Draw the corner plot into ``filename`` (PNG, written atomically).

    θ_hat float(p,); F float(p, p): the Fisher matrix of the target (n·F for n
    realisations), whose inverse is the Gaussian's covariance; rows: the
    inference loop's rounds (their ``θ_fid`` and ``θ_hat`` make the path);
    abc float(k, p): accepted ABC samples; truth float(p,): drawn when known;
    names: axis labels (default θ₀, θ₁, …); prior: (low float(p,), high float(p,)),
    the prior box: the axes stop at its edges (drawn grey), where the Gaussian
    reaches past them, unless θ̂, the path or the truth lie outside.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from writers.durable import write_atomic

    θ_hat = np.asarray(θ_hat, float)
    p = len(θ_hat)
    cov = np.linalg.inv(np.asarray(F, float))
    σ = np.sqrt(np.diag(cov))
    names = list(names or [f"θ{chr(0x2080 + a)}" for a in range(p)])
    abc = None if abc is None or len(abc) == 0 else np.asarray(abc, float)
    path = None
    if len(rows):
        path = np.array([r["θ_fid"] for r in rows] + [rows[-1]["θ_hat"]], float)
    truth = None if truth is None else np.asarray(truth, float)
    box = None if prior is None else [np.broadcast_to(np.asarray(b, float), (p,)) for b in prior]
    lo, hi = axis_limits(θ_hat, σ, abc, path, truth, box)

    fig, axes = plt.subplots(p, p, figsize=(2.6 * p + 0.6, 2.6 * p + 0.6), squeeze=False)
    for i in range(p):
        for j in range(p):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                x = np.linspace(lo[i], hi[i], 300)
                g = np.exp(-0.5 * ((x - θ_hat[i]) / σ[i]) ** 2) / (σ[i] * np.sqrt(2 * np.pi))
                if abc is not None:
                    ax.hist(abc[:, i], bins=30, density=True, color="C1", alpha=0.5, label="ABC")
                ax.plot(x, g, color="C0", label="Gaussian (Fisher)")
                if truth is not None:
                    ax.axvline(truth[i], color="k", ls=":", lw=1)
                if box is not None:
                    for edge in (box[0][i], box[1][i]):
                        ax.axvline(edge, color="0.6", lw=0.8, ls="-.")
                ax.set_yticks([])
                ax.set_xlim(lo[i], hi[i])
            else:
                if abc is not None:
                    ax.plot(abc[:, j], abc[:, i], ".", ms=2, color="C1", alpha=0.4)
                sub = cov[np.ix_([j, i], [j, i])]
                for level, style in zip(_LEVELS, ("-", "--")):
                    e = _ellipse(θ_hat[[j, i]], sub, level)
                    ax.plot(e[:, 0], e[:, 1], style, color="C0", lw=1.2)
                if path is not None:
                    ax.plot(path[:, j], path[:, i], "-", color="0.3", lw=0.8)
                    ax.plot(path[:-1, j], path[:-1, i], "k+", ms=7, label="fiducial path")
                ax.plot(θ_hat[j], θ_hat[i], "o", color="C0", ms=4, label="θ̂")
                if truth is not None:
                    ax.plot(truth[j], truth[i], "k*", ms=8, label="truth")
                if box is not None:
                    (x0, x1), (y0, y1) = (box[0][j], box[1][j]), (box[0][i], box[1][i])
                    ax.plot(
                        [x0, x1, x1, x0, x0],
                        [y0, y0, y1, y1, y0],
                        "-.",
                        color="0.6",
                        lw=0.8,
                        label="prior box",
                    )
                ax.set_xlim(lo[j], hi[j])
                ax.set_ylim(lo[i], hi[i])
            if i == p - 1:
                ax.set_xlabel(names[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
            elif j > 0 or i == 0:
                if i != j:
                    ax.set_yticklabels([])
    handles, labels = {}, []
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    labels = list(handles)
    labels_note = "contours: 68 %, 95 % of the Gaussian approximation"
    fig.legend([handles[k] for k in labels], labels, loc="upper right", frameon=False)
    fig.suptitle(labels_note, fontsize=9, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(filename, buf.getvalue())
    return filename
