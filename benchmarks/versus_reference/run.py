"""imnn_stream against the published reference implementation (`imnn` 0.3.2), side by side.

From the repository root:

    .venv/bin/python -m benchmarks.versus_reference [--quick] [--repeats 3] [--iterations 10]
                     [--memory-iterations 100] [--field-memory-iterations 20]
                     [--large-iterations 3] [--configs toy,field,large] [--classes all]
                     [--no-agreement] [--fresh] [--fresh-side ours] [--cached-only]

Every measurement is cached (``~/.cache/imnn_stream/versus_reference/runs``, keyed by
side, task and round), so a run can be split: e.g. ``--configs toy,field`` in one
session, ``--configs large`` in the next, then the whole table with the same options
and ``--cached-only``. After changing our code, ``--fresh-side ours`` re-measures our
side and keeps the reference's cached rounds (``--fresh``: both sides).

The reference needs an old stack (Python 3.9, jax 0.4.13, TensorFlow 2.13): it is
installed once into its own virtualenv, ``~/.cache/imnn_stream/refvenv`` (override with
IMNN_REFVENV), from the exact pins in ``../shared/reference/requirements-py39.txt``
relative to the repository root (override with IMNN_REF_REQUIREMENTS). It is never a
dependency of the project and nothing of it lives in the repository tree.

The package's modules and their roles:

* ``run`` (this file; our venv, the parent): arguments, data preparation, the A/B
  alternation, the per-measurement cache, writing the results;
* ``ours`` (our venv) and ``reference`` (the reference venv, Python 3.9): one child
  process per measurement, started as ``python -m benchmarks.versus_reference.<side>
  --task JSON`` from the repository root;
* ``common`` (Python 3.9 safe): configurations, data on disk, the shared child entry
  point and the side-independent building and timing of a class;
* ``report``: medians, goals, agreement comparison, Markdown.

For every configuration and class the two sides alternate A B A B for ``--repeats``
rounds; the figures are medians over rounds. Per measurement (same data, same initial
weights, same optimiser — adam(1e-3) of jax.example_libraries on both sides — λ = 10,
ϵ = 0.1, validation set of the same size): construct, ``fit`` 1 iteration (compiles),
``fit`` 1 iteration again, ``fit`` N iterations. Then

* s/it         = (t(fit N) − t(fit 1, second)) / (N − 1)
* first fit    = t(fit 1, first): compilation and one iteration
* repeated fit = t(fit 1, second), measured directly: what a repeated ``fit`` call costs
* peak RSS     = ru_maxrss of the child process (includes the interpreter and its
                 imports: TensorFlow on the reference side, for its writer/readers)
* val det F    = validation det F after the 2 + N iterations.

The JSON also carries two derived figures, clamped at 0 and named ``*_clamped``:
first − repeated fit (the one-off cost) and repeated fit − s/it.

Configurations (2 XLA CPU devices, ``--xla_force_host_platform_device_count=2``):

* toy   — 10 draws of N(μ, Σ), θ = (0, 1), δθ = (0.1, 0.1), n_s = n_d = 1000,
          MLP 10→128→128→2 (LeakyReLU), aggregated/dataset n_per_device = 250;
* field — 32×32 Gaussian random field, θ = (A, B) = (1, 2), δθ = (0.1, 0.1),
          n_s = n_d = 500, CNN Conv3×3/2(8)→Conv3×3/2(16)→Dense(64)→Dense(2), 250 per device;
* large — the field with Conv(32)→Conv(64)→Dense(256)→Dense(2) (1.07 M parameters),
          the two-pass classes only, 50 per device.

toy and field run all eight classes: in memory (Numerical, Gradient, Simulator), aggregated
(the same three) and dataset (Numerical, Gradient); large the five two-pass ones. Each
config also has a row ``AggregatedSimulatorIMNN(validation=False)`` (toy and field also
``SimulatorIMNN(validation=False)``): ours without its validation pass on fresh
simulations, which the reference's simulator classes do not have — the same work on
both sides (its reference column is the reference's class of that name, the same cached
rounds); the goals are reported both ways. The data
are generated once by our simulators (in our venv) and handed to both sides as .npy; the
simulator classes run the same simulator functions (``common``) on both sides. Dataset
classes read TFRecords — the reference from files written by its own ``imnn.TFRecords``
writer, read with tf.data as its documentation prescribes, ours from an archive written by
``writers.archive.write_arrays``.

The agreement check feeds identical weights and data (.npz) to both sides and compares
loss, Fisher matrix and (where the reference's two-pass gradient is exercised) the loss
gradient.

Outputs: JSON on stdout and in ``benchmarks/results/versus_reference.json``, a Markdown
table in ``benchmarks/results/versus_reference.md``.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

from .common import CACHE, CONFIGS, TWO_PASS, WORK, base_class
from .report import compare, goals, markdown, summarise

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
REFVENV = os.environ.get("IMNN_REFVENV", os.path.join(CACHE, "refvenv"))
REQUIREMENTS = os.environ.get(
    "IMNN_REF_REQUIREMENTS",
    os.path.normpath(os.path.join(ROOT, "..", "shared", "reference", "requirements-py39.txt")),
)
CACHE_VERSION = 2  # bump when what a child measures changes: older cached runs are ignored


def log(msg):
    print(f"[versus_reference {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def child_env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYTHONPATH", None)  # `-m` from ROOT puts the repository first on the path
    return env


def ensure_refvenv():
    """Create the reference virtualenv once (cached); return its python."""
    python = os.path.join(REFVENV, "bin", "python")
    marker = os.path.join(REFVENV, ".imnn_stream_ready")
    if os.path.exists(marker):
        return python
    if not os.path.exists(REQUIREMENTS):
        raise SystemExit(
            f"reference requirements not found: {REQUIREMENTS} (set IMNN_REF_REQUIREMENTS)"
        )
    os.makedirs(os.path.dirname(REFVENV), exist_ok=True)
    log(f"setting up the reference in {REFVENV} (once; a few minutes)")
    if not os.path.exists(python):
        env = dict(os.environ, PYENV_VERSION="3.9.18")
        subprocess.run(["python3.9", "-m", "venv", REFVENV], check=True, env=env)
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True)
    subprocess.run(
        [python, "-c", "import jax, tensorflow, importlib.util as u; assert u.find_spec('imnn')"],
        check=True,
        env=child_env(),
    )
    with open(marker, "w") as f:
        f.write(REQUIREMENTS + "\n")
    return python


SIDES = {"ours": "benchmarks.versus_reference.ours", "ref": "benchmarks.versus_reference.reference"}


def run_child(python, side, task, timeout=1800):
    """One measurement in a fresh process of `side`; its JSON result (last stdout line)."""
    cmd = [python, "-m", SIDES[side], "--task", json.dumps(task)]
    t0 = time.time()
    try:
        p = subprocess.run(
            cmd,
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = p.stderr.strip().splitlines() or ["(no stderr)"]
        # the last line naming an exception, else the last line
        msg = next((ln for ln in reversed(err) if "Error" in ln or "Exception" in ln), err[-1])
        return {"error": msg.strip()[:300], "returncode": p.returncode}
    return dict(json.loads(lines[-1]), child_s=round(time.time() - t0, 1))


def cached_child(python, side, task, round_, fresh, cached_only=False):
    """run_child with a per-measurement cache (so an interrupted run resumes)."""
    key = hashlib.sha1(
        json.dumps([CACHE_VERSION, side, task, round_], sort_keys=True).encode()
    ).hexdigest()[:16]
    path = os.path.join(WORK, "runs", key + ".json")
    if not fresh and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if cached_only:
        return {"error": "not measured in this run (--cached-only)", "skipped": True}
    out = run_child(python, side, task)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f)
    return out


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def _num(x):
    return float("nan") if x is None else x


def describe(out):
    if "error" in out:
        return out["error"]
    return (
        f"{out['s_per_it']:.4g} s/it, first fit {out['first_fit_s']:.3g} s, "
        f"repeated fit {out['refit_s']:.3g} s, {out['peak_rss_mib']:.0f} MiB, "
        f"det F {_num(out.get('detF')):.4g}, val det F {_num(out.get('val_detF')):.4g}, "
        f"child {out.get('child_s', 0):.0f} s"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.versus_reference", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 iterations")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iterations", type=int, default=10, help="timed iterations, two-pass classes")
    p.add_argument(
        "--memory-iterations",
        type=int,
        default=100,
        help="timed iterations of the in-memory classes",
    )
    p.add_argument(
        "--field-memory-iterations",
        type=int,
        default=20,
        help="timed iterations of the in-memory classes on the field (the reference takes "
        "seconds an iteration there, far above its recompilation noise)",
    )
    p.add_argument("--large-iterations", type=int, default=3)
    p.add_argument("--large-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--configs", default="toy,field,large")
    p.add_argument("--classes", default="all", help="comma-separated class names, or all")
    p.add_argument("--no-agreement", action="store_true")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="tabulate cached measurements only (measure nothing new)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore measurements cached in ~/.cache/imnn_stream/versus_reference/runs",
    )
    p.add_argument(
        "--fresh-side",
        choices=("ours", "ref"),
        default=None,
        help="re-measure this side only, the other's cached measurements kept (after a "
        "change to our code: the reference's seconds-per-iteration runs are the costly ones)",
    )
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.iterations, args.large_iterations, args.memory_iterations = 1, 3, 2, 20
        args.field_memory_iterations = 5
    return args


def measure(args, pythons, config, cls):
    """Alternate reference / ours for the rounds of one (config, class); one summary row."""
    problem, network, _, npd = CONFIGS[config]
    # in-memory iterations are cheap while the reference recompiles (seconds, noisy) on
    # every fit call: time many of them so that the difference is meaningful
    n_it = (
        args.large_iterations
        if config == "large"
        else args.iterations
        if base_class(cls)[0] in TWO_PASS
        else args.field_memory_iterations
        if config == "field"
        else args.memory_iterations
    )
    task = dict(
        task="bench", problem=problem, network=network, cls=cls, n_per_device=npd, iterations=n_it
    )
    # a variant of one of our classes (common.LIKE_FOR_LIKE) against the reference's
    # class itself: the same task, so its cached rounds are reused, not measured again
    tasks = {"ours": task, "ref": dict(task, cls=base_class(cls)[0])}
    repeats = (args.large_repeats or args.repeats) if config == "large" else args.repeats
    runs = {"ref": [], "ours": []}
    for r in range(repeats):
        sides = ("ref", "ours") if not any("error" in o for o in runs["ref"]) else ("ours",)
        for side in sides:  # a broken reference class fails alike every time: ours only then
            # the reference's rounds of a variant row are its class's own: never re-measured
            fresh = (args.fresh or args.fresh_side == side) and tasks[side]["cls"] == cls
            out = cached_child(pythons[side], side, tasks[side], r, fresh, args.cached_only)
            runs[side].append(out)
            log(f"{config}/{cls} round {r + 1} {side}: {describe(out)}")
    return summarise(config, cls, n_it, npd, runs)


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    pythons = {"ours": sys.executable, "ref": ensure_refvenv()}
    log("preparing data, weights and archives (cached)")
    prep = run_child(pythons["ours"], "ours", {"task": "prepare"})
    if "error" in prep:
        raise SystemExit(f"preparing data failed: {prep['error']}")
    prep_ref = run_child(pythons["ref"], "ref", {"task": "prepare"})
    if "error" in prep_ref:
        log(f"reference writer failed: {prep_ref['error']}")

    agreement = None
    if not args.no_agreement:
        log("agreement check")
        agreement = compare(
            *(
                cached_child(pythons[s], s, {"task": "agree"}, 0, args.fresh)
                for s in ("ours", "ref")
            )
        )
    wanted = None if args.classes == "all" else set(args.classes.split(","))
    rows = [
        measure(args, pythons, config, cls)
        for config in args.configs.split(",")
        for cls in CONFIGS[config][2]
        if not wanted or cls in wanted
    ]
    result = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=machine(),
        repeats=args.repeats,
        large_repeats=args.large_repeats or args.repeats,
        command=" ".join(sys.argv[1:]),
        iterations=args.iterations,
        large_iterations=args.large_iterations,
        memory_iterations=args.memory_iterations,
        field_memory_iterations=args.field_memory_iterations,
        n_parameters=prep.get("n_parameters"),
        wall_s=round(time.time() - t_start, 1),
        rows=rows,
        agreement=agreement,
        goals=goals(rows),
    )
    print(json.dumps(result, indent=1, default=float))
    if not args.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "versus_reference.json"), "w") as f:
            json.dump(result, f, indent=1, default=float)
        with open(os.path.join(RESULTS, "versus_reference.md"), "w") as f:
            f.write(markdown(result))
        log("wrote benchmarks/results/versus_reference.{json,md}")


if __name__ == "__main__":
    main()
