"""``imnn-stream``: one command, a subcommand per job.

fit, estimate, demo, infer (this package; the fit options are
:class:`~imnn_stream.app.fitting.FitConfig`'s fields) · validate, adopt
(``writers``) · generate (``beam_jobs``). jax is imported only after the device count is known, because
XLA reads ``--xla_force_host_platform_device_count`` once, at start-up.

Errors: a usage mistake (unknown option, bad value) exits 2, bad data (missing
archive or run, wrongly shaped input, refused checkpoint, …) exits 1; either way
one line on stderr, and a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

__all__ = ["main"]


def _force_host_devices(n: int):
    flag = "--xla_force_host_platform_device_count"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}={n}".strip()


def cmd_fit(args, extra):
    from .fitting import fit_archive, fit_config_from_args

    _, summary = fit_archive(args.archive, fit_config_from_args(args), args.out)
    print(
        f"fitted {summary['iterations']} iterations; det F = {summary['detF']:.4g} "
        f"(validation set when present); run saved in {args.out}"
    )
    return 0


def cmd_estimate(args, extra):
    import json

    import numpy as np
    from .runs import FittedIMNN, load_inputs

    fitted = FittedIMNN(args.run, trust_code=args.trust_code, allow_pickle=args.trust_pickle)
    if not os.path.exists(args.data) and not str(args.data).startswith(("gs://", "s3://")):
        raise FileNotFoundError(f"{args.data}: no such file or archive")
    est = fitted.get_estimate(load_inputs(args.data))
    if args.out:
        np.save(args.out, est)
    print(json.dumps({"estimate": np.asarray(est).tolist()}))
    return 0


def _floats(text):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def cmd_infer(args, extra):
    import json

    import numpy as np
    from beam_jobs.simulate import SimulatorSpec, load_simulator
    from .fitting import fit_config_from_args
    from .inference import (
        InferenceLoop,
        export_pairs,
        gaussian_posterior,
        rejection_abc,
    )
    from .runs import FittedIMNN, load_inputs

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
        progress=True,
    )
    rows = loop.run()
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
        )
    result = dict(
        rounds=len(rows),
        θ_hat=θ_hat.tolist(),
        σ=np.sqrt(np.diag(np.linalg.inv(F * n_target))).tolist(),
    )
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
        )
        np.savez(os.path.join(args.out, "abc.npz"), accepted=accepted)
        result.update(abc_mean=accepted.mean(0).tolist(), abc_std=accepted.std(0).tolist())
    print("INFER_RESULT " + json.dumps(result, ensure_ascii=False))
    return 0


def cmd_demo(args, extra):
    from .demo import run_demo
    from .fitting import fit_config_from_args

    return run_demo(args.out, args.n_s, fit_config_from_args(args))


def build_parser():
    from . import demo, inference
    from .fitting import add_fit_options

    parser = argparse.ArgumentParser(
        prog="imnn-stream", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (anywhere on the command line)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a streaming IMNN on an archive")
    p.add_argument("archive")
    p.add_argument("--out", required=True, help="run folder to write")
    add_fit_options(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("estimate", help="θ̂ for target data (.npy or fiducial-only archive)")
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--out", default=None, help="also save the estimates as .npy")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow the run's package.module:function model spec (imports and runs it)",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read a 0.1.0 run folder (imnn.pkl; unpickling can run code)",
    )
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "demo",
        help="toy problem end to end: Beam archive → validate → "
        "streaming fit on 2 devices → det F vs 50 → estimate",
    )
    p.add_argument("--out", default="imnn-demo", help="folder for archive and run")
    p.add_argument("--n-s", type=int, default=1000)
    add_fit_options(p, **demo.FIT_DEFAULTS)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "infer",
        help="iterate generate → fit → estimate until θ̂ converges; "
        "then Gaussian posterior, ABC, (θ, summaries) export",
    )
    p.add_argument("--simulator", default="toy", help="module:function, toy or grf")
    p.add_argument("--simulator-config", default=None, help="JSON for a simulator factory")
    p.add_argument("--target", required=True, help=".npy (one input or n realisations) or archive")
    p.add_argument("--theta-start", type=_floats, required=True)
    p.add_argument("--delta-theta", type=_floats, required=True)
    p.add_argument("--prior-low", type=_floats, required=True)
    p.add_argument("--prior-high", type=_floats, required=True)
    p.add_argument("--n-s", type=int, default=1000)
    p.add_argument("--n-d", type=int, default=None, help="default: n_s")
    p.add_argument("--max-rounds", type=int, default=5)
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.5,
        help="stop when every |θ̂ − θ_fid| < tolerance × Fisher σ",
    )
    p.add_argument("--no-warm-start", action="store_true")
    p.add_argument(
        "--exact-fisher",
        default=None,
        help="module:function giving the exact Fisher matrix F(θ), when known: rounds "
        "report det F / det F_exact (default: the simulator's own; toy, grf and "
        "lognormal have one)",
    )
    p.add_argument("--posterior-samples", type=int, default=10000)
    p.add_argument("--abc", type=int, default=0, help="rejection-ABC prior draws (0: none)")
    p.add_argument("--abc-accept", type=float, default=0.02)
    p.add_argument("--export", type=int, default=0, help="(θ, summaries) pairs to export")
    p.add_argument("--out", required=True)
    add_fit_options(p, **inference.FIT_DEFAULTS)
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
    try:
        takes_extra = len(inspect.signature(args.func).parameters) > 1
        code = args.func(args, extra) if takes_extra else args.func(args)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as e:  # every other failure: one line, no traceback
        if debug:
            raise
        print(f"imnn-stream {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
