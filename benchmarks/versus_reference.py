"""imnn_stream against the published reference implementation (`imnn` 0.3.2), side by side.

    .venv/bin/python benchmarks/versus_reference.py [--quick] [--repeats 3] [--iterations 10]
                                                    [--configs toy,field,large] [--no-agreement]

The reference needs an old stack (Python 3.9, jax 0.4.13, TensorFlow 2.13): it is
installed once into its own virtualenv, ``~/.cache/imnn_stream/refvenv`` (override
with IMNN_REFVENV), from the exact pins in ``/work/shared/reference/requirements-py39.txt``
(override with IMNN_REF_REQUIREMENTS). It is never a dependency of the project and
nothing of it lives in the repository tree.

This one file runs in three roles: the parent (our venv) prepares data and
orchestrates; ``--child ours`` (our venv) and ``--child ref`` (the reference venv,
so the file stays Python 3.9 compatible) each measure one configuration in a fresh
process. For every configuration the two sides alternate A B A B for ``--repeats``
rounds; the figures are medians over rounds.

Per measurement (same data, same initial weights, same optimiser — adam(1e-3) of
jax.example_libraries on both sides — λ = 10, ϵ = 0.1, validation set of the same
size): construct, ``fit`` 1 iteration (compiles), ``fit`` 1 iteration again (the
cost of a repeated call), ``fit`` N iterations. Then

* s/it      = (t(fit N) − t(fit 1, second)) / (N − 1)
* compile   = t(fit 1, first) − s/it
* refit     = t(fit 1, second) − s/it     (what a repeated ``fit`` call costs)
* peak RSS  = ru_maxrss of the child process (includes the interpreter and
              its imports: TensorFlow on the reference side, for its writer/readers)
* val det F = validation det F after the 2 + N iterations.

Configurations (2 XLA CPU devices, ``--xla_force_host_platform_device_count=2``):

* toy   — 10 draws of N(μ, Σ), θ = (0, 1), δθ = (0.1, 0.1), n_s = n_d = 1000,
          MLP 10→128→128→2 (LeakyReLU), aggregated/dataset n_per_device = 250;
* field — 32×32 Gaussian random field, θ = (A, B) = (1, 2), δθ = (0.1, 0.1),
          n_s = n_d = 500, CNN Conv3×3/2(8)→Conv3×3/2(16)→Dense(64)→Dense(2), 250 per device;
* large — the field with Conv(32)→Conv(64)→Dense(256)→Dense(2) (1.07 M parameters),
          aggregated and dataset classes only, 50 per device.

The data are generated once by our simulators (in our venv) and handed to both
sides as .npy; dataset classes read TFRecords — the reference from files written
by its own ``imnn.TFRecords`` writer, read with tf.data as its documentation
prescribes, ours from an archive written by ``writers.archive.write_arrays``.

The agreement check feeds identical weights and data (.npz) to both sides and
compares loss, Fisher matrix and (where the reference's two-pass gradient is
exercised) the loss gradient.

Outputs: JSON on stdout and in ``benchmarks/results/versus_reference.json``, a
Markdown table in ``benchmarks/results/versus_reference.md``.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "imnn_stream")
REFVENV = os.environ.get("IMNN_REFVENV", os.path.join(CACHE, "refvenv"))
REQUIREMENTS = os.environ.get("IMNN_REF_REQUIREMENTS",
                              "/work/shared/reference/requirements-py39.txt")
WORK = os.path.join(CACHE, "versus_reference")
RESULTS = os.path.join(HERE, "results")

θ_FID = {"toy": (0.0, 1.0), "field": (1.0, 2.0)}
δθ = (0.1, 0.1)
λ, ϵ = 10.0, 0.1
PROBLEMS = {  # problem -> n (= n_s = n_d), input shape
    "toy": (1000, (10,)),
    "field": (500, (32, 32)),
}
NETWORKS = {  # name -> (kind, arguments)
    "mlp": ("mlp", dict(hidden=(128, 128))),
    "cnn": ("cnn", dict(channels=(8, 16), dense=64)),
    "cnn_large": ("cnn", dict(channels=(32, 64), dense=256)),
}
ALL_CLASSES = ("NumericalGradientIMNN", "GradientIMNN", "AggregatedNumericalGradientIMNN",
               "DatasetNumericalGradientIMNN", "DatasetGradientIMNN")
CONFIGS = {  # name -> (problem, network, classes, n_per_device)
    "toy": ("toy", "mlp", ALL_CLASSES, 250),
    "field": ("field", "cnn", ALL_CLASSES, 250),
    "large": ("field", "cnn_large", ("AggregatedNumericalGradientIMNN",
                                     "DatasetNumericalGradientIMNN", "DatasetGradientIMNN"), 50),
}
STREAMING = ("AggregatedNumericalGradientIMNN", "DatasetNumericalGradientIMNN",
             "DatasetGradientIMNN")


def child_env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYTHONPATH", None)
    return env


# =============================================================================
# parent
# =============================================================================

def ensure_refvenv(log):
    """Create the reference virtualenv once (cached); return its python."""
    python = os.path.join(REFVENV, "bin", "python")
    marker = os.path.join(REFVENV, ".imnn_stream_ready")
    if os.path.exists(marker):
        return python
    os.makedirs(os.path.dirname(REFVENV), exist_ok=True)
    log(f"setting up the reference in {REFVENV} (once; a few minutes)")
    if not os.path.exists(python):
        env = dict(os.environ, PYENV_VERSION="3.9.18")
        subprocess.run(["python3.9", "-m", "venv", REFVENV], check=True, env=env)
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True)
    subprocess.run([python, "-c", "import jax, tensorflow, importlib.util as u; assert u.find_spec('imnn')"],
                   check=True, env=child_env())
    open(marker, "w").write(REQUIREMENTS + "\n")
    return python


def run_child(python, args, timeout=1200):
    """Run this file as a child; return its JSON result (last stdout line)."""
    cmd = [python, os.path.abspath(__file__)] + args
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["(no stderr)"])
        # the last line naming an exception, else the last line
        msg = next((ln for ln in reversed(err) if "Error" in ln or "Exception" in ln), err[-1])
        return {"error": msg.strip()[:300], "returncode": p.returncode}
    return json.loads(lines[-1])


def cached_child(python, side, task, round_, fresh, cached_only=False):
    """run_child with a per-measurement cache (so an interrupted run resumes)."""
    import hashlib
    key = hashlib.sha1(json.dumps([side, task, round_], sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(WORK, "runs", key + ".json")
    if not fresh and os.path.exists(path):
        return json.load(open(path))
    if cached_only:
        return {"error": "not measured in this run (--cached-only)", "skipped": True}
    out = run_child(python, ["--child", side, "--task", json.dumps(task)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    json.dump(out, open(path, "w"))
    return out


def median(values):
    v = sorted(values)
    n = len(v)
    return None if n == 0 else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=["ours", "ref"])
    p.add_argument("--task")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 iterations")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--memory-iterations", type=int, default=100,
                   help="timed iterations of the in-memory classes")
    p.add_argument("--large-iterations", type=int, default=3)
    p.add_argument("--large-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--configs", default="toy,field,large")
    p.add_argument("--classes", default="all")
    p.add_argument("--no-agreement", action="store_true")
    p.add_argument("--cached-only", action="store_true",
                   help="tabulate cached measurements only (measure nothing new)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore measurements cached in ~/.cache/imnn_stream/versus_reference/runs")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results")
    args = p.parse_args()
    if args.child:
        return child(args.child, json.loads(args.task))
    if args.quick:
        args.repeats, args.iterations, args.large_iterations, args.memory_iterations = 1, 3, 2, 20

    def log(msg):
        print(f"[versus_reference {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    t_start = time.time()
    ours = sys.executable
    ref = ensure_refvenv(log)
    log("preparing data, weights and archives (cached)")
    prep = run_child(ours, ["--child", "ours", "--task", json.dumps({"task": "prepare"})])
    if "error" in prep:
        raise SystemExit(f"preparing data failed: {prep['error']}")
    prep_ref = run_child(ref, ["--child", "ref", "--task", json.dumps({"task": "prepare"})])
    if "error" in prep_ref:
        log(f"reference writer failed: {prep_ref['error']}")

    agreement = None
    if not args.no_agreement:
        log("agreement check")
        a_ours = cached_child(ours, "ours", {"task": "agree"}, 0, args.fresh)
        a_ref = cached_child(ref, "ref", {"task": "agree"}, 0, args.fresh)
        agreement = compare(a_ours, a_ref)
    rows = []
    wanted = None if args.classes == "all" else set(args.classes.split(","))
    for config in args.configs.split(","):
        problem, network, classes, npd = CONFIGS[config]
        for cls in classes:
            if wanted and cls not in wanted:
                continue
            # in-memory iterations are cheap while the reference recompiles (seconds, noisy)
            # on every fit call: time many of them so that the difference is meaningful
            n_it = (args.large_iterations if config == "large" else
                    args.iterations if cls in STREAMING else args.memory_iterations)
            task = dict(task="bench", problem=problem, network=network, cls=cls,
                        n_per_device=npd, iterations=n_it)
            runs = {"ref": [], "ours": []}
            repeats = (args.large_repeats or args.repeats) if config == "large" else args.repeats
            for r in range(repeats):
                for side, python in (("ref", ref), ("ours", ours)):
                    out = cached_child(python, side, task, r, args.fresh, args.cached_only)
                    runs[side].append(out)
                    log(f"{config}/{cls} round {r + 1} {side}: "
                        + (out["error"] if "error" in out else
                           f"{out['s_per_it']:.4g} s/it, compile {out['compile_s']:.3g} s, "
                           f"refit {out['refit_s']:.3g} s, {out['peak_rss_mib']:.0f} MiB, "
                           f"val det F {out['val_detF']:.4g}"))
                if any("error" in o for o in runs["ref"]):
                    # a broken reference class fails the same way every time: measure ours only
                    for r2 in range(r + 1, repeats):
                        runs["ours"].append(cached_child(ours, "ours", task, r2, args.fresh, args.cached_only))
                    break
            rows.append(summarise(config, cls, n_it, npd, runs))
    result = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), repeats=args.repeats,
                  large_repeats=args.large_repeats or args.repeats, command=" ".join(sys.argv[1:]),
                  iterations=args.iterations, large_iterations=args.large_iterations,
                  memory_iterations=args.memory_iterations,
                  wall_s=round(time.time() - t_start, 1), rows=rows, agreement=agreement,
                  goals=goals(rows))
    print(json.dumps(result, indent=1, default=float))
    if not args.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "versus_reference.json"), "w") as f:
            json.dump(result, f, indent=1, default=float)
        with open(os.path.join(RESULTS, "versus_reference.md"), "w") as f:
            f.write(markdown(result))
        log("wrote benchmarks/results/versus_reference.{json,md}")


FIGURES = ("s_per_it", "compile_s", "refit_s", "peak_rss_mib", "val_detF")


def summarise(config, cls, n_it, npd, runs):
    row = dict(config=config, cls=cls, iterations=n_it, n_per_device=npd)
    for side in ("ref", "ours"):
        good = [o for o in runs[side] if "error" not in o]
        errors = [o["error"] for o in runs[side] if "error" in o]
        row[side] = {k: median([o[k] for o in good]) for k in FIGURES} if good else None
        if errors:
            row[side + "_error"] = errors[0]
        if good:
            row[side]["runs"] = len(good)
    if row["ref"] and row["ours"]:
        row["speedup"] = row["ref"]["s_per_it"] / row["ours"]["s_per_it"]
        row["memory_ratio"] = row["ours"]["peak_rss_mib"] / row["ref"]["peak_rss_mib"]
    return row


def goals(rows):
    """The issue's goals, each True/False/None (None: not measurable)."""
    def ok(rs, test):
        vals = [test(r) for r in rs if r.get("speedup") is not None]
        return None if not vals else all(vals)

    stream = [r for r in rows if r["cls"] in STREAMING]
    return {
        "streaming_and_aggregated_20x": ok([r for r in stream if r["config"] != "large"],
                                           lambda r: r["speedup"] >= 20),
        "large_network_50x": ok([r for r in stream if r["config"] == "large"],
                                lambda r: r["speedup"] >= 50),
        "in_memory_no_slower": ok([r for r in rows if r["cls"] not in STREAMING],
                                  lambda r: r["speedup"] >= 1),
        "refit_no_recompilation": (None if not rows else all(
            r["ours"]["refit_s"] < 0.1 + 0.5 * r["ours"]["s_per_it"] for r in rows if r["ours"])),
        "streaming_memory_not_higher": ok([r for r in rows if r["cls"].startswith("Dataset")],
                                          lambda r: r["memory_ratio"] <= 1),
    }


def compare(ours, ref):
    """Relative differences of loss, F and gradient between the two sides, per case."""
    if "error" in ours:
        return {"error": "ours: " + ours["error"]}
    if "error" in ref:
        return {"error": "reference: " + ref["error"]}
    import numpy as np
    out = {}
    for case, o in ours["cases"].items():
        r = ref["cases"].get(case, {"error": "not run"})
        entry = {"note": o.get("note", "")}
        if "error" in r:
            entry["reference_error"] = r["error"]
        else:
            for k in ("loss", "F", "grad"):
                if k in o and k in r:
                    if k == "grad":
                        a, b = (np.concatenate([np.ravel(x) for x in v]) for v in (o[k], r[k]))
                    else:
                        a, b = np.asarray(o[k], float), np.asarray(r[k], float)
                    if a.shape != b.shape:
                        entry[k + "_rel"] = None
                        continue
                    entry[k + "_rel"] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
            entry["detF_ours"], entry["detF_ref"] = o.get("detF"), r.get("detF")
        if "error" in o:
            entry["ours_error"] = o["error"]
        for k in ("grad_vs_in_memory_rel",):
            if k in r:
                entry["ref_" + k] = r[k]
            if k in o:
                entry["ours_" + k] = o[k]
        out[case] = entry
    return out


def _fmt(x, digits=3):
    if x is None:
        return "—"
    if isinstance(x, float) and (abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3)):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


NOTES = {
    ("field", "GradientIMNN"): "reference transposes all axes of dsim/dθ: its det F is wrong for square 2-D inputs (error for non-square)",
    ("field", "DatasetGradientIMNN"): "same transposition fault as the reference's GradientIMNN",
    ("large", "DatasetGradientIMNN"): "same transposition fault as the reference's GradientIMNN",
}


def markdown(res):
    out = [f"# imnn_stream versus the reference `imnn` 0.3.2\n",
           f"Measured {res['date']} on {res['machine']}; 2 XLA CPU devices; medians of "
           f"{res['repeats']} alternating rounds (reference, ours, reference, ours, …), each side in "
           f"its own process. Timed fits of {res['iterations']} iterations (two-pass classes), "
           f"{res['memory_iterations']} (in-memory classes) and {res['large_iterations']} (large network), "
           f"after two 1-iteration fits; λ = 10, ϵ = 0.1, adam(1e-3), identical initial "
           f"weights and data on both sides. "
           + ("Tabulated from the cached measurements of an earlier run (--cached-only)."
              if "--cached-only" in res["command"] else f"Whole run: {res['wall_s'] / 60:.1f} min.")
           + "\n",
           f"Reproduce: `.venv/bin/python benchmarks/versus_reference.py "
           f"{res['command'].replace(' --cached-only', '')}` (sets up "
           "the reference once in `~/.cache/imnn_stream/refvenv`). Large network: "
           f"{res['large_repeats']} round(s).\n",
           "| config | class | ref s/it | ours s/it | speed-up | ref compile s | ours compile s "
           "| ref repeated fit s | ours repeated fit s | ref peak MiB | ours peak MiB "
           "| ref val det F | ours val det F | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        a, b = r["ref"] or {}, r["ours"] or {}
        note = NOTES.get((r["config"], r["cls"]), "")
        if r.get("ref_error") and not r.get("ref") and "--cached-only" in r["ref_error"]:
            note = "not measured (time budget of this run)"
        elif r.get("ref_error"):
            note = "reference fails: " + r["ref_error"][:160]
        if r.get("ours_error") and "--cached-only" not in r["ours_error"]:
            note += " ours fails: " + r["ours_error"][:160]
        sp = r.get("speedup")
        out.append("| " + " | ".join([
            r["config"], r["cls"], _fmt(a.get("s_per_it")), _fmt(b.get("s_per_it")),
            "—" if sp is None else f"{sp:.1f}×", _fmt(a.get("compile_s")), _fmt(b.get("compile_s")),
            _fmt(a.get("refit_s")), _fmt(b.get("refit_s")), _fmt(a.get("peak_rss_mib"), 4),
            _fmt(b.get("peak_rss_mib"), 4), _fmt(a.get("val_detF"), 4), _fmt(b.get("val_detF"), 4),
            note.replace("|", "/")]) + " |")
    out.append("\nGoals: " + ", ".join(f"{k}: {'met' if v else ('not met' if v is False else 'n/a')}"
                                       for k, v in res["goals"].items()) + "\n")
    ag = res.get("agreement")
    if ag:
        out.append("## Numerical agreement (identical weights and data)\n")
        if "error" in ag:
            out.append(f"Not run: {ag['error']}\n")
        else:
            out.append("| case | loss rel. diff | F rel. diff | gradient rel. diff | det F ours | det F ref | note |")
            out.append("|---|---|---|---|---|---|---|")
            for case, e in ag.items():
                note = e.get("note", "")
                if "reference_error" in e:
                    note += "; reference: " + e["reference_error"][:160]
                if "ref_grad_vs_in_memory_rel" in e:
                    note += (f"; reference's own two-pass gradient vs its in-memory gradient: "
                             f"{_fmt(e['ref_grad_vs_in_memory_rel'])} rel., ours: "
                             f"{_fmt(e.get('ours_grad_vs_in_memory_rel'))}")
                out.append("| " + " | ".join([
                    case, _fmt(e.get("loss_rel")), _fmt(e.get("F_rel")), _fmt(e.get("grad_rel")),
                    _fmt(e.get("detF_ours"), 6), _fmt(e.get("detF_ref"), 6), note.replace("|", "/")]) + " |")
            out.append("")
    return "\n".join(out) + "\n"


# =============================================================================
# children (shared helpers; must run on Python 3.9 with the reference's stack)
# =============================================================================

def data_path(name):
    return os.path.join(WORK, name)


def load_problem(problem, validation=False):
    import numpy as np
    pre = f"{problem}_{'val_' if validation else ''}"
    return tuple(np.load(data_path(pre + k + ".npy")) for k in ("fid", "num", "grad"))


def load_weights(network, problem):
    """Initial weights (our layout: list of (W, b)) from the .npz written by `prepare`."""
    import numpy as np
    z = np.load(data_path(f"weights_{network}_{problem}.npz"))
    n = len(z.files) // 2
    return [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(side, task):
    import warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, ROOT) if side == "ours" else None
    impl = OursSide() if side == "ours" else RefSide()
    fn = getattr(impl, task["task"])
    try:
        out = fn(task)
    except Exception as e:  # report one line, the parent prints it in the table
        import traceback
        traceback.print_exc()
        print(json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}))
        sys.exit(1)
    sys.stdout.flush()
    print(json.dumps(out, default=float))


def timed_fits(imnn, n_it, val_detF):
    """fit 1 (compiles), fit 1 again, fit n_it; the figures of the docstring."""
    kw = dict(patience=1000, min_iterations=1000, print_rate=None)

    def fit(n):
        t0 = time.perf_counter()
        imnn.fit(λ, ϵ, max_iterations=n, **kw)
        return time.perf_counter() - t0

    t1 = fit(1)
    t2 = fit(1)
    t3 = fit(n_it)
    per = (t3 - t2) / max(n_it - 1, 1)
    return dict(s_per_it=per, compile_s=t1 - per, refit_s=t2 - per, first_fit_s=t1,
                second_fit_s=t2, n_fit_s=t3, peak_rss_mib=peak_rss_mib(), val_detF=val_detF(imnn))


class OursSide:
    """Our venv: data generation, our archives, our trainers."""

    def model(self, network):
        import imnn_stream as im
        kind, kw = NETWORKS[network]
        return getattr(im.models, kind)(n_summaries=2, **kw)

    def prepare(self, task):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from beam_jobs.simulators import gaussian_random_field, gaussian_toy
        from writers.archive import write_arrays

        os.makedirs(WORK, exist_ok=True)
        marker = data_path("prepared_ours.json")
        if os.path.exists(marker):
            return json.load(open(marker))
        sims = {"toy": gaussian_toy, "field": gaussian_random_field(32)}
        for problem, (n, shape) in PROBLEMS.items():
            sim, θ = sims[problem], np.asarray(θ_FID[problem], np.float32)
            d = np.asarray(δθ, np.float32)
            for val, seed in ((False, 0), (True, 1)):
                keys = jax.random.split(jax.random.PRNGKey(seed), n)
                fid = jax.vmap(lambda k: sim(k, θ))(keys)
                pm = [jax.vmap(lambda k: jax.vmap(lambda q: sim(k, q))(θ + s * jnp.diag(d) / 2))(keys)
                      for s in (-1, 1)]
                grad = jax.vmap(lambda k: jax.jacfwd(sim, argnums=1)(k, θ))(keys)
                pre = f"{problem}_{'val_' if val else ''}"
                np.save(data_path(pre + "fid.npy"), np.asarray(fid, np.float32))
                np.save(data_path(pre + "num.npy"), np.asarray(jnp.stack(pm, 1), np.float32))
                np.save(data_path(pre + "grad.npy"), np.asarray(grad, np.float32))
            (f, nu, g), (vf, vn, vg) = load_problem(problem), load_problem(problem, True)
            for mode, kw in (("numerical", dict(derivative=nu, validation_derivative=vn)),
                             ("gradient", dict(gradient=g, validation_gradient=vg))):
                write_arrays(data_path(f"archive_{problem}_{mode}"), mode, θ.tolist(), list(δθ),
                             fiducial=f, validation_fiducial=vf, n_devices=2,
                             records_per_shard=max(n // 2, 1), overwrite=True, **kw)
        shapes = {"mlp": ["toy"], "cnn": ["field", "field_wide"], "cnn_large": ["field"]}
        for network, problems in shapes.items():
            init, _ = self.model(network)
            for problem in problems:
                shape = (32, 16) if problem == "field_wide" else PROBLEMS[problem][1]
                _, w = init(jax.random.PRNGKey(0), shape)
                np.savez(data_path(f"weights_{network}_{problem}.npz"),
                         **{f"{k}{i}": np.asarray(a) for i, (W, b) in enumerate(w)
                            for k, a in (("W", W), ("b", b))})
        info = dict(n_parameters={net: int(sum(np.load(data_path(f"weights_{net}_{pr[0]}.npz"))[k].size
                                               for k in np.load(data_path(f"weights_{net}_{pr[0]}.npz")).files))
                                  for net, pr in shapes.items()})
        json.dump(info, open(marker, "w"))
        return info

    def optimiser(self):
        from jax.example_libraries import optimizers
        return optimizers.adam(1e-3)

    def build(self, cls, problem, network, npd, w, n_s=None, n_d=None, data=None, shape=None):
        import jax
        import numpy as np
        import imnn_stream as im
        n, input_shape = PROBLEMS[problem]
        input_shape = shape or input_shape
        n_s, n_d = n_s or n, n_d or n
        init, update, get_params = opt = self.optimiser()
        state = init(jax.tree_util.tree_map(np.asarray, w))
        model = self.model(network)
        cpu = jax.devices("cpu")
        agg = dict(host=cpu[0], devices=cpu[:2], n_per_device=npd)
        if cls.startswith("Dataset"):
            mode = "numerical" if "Numerical" in cls else "gradient"
            return getattr(im, cls).from_archive(
                data_path(f"archive_{problem}_{mode}"), model=model, optimiser=opt,
                key_or_state=state, **agg)
        (f, nu, g), (vf, vn, vg) = data or (load_problem(problem), load_problem(problem, True))
        common = dict(n_s=n_s, n_d=n_d, n_params=2, n_summaries=2, input_shape=input_shape,
                      θ_fid=np.asarray(θ_FID[problem], np.float32), model=model, optimiser=opt,
                      key_or_state=state)
        if "Numerical" in cls:
            kw = dict(fiducial=f[:n_s], derivative=nu[:n_d], δθ=np.asarray(δθ, np.float32),
                      validation_fiducial=vf[:n_s], validation_derivative=vn[:n_d])
        else:
            kw = dict(fiducial=f[:n_s], derivative=g[:n_d], validation_fiducial=vf[:n_s],
                      validation_derivative=vg[:n_d])
        if cls.startswith("Aggregated"):
            kw.update(agg)
        return getattr(im, cls)(**common, **kw)

    def bench(self, task):
        w = load_weights(task["network"], task["problem"])
        imnn = self.build(task["cls"], task["problem"], task["network"], task["n_per_device"], w)
        return timed_fits(imnn, task["iterations"], lambda m: float(m.history["val_detF"][-1]))

    def agree(self, task):
        import jax
        import numpy as np
        from imnn_stream import fisher
        α = fisher.alpha(λ, ϵ)
        cases = {}
        for case, spec in AGREEMENT_CASES.items():
            cls, problem, network, npd, n_s, n_d, shape = spec[:7]
            entry = {"note": spec[7]}
            try:
                wname = "field_wide" if shape == (32, 16) else problem
                w = load_weights(network, wname)
                data = None
                if shape == (32, 16):
                    (f, nu, g), (vf, vn, vg) = load_problem(problem), load_problem(problem, True)
                    data = ((f[:, :, :16], nu[..., :16], g[:, :, :16]),
                            (vf[:, :, :16], vn[..., :16], vg[:, :, :16]))
                imnn = self.build(cls, problem, network, npd, w, n_s, n_d, data, shape)
                x, dx = imnn.get_summaries(w=w)
                loss, st = fisher.loss(jax.numpy.asarray(x), jax.numpy.asarray(dx), λ, α)
                g, _ = imnn.loss_gradient(λ, ϵ, w=w)
                entry.update(loss=float(loss), F=np.asarray(st["F"]).tolist(),
                             detF=float(np.linalg.det(np.asarray(st["F"], float))),
                             grad=[np.asarray(a).ravel().tolist() for a in jax.tree_util.tree_leaves(g)])
                if len(spec) > 8:  # the same problem in memory, for the two-pass gradient check
                    ref_imnn = self.build(spec[8], problem, network, npd, w, n_s, n_d, data, shape)
                    g0, _ = ref_imnn.loss_gradient(λ, ϵ, w=w)
                    entry["grad_vs_in_memory_rel"] = tree_rel(g, g0)
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            cases[case] = entry
        return {"cases": cases}


def tree_rel(a, b):
    import jax
    import numpy as np
    la = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    lb = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(b)])
    return float(np.max(np.abs(la - lb)) / max(np.max(np.abs(lb)), 1e-30))


# case -> (class, problem, network, n_per_device, n_s, n_d, input shape, note[, in-memory twin])
AGREEMENT_CASES = {
    "toy NumericalGradientIMNN": ("NumericalGradientIMNN", "toy", "mlp", 250, 1000, 1000, None,
                                  "in memory, finite differences"),
    "toy GradientIMNN": ("GradientIMNN", "toy", "mlp", 250, 1000, 1000, None, "in memory, chain rule"),
    "toy AggregatedNumericalGradientIMNN": ("AggregatedNumericalGradientIMNN", "toy", "mlp", 250,
                                            1000, 1000, None, "2 devices × 250, two passes",
                                            "NumericalGradientIMNN"),
    "toy AggregatedGradientIMNN n_s=1000 n_d=500": (
        "AggregatedGradientIMNN", "toy", "mlp", 125, 1000, 500, None,
        "2 devices × 125, n_s > n_d: the reference pairs pass-2 cotangents with the wrong devices' samples",
        "GradientIMNN"),
    "field 32×32 GradientIMNN": ("GradientIMNN", "field", "cnn", 250, 500, 500, None,
                                 "square 2-D input: the reference transposes dsim/dθ's input axes (silently wrong)"),
    "field 32×16 GradientIMNN": ("GradientIMNN", "field", "cnn", 250, 500, 500, (32, 16),
                                 "non-square 2-D input: the reference's transposition fails"),
}


def install_jac_shim():
    """Make imnn 0.3.2 importable on its pinned stack (jax 0.4.13).

    `imnn.utils.jac` (0.3.2) imports private helpers that jax 0.4.13 no longer has
    (``jax._src.api._check_callable`` …), so ``import imnn`` fails on the pinned stack.
    Register, before importing imnn, a module with the same four functions and the same
    semantics (one forward pass, vmapped pullbacks / pushforwards) built on public jax."""
    import types
    import jax

    def value_and_jacrev(fun, argnums=0, has_aux=False, holomorphic=False, allow_int=False):
        def f(*args, **kwargs):
            def g(*a):
                out = fun(*a, **kwargs)
                return (out[0], out) if has_aux else (out, out)
            jac, val = jax.jacrev(g, argnums, has_aux=True, holomorphic=holomorphic,
                                  allow_int=allow_int)(*args)
            return val, jac
        return f

    def jacrev(fun, argnums=0, has_aux=False, holomorphic=False, allow_int=False):
        return jax.jacrev(fun, argnums, has_aux=has_aux, holomorphic=holomorphic,
                          allow_int=allow_int)

    def value_and_jacfwd(fun, argnums=0, holomorphic=False):
        def f(*args, **kwargs):
            def g(*a):
                out = fun(*a, **kwargs)
                return out, out
            jac, val = jax.jacfwd(g, argnums, has_aux=True, holomorphic=holomorphic)(*args)
            return val, jac
        return f

    def jacfwd(fun, argnums=0, holomorphic=False):
        return jax.jacfwd(fun, argnums, holomorphic=holomorphic)

    shim = types.ModuleType("imnn.utils.jac")
    shim.value_and_jacrev, shim.jacrev = value_and_jacrev, jacrev
    shim.value_and_jacfwd, shim.jacfwd = value_and_jacfwd, jacfwd
    sys.modules["imnn.utils.jac"] = shim
    # its argument checks test isinstance(x, jax.interpreters.xla.device_array), a type
    # jax 0.4.13 no longer has: give it the current array type
    import jax.interpreters.xla
    if not hasattr(jax.interpreters.xla, "device_array"):
        jax.interpreters.xla.device_array = jax.Array
    # …and it reads jax.experimental.optimizers (moved to jax.example_libraries in 0.2.25)
    import jax.experimental
    from jax.example_libraries import optimizers, stax
    for name, mod in (("optimizers", optimizers), ("stax", stax)):
        if not hasattr(jax.experimental, name):
            setattr(jax.experimental, name, mod)
            sys.modules["jax.experimental." + name] = mod
    # …and jax.ops.index_update / jax.ops.index (removed in jax 0.3.2): the `.at[]` forms
    import jax.ops
    import numpy
    if not hasattr(jax.ops, "index_update"):
        jax.ops.index = numpy.index_exp
        jax.ops.index_update = lambda x, idx, y: jax.numpy.asarray(x).at[idx].set(y)


class RefSide:
    """The reference venv (Python 3.9, imnn 0.3.2)."""

    def __init__(self):
        install_jac_shim()

    def model(self, network):
        """The same architecture as imnn_stream.models, with jax.example_libraries.stax."""
        import jax.numpy as jnp
        from jax.example_libraries import stax
        kind, kw = NETWORKS[network]
        if kind == "mlp":
            layers = []
            for h in kw["hidden"]:
                layers += [stax.Dense(h), stax.LeakyRelu]
            return stax.serial(*(layers + [stax.Dense(2)]))  # 1-D inputs: no Flatten needed
        layers = []
        for c in kw["channels"]:
            layers += [stax.Conv(c, (3, 3), (2, 2), "SAME"), stax.LeakyRelu]
        init_inner, apply_inner = stax.serial(
            *layers, stax.Flatten, stax.Dense(kw["dense"]), stax.LeakyRelu, stax.Dense(2))

        def init(rng, input_shape):  # one-channel field float(H, W) (or a batch of them)
            return init_inner(rng, (-1,) + tuple(input_shape) + (1,))

        def apply(w, x, **kw_):
            single = x.ndim == 2
            h = (x[None] if single else x)[..., None]
            out = apply_inner(w, h, **kw_)
            return out[0] if single else out

        return init, apply

    def stax_weights(self, network, w):
        """Our layout (list of (W, b)) -> the stax.serial parameter list of `model`."""
        kind, kw = NETWORKS[network]
        if kind == "mlp":
            return [x for (W, b) in w[:-1] for x in ((W, b), ())] + [tuple(w[-1])]
        n_conv = len(kw["channels"])
        out = []
        for W, b in w[:n_conv]:
            out += [(W, b.reshape(1, 1, 1, -1)), ()]
        out += [(), tuple(w[n_conv]), (), tuple(w[n_conv + 1])]
        return out

    def ours_layout(self, network, tree):
        """stax parameter list -> our layout (for comparing gradients)."""
        import numpy as np
        return [(np.asarray(W), np.asarray(b).reshape(-1)) for layer in tree if len(layer)
                for (W, b) in [layer]]

    def writer_dir(self, problem):
        return data_path(f"ref_tfrecords_{problem}")

    def prepare(self, task):
        """Write the TFRecords with the reference's own writer (imnn.TFRecords), once."""
        import numpy as np
        from imnn import TFRecords
        done = []
        for problem in PROBLEMS:
            d = self.writer_dir(problem)
            if os.path.exists(os.path.join(d, "done")):
                continue
            os.makedirs(d, exist_ok=True)
            for val in (False, True):
                f, nu, g = load_problem(problem, val)
                pre = "validation_" if val else ""
                writer = TFRecords(record_size=150.)
                devnull = open(os.devnull, "w")
                stdout, sys.stdout = sys.stdout, devnull  # the writer prints a line per record
                try:
                    writer.write_record(n_sims=len(f), get_simulation=lambda seed: f[seed],
                                        fiducial=True, directory=d, filename=pre + "fiducial")
                    writer.write_record(n_sims=len(nu), get_simulation=lambda s, dd, p: nu[s, dd, p],
                                        fiducial=False, n_params=2, directory=d,
                                        filename=pre + "derivative")
                    # dsim/dθ records, one per seed, read with writer.derivative_parser
                    writer.write_record(n_sims=len(g), get_simulation=lambda seed: g[seed],
                                        fiducial=True, directory=d, filename=pre + "dsimdθ")
                finally:
                    sys.stdout = stdout
            open(os.path.join(d, "done"), "w").write("ok\n")
            done.append(problem)
        return {"written": done}

    def datasets(self, cls, problem, n, npd, n_devices=2, n_params=2):
        """Per-device numpy iterators exactly as the reference's documentation builds them."""
        import glob
        import tensorflow as tf
        from imnn import TFRecords
        writer = TFRecords()
        writer.input_shape = PROBLEMS[problem][1]  # the parser's hidden state, set by a write
        d = self.writer_dir(problem)

        def files(name):
            return sorted(glob.glob(os.path.join(d, name + "_*.tfrecords")))

        def records(name, parser):
            return tf.data.TFRecordDataset(files(name), num_parallel_reads=1).map(parser)

        out = {}
        for pre in ("", "validation_"):
            if "Numerical" in cls:
                out[pre + "fiducial"] = [
                    records(pre + "fiducial", writer.parser).skip(i * n // n_devices)
                    .take(n // n_devices).batch(npd).repeat().as_numpy_iterator()
                    for i in range(n_devices)]
                m = 2 * n_params * n
                out[pre + "derivative"] = [
                    records(pre + "derivative", writer.parser).skip(i * m // n_devices)
                    .take(m // n_devices).batch(npd).repeat().as_numpy_iterator()
                    for i in range(n_devices)]
            else:
                fid = [records(pre + "fiducial", writer.parser).skip(i * n // n_devices)
                       .take(n // n_devices) for i in range(n_devices)]
                der = [records(pre + "dsimdθ", lambda e: writer.derivative_parser(e, n_params=n_params))
                       .skip(i * n // n_devices).take(n // n_devices) for i in range(n_devices)]
                out[pre + "main"] = [
                    tf.data.Dataset.zip((fid[i], der[i])).take(n // n_devices).batch(npd)
                    .repeat().as_numpy_iterator() for i in range(n_devices)]
                out[pre + "remaining"] = [
                    fid[i].skip(n // n_devices).take(0).batch(npd).repeat().as_numpy_iterator()
                    for i in range(n_devices)]
        return out

    def build(self, cls, problem, network, npd, w, n_s=None, n_d=None, data=None, shape=None):
        import jax
        import numpy as np
        from jax.example_libraries import optimizers
        import imnn
        n, input_shape = PROBLEMS[problem]
        input_shape = shape or input_shape
        n_s, n_d = n_s or n, n_d or n
        opt_init, update, get_params = opt = optimizers.adam(1e-3)
        state = opt_init(self.stax_weights(network, w))
        cpu = jax.devices("cpu")
        agg = dict(host=cpu[0], devices=cpu[:2], n_per_device=npd)
        common = dict(n_s=n_s, n_d=n_d, n_params=2, n_summaries=2, input_shape=input_shape,
                      θ_fid=np.asarray(θ_FID[problem], np.float32), model=self.model(network),
                      optimiser=opt, key_or_state=state)
        Class = getattr(imnn, cls)
        if cls.startswith("Dataset"):
            ds = self.datasets(cls, problem, n, npd)
            if "Numerical" in cls:
                return Class(**common, fiducial=ds["fiducial"], derivative=ds["derivative"],
                             δθ=np.asarray(δθ, np.float32), validation_fiducial=ds["validation_fiducial"],
                             validation_derivative=ds["validation_derivative"], **agg)
            return Class(**common, main=ds["main"], remaining=ds["remaining"],
                         validation_main=ds["validation_main"],
                         validation_remaining=ds["validation_remaining"], **agg)
        (f, nu, g), (vf, vn, vg) = data or (load_problem(problem), load_problem(problem, True))
        if "Numerical" in cls:
            kw = dict(fiducial=f[:n_s], derivative=nu[:n_d], δθ=np.asarray(δθ, np.float32),
                      validation_fiducial=vf[:n_s], validation_derivative=vn[:n_d])
        else:
            kw = dict(fiducial=f[:n_s], derivative=g[:n_d], validation_fiducial=vf[:n_s],
                      validation_derivative=vg[:n_d])
        if cls.startswith("Aggregated"):
            kw.update(agg)
        return Class(**common, **kw)

    def bench(self, task):
        w = load_weights(task["network"], task["problem"])
        imnn = self.build(task["cls"], task["problem"], task["network"], task["n_per_device"], w)
        return timed_fits(imnn, task["iterations"], lambda m: float(m.history["val_detF"][-1]))

    def gradient(self, imnn, w):
        """The reference's loss and gradient at w, through the class's own code path."""
        import jax
        α = imnn.get_α(λ, ϵ)
        if hasattr(imnn, "get_gradient"):  # two-pass (aggregated / dataset)
            x, dx = imnn.get_summaries(w=w)
            dΛ_dx, _ = jax.grad(imnn._calculate_loss, argnums=(0, 1), has_aux=True)(x, dx, λ, α)
            return imnn.get_gradient(dΛ_dx, w)
        return jax.grad(imnn._get_loss, has_aux=True)(w, λ, α)[0]

    def agree(self, task):
        import jax
        import numpy as np
        cases = {}
        for case, spec in AGREEMENT_CASES.items():
            cls, problem, network, npd, n_s, n_d, shape = spec[:7]
            entry = {}
            try:
                wname = "field_wide" if shape == (32, 16) else problem
                w_ours = load_weights(network, wname)
                w = self.stax_weights(network, w_ours)
                data = None
                if shape == (32, 16):
                    (f, nu, g), (vf, vn, vg) = load_problem(problem), load_problem(problem, True)
                    data = ((f[:, :, :16], nu[..., :16], g[:, :, :16]),
                            (vf[:, :, :16], vn[..., :16], vg[:, :, :16]))
                imnn = self.build(cls, problem, network, npd, w_ours, n_s, n_d, data, shape)
                α = imnn.get_α(λ, ϵ)
                x, dx = imnn.get_summaries(w=w)
                loss, (F, *_) = imnn._calculate_loss(x, dx, λ, α)
                grad = self.ours_layout(network, self.gradient(imnn, w))
                entry.update(loss=float(loss), F=np.asarray(F).tolist(),
                             detF=float(np.linalg.det(np.asarray(F, float))),
                             grad=[np.asarray(a).ravel().tolist() for a in jax.tree_util.tree_leaves(grad)])
                if len(spec) > 8:
                    twin = self.build(spec[8], problem, network, npd, w_ours, n_s, n_d, data, shape)
                    g0 = self.ours_layout(network, self.gradient(twin, w))
                    entry["grad_vs_in_memory_rel"] = tree_rel(grad, g0)
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            cases[case] = entry
        return {"cases": cases}


if __name__ == "__main__":
    main()
