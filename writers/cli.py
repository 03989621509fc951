"""``imnn-stream validate`` and ``imnn-stream adopt`` subcommands.

``register(subparsers)`` adds them to an argparse subparsers object; each
sets ``func`` to a callable taking the parsed args and returning an exit
code (0 only for a valid archive).  ``python -m writers.cli`` runs them
stand-alone.
"""

from __future__ import annotations

import argparse
import json
import sys


def _fs_options(args) -> None:
    if getattr(args, "fs_option", None):
        from . import fs

        fs.configure(args.fs_option)


def _print_report(report, as_json: bool) -> None:
    """JSON on stdout; or each error and warning as one line on stderr and
    the summary line (VALID / INVALID) on stdout."""
    if as_json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for issue in report.errors + report.warnings:
            print(" ".join(str(issue).split()), file=sys.stderr)
        print(report.summary_line())


def cmd_validate(args) -> int:
    from .validator import validate

    _fs_options(args)
    report = validate(args.archive, nonfinite_fatal=args.nonfinite_fatal)
    _print_report(report, args.json)
    return 0 if report.ok else 1


def _list_of(convert, what):
    """argparse type: one value or comma-separated values (``0,1``), so that lists
    are written the same way as ``generate``'s; with nargs="+" ``0 1`` works too."""

    def parse(text):
        try:
            return [convert(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


def _flat(values):
    return None if values is None else [v for part in values for v in part]


def cmd_adopt(args) -> int:
    from .errors import ArchiveError
    from .legacy import adopt

    _fs_options(args)
    seeds = _flat(args.base_seeds)
    base = dict(zip(("train", "validation"), seeds)) if seeds else None
    try:
        _, report = adopt(
            args.dir,
            args.mode,
            _flat(args.theta_fid),
            _flat(args.delta_theta),
            _flat(args.input_shape),
            dtype=args.dtype,
            base_seeds=base,
            simulator=args.simulator,
        )
    except ArchiveError as e:
        if args.json:
            print(json.dumps({"ok": False, "errors": [str(e)]}))
        else:
            print(f"error: {e}", file=sys.stderr)
        return 1
    _print_report(report, args.json)
    if report.ok and not args.json:
        print(f"wrote {args.dir.rstrip('/')}/manifest.json")
    return 0 if report.ok else 1


def register(subparsers) -> None:
    """Add ``validate`` and ``adopt`` to an argparse subparsers object."""
    fs_help = (
        "Beam file-system flag for URLs, repeatable, e.g. --fs-option=--no_auth or "
        "--fs-option=--s3_endpoint_url=http://127.0.0.1:9000"
    )
    p = subparsers.add_parser("validate", help="check an archive against its manifest")
    p.add_argument("archive", help="archive root (local path or gs://, s3:// URL)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--nonfinite-fatal",
        action="store_true",
        help="treat NaN/inf values as errors (default: warnings)",
    )
    p.add_argument("--fs-option", action="append", default=[], help=fs_help)
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser(
        "adopt", help="write a manifest for an archive made by the reference imnn writer"
    )
    p.add_argument("dir", help="directory with fiducial_<n>.tfrecords, derivative_<n>.tfrecords")
    p.add_argument("--mode", required=True, choices=("numerical", "gradient", "fiducial"))
    p.add_argument(
        "--theta-fid",
        required=True,
        type=_list_of(float, "numbers"),
        nargs="+",
        help="fiducial parameter values θ_fid (0,1)",
    )
    p.add_argument(
        "--delta-theta",
        type=_list_of(float, "numbers"),
        nargs="+",
        default=None,
        help="finite-difference widths δθ (records at θ_fid ∓ δθ/2)",
    )
    p.add_argument(
        "--input-shape",
        required=True,
        type=_list_of(int, "integers"),
        nargs="+",
        help="shape of one simulation (32,32)",
    )
    p.add_argument("--dtype", default="float32", choices=("float16", "float32", "float64"))
    p.add_argument(
        "--base-seeds",
        type=_list_of(int, "integers"),
        nargs="+",
        default=None,
        help="base seeds of train (and validation), if known",
    )
    p.add_argument("--simulator", default=None, help="simulator name, if known")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--fs-option", action="append", default=[], help=fs_help)
    p.set_defaults(func=cmd_adopt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m writers.cli", allow_abbrev=False)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
