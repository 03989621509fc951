"""Information kept by our default fit on simulators with known Fisher information.

For each simulator (the toy Gaussian; the Gaussian random field, analytic Fisher;
the log-normal, positive and heavy-tailed), write a seed-matched numerical archive
(train + validation) at the fiducial point and fit it with the command line's
default FitConfig (only devices and the iteration budget set here), with input
normalisation (the default, plus log1p for the log-normal) and without. Reports
the best validation det F / exact det F (and its Hartlap-corrected value) as JSON
(benchmarks/results/information.json).

    .venv/bin/python benchmarks/information.py [--max-iterations 2000 --n-s 1000]

Not measured here (left): the reference imnn 0.3.2 on the same archives, and the
``infer`` rounds against cold starts at each round's θ.
"""

from __future__ import annotations

import argparse
import json
import os
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

SIMULATORS = {
    "toy": (gaussian_toy, TOY_THETA_FID, (0.1, 0.1), ["none"]),
    "grf16": (gaussian_random_field(16), (1.0, 2.0), (0.1, 0.1), ["none"]),
    "lognormal": (lognormal, LOGNORMAL_THETA_FID, (0.1, 0.1), ["none", "log1p"]),
}


def simulate(simulator, θ, δθ, n, seed):
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-iterations", type=int, default=2000)
    p.add_argument("--n-s", type=int, default=1000)
    p.add_argument("--only", default=None, help="comma-separated simulator names")
    p.add_argument("--out", default="benchmarks/results/information.json")
    args = p.parse_args(argv)
    results = []
    names = args.only.split(",") if args.only else list(SIMULATORS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            simulator, θ, δθ, transforms = SIMULATORS[name]
            exact = float(np.linalg.det(simulator.fisher(θ)))
            f, d = simulate(simulator, θ, δθ, args.n_s, 0)
            vf, vd = simulate(simulator, θ, δθ, args.n_s, 1)
            archive = os.path.join(tmp, name)
            write_arrays(
                archive,
                "numerical",
                θ,
                δθ,
                fiducial=f,
                derivative=d,
                validation_fiducial=vf,
                validation_derivative=vd,
                n_devices=2,
                records_per_shard=max(1, args.n_s // 2),
            )
            for normalise, transform in [(False, "none")] + [(True, t) for t in transforms]:
                config = FitConfig(
                    devices=2,
                    max_iterations=args.max_iterations,
                    normalise=normalise,
                    input_transform=transform,
                    expected_detF=exact,
                )
                t0 = time.perf_counter()
                imnn, summary = fit_archive(
                    archive,
                    config,
                    os.path.join(tmp, f"{name}-{normalise}-{transform}"),
                    progress=False,
                )
                row = dict(
                    simulator=name,
                    normalise=normalise,
                    transform=transform,
                    exact_detF=exact,
                    best_val_detF=summary["best_detF"],
                    best_fraction=summary["best_detF_fraction"],
                    hartlap_fraction=summary["detF_hartlap_fraction"],
                    iterations=summary["iterations"],
                    seconds=round(time.perf_counter() - t0, 1),
                    warnings=len(summary["warnings"]),
                )
                print(json.dumps(row), file=sys.stderr, flush=True)
                results.append(row)
    out = dict(
        n_s=args.n_s,
        max_iterations=args.max_iterations,
        config="FitConfig defaults",
        results=results,
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
