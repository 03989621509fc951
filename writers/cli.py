"""``imnn-stream validate`` and ``imnn-stream adopt`` subcommands.

``register(subparsers)`` adds them to an argparse subparsers object; each
sets ``func`` to a callable taking the parsed args and returning an exit
code (0 only for a valid archive), or ``(exit code, result dict)``: with
``--json`` the caller prints the dict as the one JSON object on stdout
(:func:`emit`).  ``python -m writers.cli`` runs them stand-alone.

Also the command line's shared pieces (this is the lowest layer, so every
subcommand can use them): :class:`HelpFormatter` (defaults shown) and
:func:`add_output_options` (``--quiet``, ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help text with each option's default, where it has one (not None, False
    or an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (
            d is None
            or d is argparse.SUPPRESS
            or (isinstance(d, bool) and not d)
            or d == []
            or "%(default)" in text
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def add_output_options(p) -> None:
    """``--quiet`` and ``--json``, the same on every subcommand."""
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or log messages (the result and errors are still printed)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object on stdout (progress and logs on stderr)",
    )


def emit(args, out) -> int:
    """The exit code of a command's return value (an int, or ``(int, dict)``);
    with ``--json`` the dict is printed as one JSON object on stdout."""
    code, result = out if isinstance(out, tuple) else (out, None)
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return int(code or 0)


def _bytes_bar(quiet: bool):
    """A progress callback ``(done, total)`` drawing bytes checked on stderr (after
    a second, so a small archive shows nothing), and its closer."""
    from .progress import bar as progress_bar

    bar = progress_bar(
        total=0,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="checked",
        disable=quiet,
        file=sys.stderr,
        delay=1.0,
    )

    def update(done, total):
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return update, bar.close


def _fs_options(args) -> None:
    if getattr(args, "fs_option", None):
        from . import fs

        fs.configure(args.fs_option)


def _print_report(report, as_json: bool) -> dict:
    """Without ``as_json``: each error and warning as one line on stderr and the
    summary line (VALID / INVALID) on stdout. Returns the report as a dict."""
    if not as_json:
        for issue in report.errors + report.warnings:
            print(" ".join(str(issue).split()), file=sys.stderr)
        print(report.summary_line())
    return report.to_json()


def cmd_validate(args):
    from .validator import validate

    _fs_options(args)
    update, close = _bytes_bar(args.quiet)
    try:
        report = validate(args.archive, nonfinite_fatal=args.nonfinite_fatal, progress=update)
    finally:
        close()
    return (0 if report.ok else 1), _print_report(report, args.json)


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
        print(f"error: {e}", file=sys.stderr)
        return 1, {"ok": False, "errors": [str(e)]}
    result = _print_report(report, args.json)
    manifest = f"{args.dir.rstrip('/')}/manifest.json"
    if report.ok and not args.json and not args.quiet:
        print(f"wrote {manifest}")
    return (0 if report.ok else 1), dict(result, manifest=manifest if report.ok else None)


def register(subparsers) -> None:
    """Add ``validate`` and ``adopt`` to an argparse subparsers object."""
    fs_help = (
        "Beam file-system flag for URLs, repeatable, e.g. --fs-option=--no_auth or "
        "--fs-option=--s3_endpoint_url=http://127.0.0.1:9000"
    )
    p = subparsers.add_parser(
        "validate",
        help="check an archive against its manifest",
        description="Check every file of an archive against its manifest (counts, sizes, "
        "sha256, seeds, record framing and values) and the Parquet index. Exit status 0 "
        "only for a valid archive. With --json the report (ok, summary, errors, warnings) "
        "is one JSON object on stdout.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("archive", help="archive root (local path or gs://, s3:// URL)")
    add_output_options(p)
    p.add_argument(
        "--nonfinite-fatal",
        action="store_true",
        help="treat NaN/inf values as errors (default: warnings)",
    )
    p.add_argument("--fs-option", action="append", default=[], help=fs_help)
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser(
        "adopt",
        help="write a manifest for an archive made by the reference imnn writer",
        description="Write manifest.json (and the TFDS metadata) for a folder of TFRecords "
        "written by the reference imnn package, then validate it. The files are not changed.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dir", help="directory with fiducial_<n>.tfrecords, derivative_<n>.tfrecords")
    p.add_argument(
        "--mode",
        required=True,
        choices=("numerical", "gradient", "fiducial"),
        help="what the records hold: finite-difference pairs, gradients, or fiducial only",
    )
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
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float16", "float32", "float64"),
        help="floating type of the stored values",
    )
    p.add_argument(
        "--base-seeds",
        type=_list_of(int, "integers"),
        nargs="+",
        default=None,
        help="base seeds of train (and validation), if known",
    )
    p.add_argument("--simulator", default=None, help="simulator name, if known")
    add_output_options(p)
    p.add_argument("--fs-option", action="append", default=[], help=fs_help)
    p.set_defaults(func=cmd_adopt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m writers.cli", allow_abbrev=False)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return emit(args, args.func(args))


if __name__ == "__main__":
    sys.exit(main())
