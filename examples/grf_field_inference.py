"""Field inference in the style of cosmology, through the command line.

A 2-D Gaussian random field with power spectrum P(k) = A k^−B: from one observed
map, infer the amplitude A and the slope B.

1. ``imnn-stream generate`` simulates the observed map at the true θ = (A, B);
2. ``imnn-stream infer`` iterates: simulate a seed-matched archive around the
   current fiducial θ, ``validate`` it, ``fit`` a CNN IMNN, estimate θ̂ for the
   map, until θ̂ settles; then the Gaussian (Fisher) posterior and rejection ABC
   on the summaries (OUT/inference/posterior.png, path.png);
3. ``imnn-stream estimate`` gives θ̂ of the map with the last round's network.

    python examples/grf_field_inference.py [--small] [--out examples-out/grf]

Writes OUT/map.png (the observed map beside a simulation at θ̂),
OUT/inference/posterior.png (corner plot), OUT/inference/path.png and the last
round's history.png, and prints one JSON line of results. --small (or
IMNN_EXAMPLES_SMALL=1) uses 16×16 maps and runs in about a minute on 2 CPU cores.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

TRUTH, START = (1.0, 2.5), (1.4, 2.0)
PRIOR_LOW, PRIOR_HIGH = (0.2, 1.0), (4.0, 4.0)
BEAM = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def imnn_stream(*args):
    """Run ``imnn-stream ARGS --json`` (as ``python -m imnn_stream``); its result."""
    cmd = [sys.executable, "-m", "imnn_stream", *map(str, args), "--json"]
    print("$ imnn-stream " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(r.stdout)


def floats(values):
    return ",".join(f"{v:g}" for v in values)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CI size (about a minute)")
    p.add_argument("--out", default="examples-out/grf", help="folder for archives and plots")
    args = p.parse_args(argv)
    small = args.small or os.environ.get("IMNN_EXAMPLES_SMALL") == "1"
    size, n_s, iterations, rounds, n_abc = (
        (16, 100, 100, 1, 1000) if small else (32, 1000, 1000, 5, 20000)
    )
    config = json.dumps({"size": size})
    os.makedirs(args.out, exist_ok=True)
    target = os.path.join(args.out, "map")

    imnn_stream("generate", "--simulator", "grf", "--simulator-config", config,
                "--theta-fid", floats(TRUTH), "--n-s", 1, "--n-devices", 1,
                "--mode", "fiducial", "--no-validation", "--seed", 2026, "--out", target,
                "--quiet", *BEAM)  # fmt: skip
    inference = os.path.join(args.out, "inference")
    result = imnn_stream("infer", "--simulator", "grf", "--simulator-config", config,
                         "--target", target, "--theta-start", floats(START),
                         "--delta-theta", "0.1,0.1", f"--prior-low={floats(PRIOR_LOW)}",
                         f"--prior-high={floats(PRIOR_HIGH)}", "--n-s", n_s,
                         "--n-per-device", n_s // 4, "--model", "cnn:8,16",
                         "--optimiser", "adam:3e-3", "--max-iterations", iterations,
                         "--min-iterations", iterations // 2, "--patience", 30,
                         "--max-rounds", rounds, "--tolerance", 0.5, "--abc", n_abc,
                         "--abc-accept", 0.02, "--out", inference, *BEAM)  # fmt: skip
    last_run = sorted(glob.glob(os.path.join(inference, "round-*", "run")))[-1]
    estimate = imnn_stream("estimate", last_run, target)["estimate"]

    # the observed map beside a simulation at θ̂
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from beam_jobs.simulators import gaussian_random_field
    from imnn_stream.app.runs import load_inputs

    observed = load_inputs(target)[0]
    at_hat = gaussian_random_field(size)(jax.random.PRNGKey(1), np.float32(result["θ_hat"]))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, field, title in [
        (axes[0], observed, f"observed map, θ = (A, B) = {TRUTH}"),
        (
            axes[1],
            np.asarray(at_hat),
            "a simulation at θ̂ = ({:.2f}, {:.2f})".format(*result["θ_hat"]),
        ),
    ]:
        ax.imshow(field, cmap="RdBu_r")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "map.png"), dpi=100)
    plt.close(fig)

    summary = dict(
        truth=TRUTH,
        theta_hat=result["θ_hat"],
        sigma=result["σ"],
        abc_mean=result.get("abc_mean"),
        rounds=result["rounds"],
        estimate=estimate,
        plots=[
            os.path.join(args.out, "map.png"),
            result["posterior_plot"],
            os.path.join(inference, "path.png"),
            os.path.join(last_run, "history.png"),
        ],
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
