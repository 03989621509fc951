"""``imnn-stream``: one command, a subcommand per job.

fit, estimate, demo, infer (this package; the fit options are
:class:`~imnn_stream.app.fitting.FitConfig`'s fields) · validate, adopt
(``writers``) · generate (``beam_jobs``). jax is imported only after the device count is known, because
XLA reads ``--xla_force_host_platform_device_count`` once, at start-up.

Errors: a usage mistake (unknown option, bad value) exits 2, bad data (missing
archive or run, wrongly shaped input, refused checkpoint, …) exits 1; either way
one line on stderr, and a traceback only with ``--debug``.

Output: every subcommand takes ``--quiet`` (no progress bars or log messages) and
``--json`` (the result as one JSON object on stdout; everything else, including
what libraries print, goes to stderr meanwhile). A subcommand's function returns
its exit code or ``(exit code, result dict)``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys

from writers.cli import HelpFormatter, add_output_options, emit

__all__ = ["main"]

DESCRIPTION = (
    "Information Maximising Neural Networks on simulation archives. Subcommands: "
    "generate (simulate an archive with Apache Beam), validate and adopt (check or "
    "adopt an archive), fit (fit an IMNN on an archive), estimate (parameter estimates "
    "from a fitted run), infer (the iterative inference loop, posterior and ABC), demo "
    "(the toy problem end to end). Every subcommand takes --quiet and --json; see "
    "imnn-stream SUBCOMMAND --help."
)
EPILOG = (
    "Exit status: 0 on success, 2 for a usage mistake, 1 for bad data (one line on "
    "stderr; --debug shows the traceback)."
)


def _force_host_devices(n: int):
    flag = "--xla_force_host_platform_device_count"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}={n}".strip()


def _log(args):
    """print to stderr, or nothing with --quiet."""
    if args.quiet:
        return lambda *a, **k: None
    return lambda *a, **k: print(*a, **{"flush": True, **k, "file": sys.stderr})


def cmd_fit(args, extra):
    from .fitting import fit_archive, fit_config_from_args

    _, summary = fit_archive(
        args.archive, fit_config_from_args(args), args.out, progress=not args.quiet
    )
    if not args.json:
        print(
            f"fitted {summary['iterations']} iterations; det F = {summary['detF']:.4g} "
            f"(validation set when present); run saved in {args.out}"
        )
    return 0, dict(ok=True, out=args.out, **summary)


def cmd_estimate(args, extra):
    import numpy as np
    from .runs import FittedIMNN, load_inputs

    fitted = FittedIMNN(args.run, trust_code=args.trust_code, allow_pickle=args.trust_pickle)
    if not os.path.exists(args.data) and not str(args.data).startswith(("gs://", "s3://")):
        raise FileNotFoundError(f"{args.data}: no such file or archive")
    est = fitted.get_estimate(load_inputs(args.data))
    if args.out:
        np.save(args.out, est)
    result = {"estimate": np.asarray(est).tolist()}
    if not args.json:  # the estimates are this command's output: JSON either way
        print(json.dumps(result))
    return 0, dict(ok=True, **result)


def _floats(text):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def cmd_infer(args, extra):
    import numpy as np
    from beam_jobs.simulate import SimulatorSpec, load_simulator
    from .fitting import fit_config_from_args
    from .inference import (
        InferenceLoop,
        export_pairs,
        gaussian_posterior,
        rejection_abc,
    )
    from .posterior_plot import plot_posterior
    from .runs import FittedIMNN, load_inputs

    progress = not args.quiet
    config = json.loads(args.simulator_config) if args.simulator_config else None
    loop = InferenceLoop(
        out=args.out,
        simulator=args.simulator,
        target=load_inputs(args.target),
        theta_start=args.theta_start,
        delta_theta=args.delta_theta,
        prior_low=args.prior_low,
        prior_high=args.prior_high,
        simulator_config=config,
        n_s=args.n_s,
        n_d=args.n_d or args.n_s,
        fit=fit_config_from_args(args),
        max_rounds=args.max_rounds,
        tolerance=args.tolerance,
        warm_start=not args.no_warm_start,
        exact_fisher=args.exact_fisher,
        beam_args=extra,
        progress=progress,
    )
    # the loop's log lines: stdout as before, stderr with --json, nowhere with --quiet
    log = _log(args) if (args.json or args.quiet) else print
    rows = loop.run(log=log)
    θ_hat, F, run = loop.final()
    n_target = rows[-1]["n_target"]
    samples = gaussian_posterior(θ_hat, F, n_target=n_target, n_samples=args.posterior_samples)
    np.savez(
        os.path.join(args.out, "gaussian_posterior.npz"),
        samples=samples,
        mean=θ_hat,
        covariance=np.linalg.inv(F * n_target),
    )
    simulator = load_simulator(SimulatorSpec(args.simulator, config))
    fitted = FittedIMNN(run, trust_code=args.trust_code, allow_pickle=args.trust_pickle)
    if args.export:
        export_pairs(
            simulator,
            fitted,
            args.prior_low,
            args.prior_high,
            args.export,
            os.path.join(args.out, "prior_pairs"),
            seed=args.seed + 7,
            progress=progress,
        )
    result = dict(
        rounds=len(rows),
        θ_hat=θ_hat.tolist(),
        σ=np.sqrt(np.diag(np.linalg.inv(F * n_target))).tolist(),
    )
    accepted = None
    if args.abc:
        accepted, _ = rejection_abc(
            simulator,
            fitted,
            loop.target,
            args.prior_low,
            args.prior_high,
            n_draws=args.abc,
            accept=args.abc_accept,
            seed=args.seed + 11,
            progress=progress,
        )
        np.savez(os.path.join(args.out, "abc.npz"), accepted=accepted)
        result.update(abc_mean=accepted.mean(0).tolist(), abc_std=accepted.std(0).tolist())
    plot = os.path.join(args.out, "posterior.png")
    plot_posterior(
        θ_hat, F * n_target, rows, plot, abc=accepted, prior=(args.prior_low, args.prior_high)
    )
    result["posterior_plot"] = plot
    if not args.json:
        print("INFER_RESULT " + json.dumps(result, ensure_ascii=False))
    return 0, dict(ok=True, out=args.out, **result)


def cmd_demo(args, extra):
    from .demo import run_demo
    from .fitting import fit_config_from_args

    log = _log(args) if (args.json or args.quiet) else print
    code, result = run_demo(
        args.out, args.n_s, fit_config_from_args(args), log=log, progress=not args.quiet
    )
    if code == 0 and not args.json:
        print("DEMO_RESULT " + json.dumps(result))
    return code, dict(ok=code == 0, **result)


_TRUST_CODE = "allow the run's package.module:function model spec (imports and runs it)"
_TRUST_PICKLE = "read a 0.1.0 run folder (imnn.pkl; unpickling can run code)"


def _subcommand(sub, name, help, description, **kw):
    return sub.add_parser(
        name, help=help, description=description, formatter_class=HelpFormatter, **kw
    )


def build_parser():
    from . import demo, inference
    from .fitting import add_fit_options

    parser = argparse.ArgumentParser(
        prog="imnn-stream",
        description=DESCRIPTION,
        epilog=EPILOG,
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (anywhere on the command line)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = _subcommand(
        sub,
        "fit",
        "fit a streaming IMNN on an archive",
        "Fit a streaming IMNN (DatasetNumericalGradientIMNN or DatasetGradientIMNN, "
        "from the archive's mode) on a numerical or gradient archive and write the run "
        "folder OUT (config.json, imnn.npz, summary.json, history.png). Checkpoints "
        "(OUT/checkpoint) only with --checkpoint-every; --resume continues from them and "
        "takes over the lock of a killed fit on this host.",
    )
    p.add_argument("archive", help="archive root (local path or gs://, s3:// URL)")
    p.add_argument("--out", required=True, help="run folder to write")
    add_fit_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_fit)

    p = _subcommand(
        sub,
        "estimate",
        "θ̂ for target data (.npy or fiducial-only archive)",
        "Quasi-maximum-likelihood estimates θ̂ of target data with a fitted run: one "
        'estimate per input, printed as JSON ({"estimate": [...]}).',
    )
    p.add_argument("run", help="run folder written by fit (or infer's round-NNN/run)")
    p.add_argument(
        "data", help=".npy file (one input or a batch of inputs) or a fiducial-only archive"
    )
    p.add_argument("--out", default=None, help="also save the estimates as .npy")
    p.add_argument("--trust-code", action="store_true", help=_TRUST_CODE)
    p.add_argument("--trust-pickle", action="store_true", help=_TRUST_PICKLE)
    add_output_options(p)
    p.set_defaults(func=cmd_estimate)

    p = _subcommand(
        sub,
        "demo",
        "toy problem end to end: Beam archive → validate → "
        "streaming fit on 2 devices → det F vs 50 → estimate",
        "The toy problem end to end (10 draws from N(μ, Σ) at θ_fid = (0, 1), exact det "
        "F = 50): Beam writes a seed-matched archive, the validator checks it, the "
        "streaming trainer fits it over 2 CPU devices, det F is compared with 50 and θ̂ "
        "given for a target simulated at θ = (0.3, 1.5).",
    )
    p.add_argument("--out", default="imnn-demo", help="folder for archive and run")
    p.add_argument("--n-s", type=int, default=1000, help="simulations per split (n_s = n_d)")
    add_fit_options(p, **demo.FIT_DEFAULTS)
    add_output_options(p)
    p.set_defaults(func=cmd_demo)

    p = _subcommand(
        sub,
        "infer",
        "iterate generate → fit → estimate until θ̂ converges; "
        "then Gaussian posterior, ABC, (θ, summaries) export",
        "The inference loop: simulate an archive around the current estimate, fit, "
        "estimate θ̂ for the target, until θ̂ moves less than --tolerance Fisher standard "
        "deviations; then the Gaussian approximation, rejection ABC and (θ, summaries) "
        "pairs. OUT holds one folder per round, rounds.json/.parquet, path.png and "
        "posterior.png (corner plot). Re-running the same command resumes after the last "
        "finished round. Unknown options go to Beam.",
    )
    p.add_argument("--simulator", default="toy", help="module:function, toy or grf")
    p.add_argument(
        "--simulator-config", default=None, help="JSON object of a simulator factory's arguments"
    )
    p.add_argument("--target", required=True, help=".npy (one input or n realisations) or archive")
    p.add_argument(
        "--theta-start", type=_floats, required=True, help="first fiducial θ, comma-separated"
    )
    p.add_argument(
        "--delta-theta",
        type=_floats,
        required=True,
        help="finite-difference widths δθ, comma-separated",
    )
    p.add_argument("--prior-low", type=_floats, required=True, help="lower corner of the prior box")
    p.add_argument(
        "--prior-high", type=_floats, required=True, help="upper corner of the prior box"
    )
    p.add_argument("--n-s", type=int, default=1000, help="fiducial simulations per round")
    p.add_argument(
        "--n-d", type=int, default=None, help="derivative simulations per round (default: n_s)"
    )
    p.add_argument("--max-rounds", type=int, default=5, help="rounds at most")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="stop when every |θ̂ − θ_fid| < tolerance × Fisher σ",
    )
    p.add_argument(
        "--no-warm-start",
        action="store_true",
        help="initialise every round's network afresh (default: the previous round's weights)",
    )
    p.add_argument(
        "--exact-fisher",
        default=None,
        help="module:function giving the exact Fisher matrix F(θ), when known: rounds "
        "report det F / det F_exact (default: the simulator's own; toy, grf and "
        "lognormal have one)",
    )
    p.add_argument(
        "--posterior-samples",
        type=int,
        default=10000,
        help="samples of the Gaussian approximation saved in gaussian_posterior.npz",
    )
    p.add_argument("--abc", type=int, default=0, help="rejection-ABC prior draws (0: none)")
    p.add_argument("--abc-accept", type=float, default=0.02, help="fraction of ABC draws accepted")
    p.add_argument("--export", type=int, default=0, help="(θ, summaries) pairs to export")
    p.add_argument("--out", required=True, help="folder of the loop (resumed when it exists)")
    add_fit_options(p, **inference.FIT_DEFAULTS)
    add_output_options(p)
    p.set_defaults(func=cmd_infer)

    from writers.cli import register as register_writers

    register_writers(sub)
    try:
        from beam_jobs.cli import register as register_beam
    except ImportError:  # pragma: no cover - beam_jobs is part of this distribution
        pass
    else:
        register_beam(sub)
    for p in sub.choices.values():  # also the writers' and beam_jobs' subcommands
        p.allow_abbrev = False
    return parser


@contextlib.contextmanager
def _stdout_to_stderr(active):
    """With --json: whatever the command (or a library, or a worker process) writes
    to stdout goes to stderr, so that stdout holds the result object only."""
    if not active:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # pragma: no cover - no file descriptors (embedded interpreters)
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imnn-stream")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (KeyError, TypeError, AttributeError, IndexError, RuntimeError)) and not (
        type(e).__module__.startswith(("writers", "imnn_stream", "beam_jobs"))
    ):
        text = f"{type(e).__name__}: {text}"
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    # the subcommands' modules import jax, so the device count is read first
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--devices", default="2")
    try:
        devices = int(pre.parse_known_args(argv)[0].devices)
    except (ValueError, SystemExit):
        devices = 2  # the real parser reports it
    _force_host_devices(max(devices, os.cpu_count() or 1, 2))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("generate", "infer"):
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    as_json = getattr(args, "json", False)
    try:
        takes_extra = len(inspect.signature(args.func).parameters) > 1
        with _stdout_to_stderr(as_json):
            out = args.func(args, extra) if takes_extra else args.func(args)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as e:  # every other failure: one line, no traceback
        if debug:
            raise
        line = _one_line(e)
        print(f"imnn-stream {args.command}: error: {line}", file=sys.stderr)
        if as_json:
            print(json.dumps({"ok": False, "error": line}, ensure_ascii=False))
        return 1
    return emit(args, out)


if __name__ == "__main__":
    sys.exit(main())
