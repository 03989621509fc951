"""``imnn-stream generate``: the command line of the archive generator.

Every option this parser does not know is handed to Beam unchanged
(``--runner``, ``--project``, ``--temp_location``, ``--direct_num_workers``,
...), so any runner is reached with its usual flags; see docs/beam.md.

``register(subparsers)`` adds the subcommand to the main ``imnn-stream``
parser, whose ``args.func(args, extra_argv)`` call runs it (it returns the exit
code and the result printed with ``--json``);
``python -m beam_jobs.cli generate ...`` runs it on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from writers.cli import HelpFormatter, add_output_options, emit

__all__ = ["register", "run", "main"]

EXAMPLE = (
    "imnn-stream generate --simulator toy --theta-fid 0,1 --delta-theta 0.1,0.1 "
    "--n-s 1000 --n-d 1000 --n-devices 2 --mode numerical --out ARCHIVE"
)


def _floats(text: str) -> list:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text: str) -> list:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``generate`` subcommand; sets ``func=run`` (``run(args, beam_argv)``)."""
    p = subparsers.add_parser(
        "generate",
        allow_abbrev=False,  # never swallow a Beam flag by prefix
        help="simulate a seed-matched archive with Apache Beam",
        description="Simulate a seed-matched archive (fiducial, finite-difference or "
        "gradient records) with Apache Beam. Unknown options are Beam pipeline "
        "options and are passed to Beam unchanged (default runner: the local "
        "FnApiRunner, one process per core).",
        epilog="example: " + EXAMPLE + " ; on a Dask cluster, add --runner=DaskRunner "
        "--dask_client_address=HOST:PORT (Dataflow, Flink, Spark: see docs/beam.md)",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--simulator",
        default="toy",
        help="module:function or path/file.py:function of simulator(key, θ); "
        "shortcuts: 'toy' (10 Gaussian draws, θ=(μ,Σ)) and 'grf' (2-D "
        "Gaussian random field factory, θ=(A,B))",
    )
    p.add_argument(
        "--simulator-config",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="JSON object of keyword arguments for a simulator factory, e.g. '{\"size\": 32}'",
    )
    p.add_argument(
        "--theta-fid",
        type=_floats,
        required=True,
        metavar="θ1,θ2,...",
        help="fiducial parameter values θ_fid, comma-separated",
    )
    p.add_argument(
        "--delta-theta",
        type=_floats,
        default=None,
        metavar="δ1,δ2,...",
        help="finite-difference widths (numerical mode): records at θ_fid ∓ δθ/2",
    )
    p.add_argument("--n-s", type=int, required=True, help="fiducial seeds per split")
    p.add_argument(
        "--n-d",
        type=int,
        default=None,
        help="derivative seeds per split (default n_s; ignored in fiducial mode)",
    )
    p.add_argument(
        "--n-devices",
        type=int,
        default=1,
        help="devices the layout is cut for; n_s and n_d must divide by it",
    )
    p.add_argument(
        "--mode",
        choices=("numerical", "gradient", "fiducial"),
        required=True,
        help="records to write: seed-matched finite differences (numerical), simulations "
        "with their gradients dsim/dθ (gradient), or fiducial simulations only",
    )
    p.add_argument("--out", required=True, help="archive directory or URL (gs://, s3://)")
    p.add_argument(
        "--records-per-shard", type=int, default=1000, help="records per TFRecord shard file"
    )
    p.add_argument("--seed", type=int, default=0, help="base seed of the train split")
    p.add_argument(
        "--validation-seed", type=int, default=1, help="base seed of the validation split"
    )
    p.add_argument(
        "--no-validation", action="store_true", help="write only the train split (e.g. target data)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="simulations per vmapped call on a worker (does not change the data)",
    )
    p.add_argument(
        "--input-shape",
        type=_ints,
        default=None,
        metavar="N1,N2,...",
        help="expected shape of one simulation (checked before any work)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (as --quiet)")
    p.add_argument("--verbose", action="store_true", help="show Beam's own log messages")
    add_output_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, beam_argv: Optional[Sequence[str]] = None):
    """Run ``generate`` for parsed ``args``; ``beam_argv`` goes to Beam unchanged.

    Returns (exit code, result dict): 0 on success, 2 for arguments refused before
    any work, 1 when the job failed (already-written shards stay; re-run to resume).
    """
    from .driver import JobFailed, run_generation
    from .job import JobError
    from .simulate import SimulationError

    if not args.verbose:  # Beam relays every worker's start-up chatter otherwise
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    quiet = getattr(args, "quiet", False)

    def log(msg):  # --quiet keeps warnings (a stale lock taken over)
        if not quiet or msg.startswith("warning"):
            print(msg, file=sys.stderr)

    seeds = {"train": args.seed}
    if not args.no_validation:
        seeds["validation"] = args.validation_seed
    n_d = args.n_s if args.n_d is None else args.n_d
    beam_argv = list(beam_argv or [])
    try:
        result = run_generation(
            args.out,
            args.simulator,
            args.theta_fid,
            args.delta_theta,
            args.n_s,
            n_d,
            args.n_devices,
            args.mode,
            records_per_shard=args.records_per_shard,
            seeds=seeds,
            simulator_config=args.simulator_config,
            batch_size=args.batch_size,
            beam_args=beam_argv,
            input_shape=args.input_shape,
            progress=not (args.no_progress or quiet),
            log=log,
        )
    except (JobError, SimulationError) as err:  # refused before any shard was written
        print(f"imnn-stream generate: error: {err}", file=sys.stderr)
        return 2, {"ok": False, "error": str(err)}
    except JobFailed as err:
        print(
            f"imnn-stream generate: error: {err}\n"
            f"shards already written to {err.root} are kept; fix the cause and re-run "
            "the same command to resume",
            file=sys.stderr,
        )
        return 1, {"ok": False, "error": str(err), "kept": err.root}
    if not args.json:
        print(result.summary(args.out), file=sys.stderr)
    m = result.manifest
    return 0, {
        "ok": True,
        "out": args.out,
        "mode": m.mode,
        "splits": list(m.layout),
        "n_s": m.n_s,
        "n_d": m.n_d,
        "n_devices": m.n_devices,
        "shards": result.n_shards,
        "written": result.written,
        "kept": result.kept,
        "records_written": result.records_written,
        "seconds": result.seconds,
        "nothing_to_do": result.nothing_to_do,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m beam_jobs.cli generate ...``"""
    parser = argparse.ArgumentParser(prog="imnn-stream")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args, extra = parser.parse_known_args(argv)
    return emit(args, args.func(args, extra))


if __name__ == "__main__":
    sys.exit(main())
