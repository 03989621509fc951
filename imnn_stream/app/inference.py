"""The seed's inference loop: fit at θ_fid → estimate θ̂ for the target → new
simulations around θ̂ → fit again, until θ̂ stops moving; then use the
summaries (Gaussian approximation, ABC, export for simulation-based inference).

Each round r lives in ``OUT/round-{r:03d}/`` (archive, run folder, round.json);
a round with a ``round.json`` is finished and never redone, so an interrupted
``infer`` continues where it stopped (archive generation and fitting resume
too). ``OUT/rounds.json`` and ``OUT/rounds.parquet`` hold the table of rounds,
``OUT/path.png`` the path of θ̂ with the Fisher error ellipse of every round.

The target is a batch of iid realisations float(n, *input_shape) (or one input):
its estimate is the mean of the per-realisation estimates, with Fisher matrix n·F.
The loop stops when every |θ̂_α − θ_fid,α| is below ``tolerance`` Fisher standard
deviations (of one realisation, σ_α = sqrt((F⁻¹)_αα)).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .fitting import FitConfig, fit_archive

__all__ = [
    "InferenceLoop",
    "InferenceError",
    "gaussian_posterior",
    "rejection_abc",
    "export_pairs",
    "FIT_DEFAULTS",
]

#: the loop's fit settings where they differ from FitConfig's defaults
FIT_DEFAULTS = dict(max_iterations=1000)


class InferenceError(ValueError):
    """Bad input to the loop, or the loop left the prior box (rounds done are kept)."""


@dataclass
class InferenceLoop:
    """The loop's configuration; :meth:`run` executes (or resumes) it.

    simulator: "module:function" / "toy" / "grf" (the Beam job's names);
    theta_start, delta_theta float(n_params,); prior_low, prior_high: the prior box;
    fit: how every round fits (``fit.devices`` also lays out the archives). Each
    round r initialises the network from ``fit.seed + r`` (or warm-starts from the
    previous round's weights), checkpoints every ``max(1, fit.max_iterations // 20)``
    iterations unless ``fit.checkpoint_every`` says otherwise, and resumes.

    exact_fisher: ``F(θ) -> float(n_params, n_params)``, a callable or a
    "module:function" name, when the exact Fisher information is known (default: the
    simulator's ``fisher`` attribute, which the built-in simulators have). Each
    round then reports det F / det F_exact at its θ_fid (``detF_fraction``) in its
    progress bar, history, plot, run summary and round row. Every round reports the
    Hartlap-corrected ``F_hartlap`` (see :mod:`imnn_stream.information`); its σ, the
    convergence test and :meth:`final` use it.
    """

    out: str
    simulator: str
    target: np.ndarray
    theta_start: list
    delta_theta: list
    prior_low: list
    prior_high: list
    simulator_config: dict | None = None
    n_s: int = 1000
    n_d: int = 1000
    fit: FitConfig = field(default_factory=lambda: FitConfig(**FIT_DEFAULTS))
    max_rounds: int = 5
    tolerance: float = 0.5
    warm_start: bool = True
    beam_args: list = field(default_factory=list)
    progress: bool = False
    exact_fisher: object = None

    def __post_init__(self):
        n = len(self.theta_start)
        for name in ("delta_theta", "prior_low", "prior_high"):
            if len(getattr(self, name)) != n:
                raise InferenceError(
                    f"`{name}` has {len(getattr(self, name))} values, theta_start has {n}"
                )
        self.theta_start = [float(v) for v in self.theta_start]
        lo, hi = np.asarray(self.prior_low, float), np.asarray(self.prior_high, float)
        if np.any(lo >= hi):
            raise InferenceError(f"prior box is empty: low {lo.tolist()} ≥ high {hi.tolist()}")
        if not _inside(self.theta_start, lo, hi):
            raise InferenceError(
                f"theta_start {self.theta_start} is outside the prior box "
                f"[{lo.tolist()}, {hi.tolist()}]"
            )
        if self.tolerance <= 0:
            raise InferenceError(f"`tolerance` must be positive, got {self.tolerance}")
        self.target = np.asarray(self.target, np.float32)
        if not isinstance(self.fit, FitConfig):
            raise InferenceError(f"`fit` must be a FitConfig, got {type(self.fit).__name__}")

    @property
    def seed(self) -> int:
        return self.fit.seed

    # -- one round ---------------------------------------------------------------------

    def _round_dir(self, r):
        return os.path.join(self.out, f"round-{r:03d}")

    def _check_target(self, input_shape):
        t = self.target
        if t.shape == tuple(input_shape):
            return t[None]
        if t.ndim == len(input_shape) + 1 and t.shape[1:] == tuple(input_shape):
            return t
        raise InferenceError(
            f"target has shape {t.shape}, the simulator makes {tuple(input_shape)}"
            f" (expected {tuple(input_shape)} or (n, {', '.join(map(str, input_shape))}))"
        )

    def _round(self, r, θ_fid, previous):
        import beam_jobs
        import jax
        import writers

        t0 = time.perf_counter()
        d = self._round_dir(r)
        archive = os.path.join(d, "archive")
        seeds = {"train": self.seed + 2 * r + 1000, "validation": self.seed + 2 * r + 1001}
        n_devices = self.fit.devices
        manifest = beam_jobs.generate(
            archive,
            self.simulator,
            θ_fid,
            self.delta_theta,
            self.n_s,
            self.n_d,
            n_devices,
            "numerical",
            records_per_shard=max(1, self.n_s // n_devices),
            seeds=seeds,
            simulator_config=self.simulator_config,
            beam_args=self.beam_args,
            progress=self.progress,
        )
        target = self._check_target(manifest.input_shape)
        report = writers.validate(archive)
        if not report.ok:
            raise InferenceError(
                f"round {r}: the generated archive is invalid: {report.summary_line()}"
            )
        config = self.fit.replace(
            checkpoint_every=self.fit.checkpoint_every or max(1, self.fit.max_iterations // 20),
            resume=True,
        )
        exact = self._exact_fisher()
        if exact is not None:
            config = config.replace(expected_detF=float(np.linalg.det(exact(np.asarray(θ_fid)))))
        key = jax.random.PRNGKey(self.seed + r)
        imnn, _ = fit_archive(
            archive,
            config,
            os.path.join(d, "run"),
            weights=previous[0] if self.warm_start and previous else None,
            normalisation=previous[1] if self.warm_start and previous else None,
            key=key,
            rng=jax.random.fold_in(key, 1),
            checkpoint_dir=os.path.join(d, "checkpoint"),
            progress=self.progress,
            clear_stale_lock=True,  # this loop holds OUT.lock: a stale round lock is its own
        )
        estimates = imnn.get_estimate(target)
        θ_hat = estimates.mean(0)
        F = np.asarray(imnn.F, float)
        F_hartlap = F * imnn.hartlap
        row = dict(
            round=r,
            θ_fid=list(map(float, θ_fid)),
            θ_hat=θ_hat.tolist(),
            F=F.tolist(),
            n_target=len(target),
            F_hartlap=F_hartlap.tolist(),
            σ=np.sqrt(np.diag(np.linalg.inv(F_hartlap))).tolist(),
            val_detF=float(np.linalg.det(F)),
            expected_detF=config.expected_detF,
            detF_fraction=None
            if config.expected_detF is None
            else float(np.linalg.det(F)) / config.expected_detF,
            iterations=int(len(imnn.history["detF"])),
            seconds=time.perf_counter() - t0,
            seeds=seeds,
        )
        _write_json(os.path.join(d, "round.json"), row)
        return row, (imnn.w, imnn.normalisation)

    def _exact_fisher(self):
        """The exact Fisher function, or None when unknown."""
        if callable(self.exact_fisher):
            return self.exact_fisher
        from beam_jobs.simulate import SimulatorSpec, load_simulator

        if isinstance(self.exact_fisher, str):
            return load_simulator(SimulatorSpec(self.exact_fisher))
        sim = load_simulator(SimulatorSpec(self.simulator, self.simulator_config))
        return getattr(sim, "fisher", None)

    # -- the loop ------------------------------------------------------------------------

    def rounds(self):
        """Finished rounds, in order (read from their round.json)."""
        out, r = [], 0
        while os.path.exists(os.path.join(self._round_dir(r), "round.json")):
            with open(os.path.join(self._round_dir(r), "round.json")) as f:
                out.append(json.load(f))
            r += 1
        return out

    def run(self, log=print):
        """Run or resume the loop; returns the table of rounds. Raises InferenceError
        (after saving the table) if θ̂ leaves the prior box. ``OUT.lock`` keeps a
        second ``infer`` out of the folder meanwhile; a lock left by a killed loop on
        this host is taken over with a one-line warning (re-running resumes)."""
        from .runs import run_lock

        with run_lock(self.out, what="inference folder", clear_stale=True):
            return self._run(log)

    def _run(self, log):
        from .runs import FittedIMNN

        os.makedirs(self.out, exist_ok=True)
        rows = self.rounds()
        lo, hi = np.asarray(self.prior_low), np.asarray(self.prior_high)
        previous = None
        if rows:
            log(f"resuming after {len(rows)} finished round(s)")
        while True:
            if rows and self._converged(rows[-1]):
                log(f"converged after {len(rows)} round(s): θ̂ = {rows[-1]['θ_hat']}")
                break
            if rows and not _inside(rows[-1]["θ_hat"], lo, hi):
                self._write_table(rows)
                raise InferenceError(
                    f"round {rows[-1]['round']}: θ̂ = {rows[-1]['θ_hat']} left the prior box "
                    f"[{lo.tolist()}, {hi.tolist()}] — the loop diverges; rounds so far are kept "
                    f"in {self.out}"
                )
            if len(rows) >= self.max_rounds:
                log(f"stopped after max_rounds = {self.max_rounds}; θ̂ = {rows[-1]['θ_hat']}")
                break
            if rows and previous is None and self.warm_start:  # resumed: last round's weights
                fitted = FittedIMNN(
                    os.path.join(self._round_dir(len(rows) - 1), "run"),
                    trust_code=self.fit.trust_code,
                    allow_pickle=self.fit.trust_pickle,
                )
                previous = (fitted.w, fitted.normalisation)
            θ_fid = rows[-1]["θ_hat"] if rows else self.theta_start
            log(f"round {len(rows)}: fitting at θ_fid = {np.round(θ_fid, 4).tolist()}")
            row, previous = self._round(len(rows), θ_fid, previous)
            log(
                f"round {row['round']}: θ̂ = {np.round(row['θ_hat'], 4).tolist()} ± "
                f"{np.round(row['σ'], 4).tolist()} (det F = {row['val_detF']:.3g}"
                + (
                    ""
                    if row.get("detF_fraction") is None
                    else f" = {row['detF_fraction']:.0%} of the exact"
                )
                + ", "
                f"{row['seconds']:.0f} s)"
            )
            rows.append(row)
            self._write_table(rows)
        self._write_table(rows)
        return rows

    def _converged(self, row):
        step = np.abs(np.asarray(row["θ_hat"]) - np.asarray(row["θ_fid"]))
        return bool(np.all(step < self.tolerance * np.asarray(row["σ"])))

    def _write_table(self, rows):
        import pyarrow as pa
        import pyarrow.parquet as pq

        import io

        from writers.durable import write_atomic

        _write_json(os.path.join(self.out, "rounds.json"), rows)
        n = len(rows[0]["θ_fid"]) if rows else 0
        table = {
            "round": [r["round"] for r in rows],
            **{f"theta_fid_{a}": [r["θ_fid"][a] for r in rows] for a in range(n)},
            **{f"theta_hat_{a}": [r["θ_hat"][a] for r in rows] for a in range(n)},
            **{f"sigma_{a}": [r["σ"][a] for r in rows] for a in range(n)},
            "val_detF": [r["val_detF"] for r in rows],
            "detF_fraction": [r.get("detF_fraction") for r in rows],
            "seconds": [r["seconds"] for r in rows],
        }
        buf = io.BytesIO()
        pq.write_table(pa.table(table), buf)
        write_atomic(os.path.join(self.out, "rounds.parquet"), buf.getvalue())
        if rows:
            plot_path(rows, os.path.join(self.out, "path.png"))

    def final(self):
        """(θ̂ float(n_params,), F of one realisation (Hartlap-corrected), run folder) of
        the last round."""
        rows = self.rounds()
        if not rows:
            raise InferenceError(f"{self.out}: no finished round")
        last = rows[-1]
        return (
            np.asarray(last["θ_hat"]),
            np.asarray(last.get("F_hartlap", last["F"])),
            os.path.join(self._round_dir(last["round"]), "run"),
        )


def _write_json(path, value):
    """Write JSON atomically and durably (fsync of the file and its folder)."""
    from writers.durable import write_atomic

    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8"))


def _inside(θ, lo, hi):
    θ = np.asarray(θ, float)
    return bool(np.all(θ > lo) and np.all(θ < hi))


def plot_path(rows, filename):
    """θ̂ per round (first two parameters) with its 1σ Fisher ellipse."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    fig, ax = plt.subplots(figsize=(5, 5))
    θs = np.array([r["θ_hat"] for r in rows])
    fids = np.array([r["θ_fid"] for r in rows])
    ax.plot(fids[:, 0], fids[:, 1], "k+", label="fiducial per round")
    # the path: start → θ̂ of round 0 → θ̂ of round 1 → …
    path = np.concatenate([fids[:1], θs])
    ax.plot(path[:, 0], path[:, 1], "-", color="C0", alpha=0.5)
    ax.plot(θs[:, 0], θs[:, 1], "o", color="C0", label="estimate per round")
    for r, θ in zip(rows, θs):
        cov = np.linalg.inv(np.asarray(r["F"]))[:2, :2] / r.get("n_target", 1)
        vals, vecs = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
        ax.add_patch(
            Ellipse(
                θ[:2],
                2 * np.sqrt(vals[-1]),
                2 * np.sqrt(vals[0]),
                angle=angle,
                fill=False,
                color="C0",
                alpha=0.6,
            )
        )
        ax.annotate(str(r["round"]), θ[:2], textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("θ₀")
    ax.set_ylabel("θ₁")
    ax.legend(frameon=False)
    import io

    from writers.durable import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    write_atomic(filename, buf.getvalue())


# -- after the loop: using the summaries --------------------------------------------------


def gaussian_posterior(θ_hat, F, n_target=1, n_samples=10000, seed=0, grid=None):
    """Gaussian approximation N(θ̂, (n_target·F)⁻¹): samples float(n_samples, n_params)
    and, with ``grid`` (a list of 1-D axes), the density on that grid."""
    cov = np.linalg.inv(np.asarray(F, float) * n_target)
    rng = np.random.default_rng(seed)
    samples = rng.multivariate_normal(np.asarray(θ_hat, float), cov, size=n_samples)
    if grid is None:
        return samples
    mesh = np.stack(np.meshgrid(*grid, indexing="ij"), -1)
    d = mesh - θ_hat
    inv = np.linalg.inv(cov)
    density = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    density /= np.sqrt((2 * np.pi) ** len(θ_hat) * np.linalg.det(cov))
    return samples, density


def _prior_draws(
    simulator, fitted, prior_low, prior_high, n, seed, batch=1000, progress=True, realisations=1
):
    """(θ float(n, n_params), summaries float(n, realisations, n_summaries)) for
    θ ~ U(prior box), ``realisations`` iid simulations per θ."""
    import jax
    from writers.progress import bar

    lo, hi = np.asarray(prior_low, np.float32), np.asarray(prior_high, np.float32)
    rng = np.random.default_rng(seed)
    θ = (lo + (hi - lo) * rng.random((n, len(lo)))).astype(np.float32)
    m = int(realisations)

    @jax.jit
    def summaries(w, keys, θs):  # keys (b, m, 2), θs (b, n_params) -> (b, m, n_summaries)
        sims = jax.vmap(lambda ks, t: jax.vmap(lambda k: simulator(k, t))(ks))(keys, θs)
        return fitted.model(w, sims.reshape((-1,) + sims.shape[2:])).reshape(sims.shape[:2] + (-1,))

    base = jax.random.PRNGKey(seed)
    batch = max(1, batch // m)
    xs = []
    for start in bar(
        iterable=range(0, n, batch), desc="simulating prior draws", disable=not progress
    ):
        idx = np.arange(start, min(n, start + batch))
        keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(base, i), m))(idx)
        xs.append(np.asarray(summaries(fitted.w, keys, θ[idx])))
    return θ, np.concatenate(xs)


def export_pairs(simulator, fitted, prior_low, prior_high, n, path_stem, seed=0, progress=True):
    """Write (θ, summaries) of n prior draws to ``{path_stem}.npz`` and ``.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    θ, x = _prior_draws(simulator, fitted, prior_low, prior_high, n, seed, progress=progress)
    x = x[:, 0]
    np.savez(path_stem + ".npz", theta=θ, summaries=x)
    cols = {f"theta_{a}": θ[:, a] for a in range(θ.shape[1])}
    cols.update({f"summary_{a}": x[:, a] for a in range(x.shape[1])})
    pq.write_table(pa.table(cols), path_stem + ".parquet")
    return θ, x


def rejection_abc(
    simulator,
    fitted,
    target,
    prior_low,
    prior_high,
    n_draws=20000,
    accept=0.02,
    seed=0,
    progress=True,
):
    """Rejection ABC on the summaries: draw θ from the prior box, simulate, compress,
    keep the fraction ``accept`` closest to the target in the Fisher metric of the
    quasi-ML estimates, ρ = (θ̂(x) − θ̂(target))ᵀ F (θ̂(x) − θ̂(target)).

    target: one input or a batch of m iid realisations; every prior draw is then
    simulated m times too and compared through the mean estimate, as the loop's.
    Returns accepted θ float(k, n_params) and their distances.
    """
    import jax.numpy as jnp
    from .. import fisher

    target = np.asarray(target, np.float32)
    if target.shape == fitted.input_shape:
        target = target[None]
    θ, x = _prior_draws(
        simulator,
        fitted,
        prior_low,
        prior_high,
        n_draws,
        seed,
        progress=progress,
        realisations=len(target),
    )
    s = fitted.statistics
    est = np.asarray(
        fisher.quasi_ml_estimate(
            jnp.asarray(x), fitted.θ_fid, s["invF"], s["dμ_dθ"], s["invC"], s["μ"]
        )
    ).mean(1)
    target_est = fitted.get_estimate(target).mean(0)
    d = est - target_est
    ρ = np.einsum("ni,ij,nj->n", d, fitted.F * len(target), d)
    keep = np.argsort(ρ)[: max(1, int(accept * n_draws))]
    return θ[keep], ρ[keep]
