"""The toy problem end to end, through the Python API.

10 draws from N(μ, Σ); θ = (μ, Σ). Beam simulates a seed-matched finite-difference
archive at θ_fid = (0, 1) (exact Fisher information diag(10, 5), det F = 50), the
validator checks it, the streaming trainer fits it over 2 CPU devices, the fitted
network compresses a target of 50 realisations made at θ = (0.3, 1.5), and the
posterior is drawn twice: the Gaussian (Fisher) approximation and rejection ABC
on the summaries.

    python examples/toy_end_to_end.py [--small] [--out examples-out/toy]

Writes OUT/run/history.png (the fit) and OUT/posterior.png (corner plot), and prints
one JSON line of results. --small (or IMNN_EXAMPLES_SMALL=1) runs in well under a
minute on 2 CPU cores; the default size is the README demo's.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import beam_jobs  # noqa: E402
import imnn_stream as im  # noqa: E402
import writers  # noqa: E402
from beam_jobs.simulators import gaussian_toy  # noqa: E402
from imnn_stream.app.inference import rejection_abc  # noqa: E402
from imnn_stream.app.posterior_plot import plot_posterior  # noqa: E402
from imnn_stream.app.runs import FittedIMNN, save_run  # noqa: E402

THETA_FID, DELTA_THETA, TRUTH = (0.0, 1.0), (0.1, 0.1), (0.3, 1.5)
PRIOR_LOW, PRIOR_HIGH = (-1.0, 0.3), (1.5, 3.0)
MODEL = "mlp:32,32"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CI size (under a minute)")
    p.add_argument("--out", default="examples-out/toy", help="folder for archive and plots")
    args = p.parse_args(argv)
    small = args.small or os.environ.get("IMNN_EXAMPLES_SMALL") == "1"
    n_s, iterations, n_abc = (200, 400, 5000) if small else (1000, 1500, 50000)
    os.makedirs(args.out, exist_ok=True)
    archive = os.path.join(args.out, "archive")

    # 1. simulate a seed-matched archive (train + validation) with Apache Beam
    beam_jobs.generate(
        archive,
        "toy",
        THETA_FID,
        DELTA_THETA,
        n_s,
        n_s,
        2,
        "numerical",
        records_per_shard=max(50, n_s // 4),
        beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    )
    # 2. check it
    report = writers.validate(archive)
    print(report.summary_line(), file=sys.stderr)
    assert report.ok
    # 3. fit the streaming trainer over 2 devices (ASCII names: lam = λ, eps = ϵ)
    with im.DatasetNumericalGradientIMNN.from_archive(
        archive,
        model=im.models.from_spec(MODEL, 2),
        optimiser=optax.adam(1e-2),
        key_or_state=jax.random.PRNGKey(0),
        host=jax.devices("cpu")[0],
        devices=jax.devices("cpu")[:2],
        n_per_device=n_s // 2,
    ) as imnn:
        imnn.fit(
            lam=10.0,
            eps=0.1,
            patience=50,
            min_iterations=iterations // 2,
            max_iterations=iterations,
            print_rate=10,
        )
    # 4. save the run folder (weights, statistics, history.png) and read it back
    run = os.path.join(args.out, "run")
    save_run(run, imnn, MODEL, expected_detF=50.0)
    fitted = FittedIMNN(run)
    # 5. a target of 50 realisations at TRUTH: its estimate, the Gaussian posterior
    # N(θ̂, (50 F)⁻¹) and rejection ABC on the summaries
    keys = jax.random.split(jax.random.PRNGKey(2026), 50)
    target = np.asarray(jax.vmap(lambda k: gaussian_toy(k, np.float32(TRUTH)))(keys))
    θ_hat = fitted.get_estimate(target).mean(0)
    F = np.asarray(fitted.F, float) * len(target)
    accepted, _ = rejection_abc(
        gaussian_toy, fitted, target, PRIOR_LOW, PRIOR_HIGH, n_draws=n_abc, accept=0.02
    )
    rows = [dict(θ_fid=list(THETA_FID), θ_hat=θ_hat.tolist())]
    plot_posterior(
        θ_hat,
        F,
        rows,
        os.path.join(args.out, "posterior.png"),
        abc=accepted,
        truth=TRUTH,
        names=["μ", "Σ"],
    )
    result = dict(
        detF=float(np.linalg.det(imnn.F)),
        exact_detF=50.0,
        theta_hat=θ_hat.tolist(),
        sigma=np.sqrt(np.diag(np.linalg.inv(F))).tolist(),
        abc_mean=accepted.mean(0).tolist(),
        truth=TRUTH,
        plots=[os.path.join(run, "history.png"), os.path.join(args.out, "posterior.png")],
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
