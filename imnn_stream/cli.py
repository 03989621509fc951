"""``imnn-stream``: one command, a subcommand per job.

fit, estimate, demo (this package) · validate, adopt (``writers``) · generate
(``beam_jobs``). jax is imported only after the device count is known, because
XLA reads ``--xla_force_host_platform_device_count`` once, at start-up.
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


def _add_fit_options(p, defaults):
    p.add_argument("--model", default=defaults.get("model", "mlp:128,128"),
                   help="mlp:W1,W2,… | cnn:C1,C2,… | package.module:factory (default %(default)s)")
    p.add_argument("--optimiser", default="adam:1e-3", help="optax name:learning_rate")
    p.add_argument("--lambda", dest="lam", type=float, default=10.0, help="λ, regulariser strength")
    p.add_argument("--epsilon", dest="eps", type=float, default=0.1, help="ϵ, closeness of C to I")
    p.add_argument("--devices", type=int, default=2, help="XLA devices to spread batches over")
    p.add_argument("--n-per-device", type=int, default=defaults.get("n_per_device", 100))
    p.add_argument("--n-summaries", type=int, default=None, help="default: n_params")
    p.add_argument("--max-iterations", type=int, default=defaults.get("max_iterations", 2000))
    p.add_argument("--patience", type=int, default=defaults.get("patience", 100))
    p.add_argument("--min-iterations", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="network initialisation seed")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint")


def _fit_archive(archive, args, out, expected_detF=None):
    """Fit the streaming trainer of ``archive``'s mode; write the run folder."""
    import jax
    import writers
    from . import models, optimisers
    from .dataset import DatasetGradientIMNN, DatasetNumericalGradientIMNN
    from .runs import save_run
    from writers.manifest import read_manifest

    m = read_manifest(archive)
    cls = {"numerical": DatasetNumericalGradientIMNN, "gradient": DatasetGradientIMNN}.get(m.mode)
    if cls is None:
        raise SystemExit(f"{archive}: a {m.mode!r} archive cannot train an IMNN "
                         "(needs numerical or gradient)")
    n_summaries = args.n_summaries or m.n_params
    devices = jax.devices("cpu")[: args.devices] if jax.default_backend() == "cpu" \
        else jax.devices()[: args.devices]
    if len(devices) < args.devices:
        raise SystemExit(f"--devices {args.devices}: only {len(devices)} devices available")
    imnn = cls.from_archive(archive, model=models.from_spec(args.model, n_summaries),
                            optimiser=optimisers.from_spec(args.optimiser),
                            key_or_state=jax.random.PRNGKey(args.seed), host=jax.devices("cpu")[0],
                            devices=devices, n_per_device=args.n_per_device,
                            n_summaries=n_summaries)
    try:
        imnn.fit(args.lam, args.eps, rng=jax.random.PRNGKey(args.seed + 1),
                 patience=args.patience, min_iterations=args.min_iterations,
                 max_iterations=args.max_iterations, print_rate=max(1, args.max_iterations // 100),
                 checkpoint_dir=os.path.join(out, "checkpoint"),
                 checkpoint_every=args.checkpoint_every, resume=args.resume)
    finally:
        imnn.close()
    summary = save_run(out, imnn, args.model, dict(archive=str(archive), mode=m.mode),
                       expected_detF=expected_detF)
    return imnn, summary


def cmd_fit(args, extra):
    _, summary = _fit_archive(args.archive, args, args.out)
    print(f"fitted {summary['iterations']} iterations; det F = {summary['detF']:.4g} "
          f"(validation set when present); run saved in {args.out}")
    return 0


def cmd_estimate(args, extra):
    import json

    import numpy as np
    from .runs import FittedIMNN, load_inputs

    fitted = FittedIMNN(args.run)
    est = fitted.get_estimate(load_inputs(args.data))
    if args.out:
        np.save(args.out, est)
    print(json.dumps({"estimate": np.asarray(est).tolist()}))
    return 0


def cmd_demo(args, extra):
    from .demo import run_demo
    return run_demo(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="imnn-stream", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a streaming IMNN on an archive")
    p.add_argument("archive")
    p.add_argument("--out", required=True, help="run folder to write")
    _add_fit_options(p, {})
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("estimate", help="θ̂ for target data (.npy or fiducial-only archive)")
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--out", default=None, help="also save the estimates as .npy")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("demo", help="toy problem end to end: Beam archive → validate → "
                                    "streaming fit on 2 devices → det F vs 50 → estimate")
    p.add_argument("--out", default="imnn-demo", help="folder for archive and run")
    p.add_argument("--n-s", type=int, default=1000)
    _add_fit_options(p, dict(n_per_device=250, max_iterations=1500, patience=100))
    p.set_defaults(func=cmd_demo)

    from writers.cli import register as register_writers
    register_writers(sub)
    try:
        from beam_jobs.cli import register as register_beam
    except ImportError:  # pragma: no cover - beam_jobs is part of this distribution
        pass
    else:
        register_beam(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # the subcommands' modules import jax, so the device count is read first
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--devices", type=int, default=2)
    devices = pre.parse_known_args(argv)[0].devices
    _force_host_devices(max(devices, os.cpu_count() or 1, 2))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "generate":
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        takes_extra = len(inspect.signature(args.func).parameters) > 1
        code = args.func(args, extra) if takes_extra else args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
