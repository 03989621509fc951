"""Information kept: best validation det F / exact det F on simulators with known Fisher.

Three simulators with exact Fisher information (beam_jobs.simulators): the toy
Gaussian (det F = 50), the 16×16 Gaussian random field (analytic Fisher) and the
log-normal (positive, heavy-tailed: draws span four decades). For each, one
seed-matched numerical archive (train + validation, n_s = n_d) is fitted

* with the command line's default FitConfig (only ``devices``, the iteration budget
  and ``expected_detF`` set): network ``auto``, input normalisation;
* with the whitened start switched on (``--whiten``); for the field with the
  learnt filters of ``--model field:8`` and the flattened ``--model cnn:8,16``; for
  the log-normal (where ``auto`` takes ``log``) with ``--input-transform none`` /
  ``log1p`` and with ``--no-normalise``;
* by the reference imnn 0.3.2 (its in-memory NumericalGradientIMNN on the same
  arrays, the same network and Adam rate, the same budget and patience), when its
  venv exists (``../shared/reference/README.md``; ``--reference-python``).

Then the ``infer`` loop (warm-started rounds, the default) on the toy and the
log-normal, against a cold-start fit of each round's own archive.

    .venv/bin/python benchmarks/information.py            # JSON + markdown table
    .venv/bin/python benchmarks/information.py --only toy --no-infer

Writes benchmarks/results/information.json and information.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from beam_jobs.simulators import (  # noqa: E402
    LOGNORMAL_THETA_FID,
    TOY_THETA_FID,
    gaussian_random_field,
    gaussian_toy,
    lognormal,
)
from imnn_stream.app.fitting import FitConfig, fit_archive  # noqa: E402
from writers.archive import write_arrays  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFVENV = os.path.expanduser("~/.cache/imnn_stream/refvenv/bin/python")
# name -> (simulator, θ_fid, δθ, variants beyond the default: FitConfig overrides)
SIMULATORS = {
    "toy": (gaussian_toy, TOY_THETA_FID, (0.1, 0.1), {}),
    "grf16": (
        gaussian_random_field(16),
        (1.0, 2.0),
        (0.1, 0.1),
        {  # the default network is `field` (log shell powers); cnn was the default before
            "--model field:8": dict(model="field:8"),
            "--model cnn:8,16": dict(model="cnn:8,16"),
        },
    ),
    "lognormal": (
        lognormal,
        LOGNORMAL_THETA_FID,
        (0.1, 0.1),
        {  # the default transform `auto` takes log here
            "--input-transform none": dict(input_transform="none"),
            "--input-transform log1p": dict(input_transform="log1p"),
            "--no-normalise": dict(normalise=False),
        },
    ),
}
ABLATIONS = {"--whiten": dict(whiten=True)}
# infer: simulator name -> (θ_true, θ_start, prior box, FitConfig overrides)
INFER = {
    "toy": ((0.3, 1.4), (0.0, 1.0), ((-2.0, 0.2), (2.0, 4.0)), {}),
    "lognormal": ((1.2, 1.3), (1.0, 1.5), ((0.0, 0.5), (3.0, 3.0)), {}),
}


def simulate(simulator, θ, δθ, n, seed):
    """(fiducial float(n, *shape), derivative float(n, 2, n_params, *shape))."""
    θ, δθ = jnp.asarray(θ, jnp.float32), jnp.asarray(δθ, jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    fid = jax.jit(jax.vmap(lambda k: simulator(k, θ)))(keys)
    steps = jnp.diag(δθ) / 2
    der = jax.jit(
        jax.vmap(
            lambda k: jnp.stack(
                [
                    jax.vmap(lambda s: simulator(k, θ - s))(steps),
                    jax.vmap(lambda s: simulator(k, θ + s))(steps),
                ]
            )
        )
    )(keys)
    return np.asarray(fid), np.asarray(der)


def _row(name, variant, exact, summary, seconds):
    return dict(
        simulator=name,
        variant=variant,
        exact_detF=exact,
        best_val_detF=summary["best_detF"],
        fraction=summary["best_detF"] / exact,
        hartlap_fraction=summary.get("detF_hartlap_fraction"),
        iterations=summary["iterations"],
        seconds=round(seconds, 1),
    )


def reference_row(name, variant, exact, arrays, θ, δθ, args, tmp):
    path = os.path.join(tmp, f"{name}-reference.npz")
    np.savez(path, **arrays)
    task = dict(
        npz=path,
        theta_fid=list(θ),
        delta_theta=list(δθ),
        network="cnn" if arrays["fiducial"].ndim >= 3 else "mlp",
        max_iterations=args.max_iterations,
        patience=FitConfig.patience,
        min_iterations=FitConfig.min_iterations,
        lr=1e-3,
        seed=0,
    )
    task_path = os.path.join(tmp, f"{name}-reference.json")
    json.dump(task, open(task_path, "w"))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [args.reference_python, "-m", "benchmarks.information_reference", task_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"),
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return dict(simulator=name, variant=variant, error=tail[:300])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = dict(best_detF=out["best_val_detF"], iterations=out["iterations"])
    return _row(name, variant, exact, summary, time.perf_counter() - t0)


def fit_rows(name, args, tmp, log):
    simulator, θ, δθ, extra = SIMULATORS[name]
    exact = float(np.linalg.det(simulator.fisher(θ)))
    f, d = simulate(simulator, θ, δθ, args.n_s, 0)
    vf, vd = simulate(simulator, θ, δθ, args.n_s, 1)
    archive = os.path.join(tmp, name)
    arrays = dict(fiducial=f, derivative=d, validation_fiducial=vf, validation_derivative=vd)
    write_arrays(archive, "numerical", θ, δθ, n_devices=2, records_per_shard=args.n_s, **arrays)
    rows = []
    variants = {"default": {}, **extra, **ABLATIONS}
    for variant, overrides in variants.items():
        config = FitConfig(
            devices=2, max_iterations=args.max_iterations, expected_detF=exact, **overrides
        )
        t0 = time.perf_counter()
        _, summary = fit_archive(
            archive, config, os.path.join(tmp, f"{name}-{len(rows)}"), progress=False
        )
        rows.append(_row(name, variant, exact, summary, time.perf_counter() - t0))
        log(rows[-1])
    if args.reference_python and os.path.exists(args.reference_python):
        rows.append(reference_row(name, "reference imnn 0.3.2", exact, arrays, θ, δθ, args, tmp))
        log(rows[-1])
    return rows


def infer_rows(name, args, tmp, log):
    """Warm-started infer rounds vs a cold-start fit of each round's archive."""
    from imnn_stream.app.inference import InferenceLoop

    simulator, _, δθ, _ = SIMULATORS[name]
    θ_true, θ_start, (lo, hi), overrides = INFER[name]
    keys = jax.random.split(jax.random.PRNGKey(99), 1)
    target = np.asarray(jax.vmap(lambda k: simulator(k, jnp.asarray(θ_true)))(keys))
    fit = FitConfig(devices=2, max_iterations=args.max_iterations, **overrides)
    out = os.path.join(tmp, f"infer-{name}")
    loop = InferenceLoop(
        out=out,
        simulator=name,
        target=target,
        theta_start=list(θ_start),
        delta_theta=list(δθ),
        prior_low=list(lo),
        prior_high=list(hi),
        n_s=args.n_s,
        n_d=args.n_s,
        fit=fit,
        max_rounds=args.rounds,
        tolerance=1e-3,  # run every round: the benchmark compares rounds, not convergence
    )
    rows = []
    for r in loop.run(log=lambda *a: None):
        cold = fit.replace(expected_detF=r["expected_detF"])
        t0 = time.perf_counter()
        _, summary = fit_archive(
            os.path.join(out, f"round-{r['round']:03d}", "archive"),
            cold,
            os.path.join(tmp, f"cold-{name}-{r['round']}"),
            progress=False,
        )
        cold_fraction = summary["best_detF"] / r["expected_detF"]
        rows.append(
            dict(
                simulator=name,
                round=r["round"],
                θ_fid=r["θ_fid"],
                θ_hat=r["θ_hat"],
                σ=r["σ"],
                warm_fraction=r["detF_fraction"],
                warm_iterations=r["iterations"],
                cold_fraction=cold_fraction,
                cold_iterations=summary["iterations"],
                warm_over_cold=r["detF_fraction"] / cold_fraction,
                cold_seconds=round(time.perf_counter() - t0, 1),
            )
        )
        log(rows[-1])
    return dict(simulator=name, θ_true=list(θ_true), rounds=rows)


def markdown(result):
    lines = [
        f"n_s = n_d = {result['n_s']}, at most {result['max_iterations']} iterations, "
        "patience 100; best validation det F / exact det F.",
        "",
        "| simulator | fit | det F / exact | Hartlap-corrected | iterations | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["fits"]:
        if "error" in r:
            lines.append(f"| {r['simulator']} | {r['variant']} | failed: {r['error']} | | | |")
            continue
        h = "" if r["hartlap_fraction"] is None else f"{r['hartlap_fraction']:.1%}"
        lines.append(
            f"| {r['simulator']} | {r['variant']} | {r['fraction']:.1%} | {h} | "
            f"{r['iterations']} | {r['seconds']} |"
        )
    for block in result["infer"]:
        lines += [
            "",
            f"infer on {block['simulator']} (θ_true = {block['θ_true']}): warm-started rounds "
            "vs a cold start on each round's archive",
            "",
            "| round | θ_fid | θ̂ ± σ | warm | cold | warm / cold |",
            "|---|---|---|---|---|---|",
        ]
        for r in block["rounds"]:
            est = ", ".join(f"{t:.3f} ± {s:.3f}" for t, s in zip(r["θ_hat"], r["σ"]))
            fid = ", ".join(f"{t:.3f}" for t in r["θ_fid"])
            lines.append(
                f"| {r['round']} | {fid} | {est} | {r['warm_fraction']:.1%} | "
                f"{r['cold_fraction']:.1%} | {r['warm_over_cold']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-iterations", type=int, default=1000)
    p.add_argument("--n-s", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3, help="infer rounds per simulator")
    p.add_argument("--only", default=None, help="comma-separated simulator names")
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--no-fits", action="store_true", help="only the infer rounds")
    p.add_argument("--reference-python", default=REFVENV, help="'' to skip the reference")
    p.add_argument("--out", default="benchmarks/results/information.json")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep --out's rows of the simulators not run now (re-measure some only)",
    )
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(SIMULATORS)
    log = lambda row: print(json.dumps(row), file=sys.stderr, flush=True)  # noqa: E731
    fits, infer = [], []
    earlier = json.load(open(args.out)) if args.merge and os.path.exists(args.out) else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names if not args.no_fits else ():
            fits += fit_rows(name, args, tmp, log)
            save(args, names, fits, infer, earlier)  # a crash later keeps what ran
        if not args.no_infer:
            for n in names:
                if n in INFER:
                    infer.append(infer_rows(n, args, tmp, log))
                    save(args, names, fits, infer, earlier)
    print(json.dumps(save(args, names, fits, infer, earlier)))


def save(args, names, fits, infer, earlier):
    """Write --out (JSON) and its markdown table; returns the result dict."""
    if earlier is not None:
        ran_fits = set() if args.no_fits else set(names)
        fits = [r for r in earlier["fits"] if r["simulator"] not in ran_fits] + fits
        ran = {b["simulator"] for b in infer} if not args.no_infer else set()
        infer = [b for b in earlier["infer"] if b["simulator"] not in ran] + infer
    result = dict(
        benchmark="information",
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        n_s=args.n_s,
        max_iterations=args.max_iterations,
        config="FitConfig defaults (devices=2, max_iterations, expected_detF set)",
        fits=fits,
        infer=infer,
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as fh:
        fh.write(markdown(result))
    return result


if __name__ == "__main__":
    main()
