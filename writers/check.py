"""Check one shard file against the archive contract.

One function, :func:`check_shard`, serves both the validator (which reports
every problem of a file) and the Beam job's resume (which keeps a file only
when it is exactly right, and stops at its first problem).  It reads the
file once, hashing it as it goes, and checks: TFRecord framing and CRCs;
that every record decodes with the kind's shapes and dtype; the record keys
``(seed, derivative, parameter)`` against the record order of
:mod:`writers.layout`; no gradient or finite-difference features on kinds
that have none; NaN/inf values (warnings unless ``nonfinite_fatal``); and,
where given, the record count, size and SHA-256 the manifest claims.  For
fiducial data it also gathers the inputs' statistics
(:class:`writers.input_stats.InputStats`) in the same pass: the resumed job's
FileMeta carries them to the manifest, the validator compares them with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import fs
from .errors import ArchiveError
from .layout import KindInfo, record_key
from .schema import RecordSpec, decode_features, parse_features
from .framing import FRAMING_BYTES, iter_records
from .input_stats import FIDUCIAL_KINDS, InputStats
from .shard import FileMeta, HashingReader

#: decoded inputs added to the statistics at once
_STATS_BLOCK = 256


@dataclass
class ShardCheck:
    """Result of :func:`check_shard` for the file ``path`` (relative to the root).

    count: records read (None when the framing broke before the end);
    bytes / sha256: of the bytes read (the whole file unless the check
    stopped early); entries: ``(seed, derivative, parameter, offset,
    length)`` per decoded record (the Parquet index rows); errors and
    warnings: ``(message, record or None)`` in the order found;
    input_stats: the statistics of the decoded inputs (None when not gathered).
    """

    path: str
    count: Optional[int] = 0
    bytes: int = 0
    sha256: str = ""
    entries: list = field(default_factory=list, repr=False)
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    input_stats: Optional[InputStats] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def file_meta(self) -> FileMeta:
        """The file's :class:`FileMeta` (only for a file that passed)."""
        e = self.entries
        return FileMeta(
            self.path, len(e), e[0][0], e[-1][0], self.bytes, self.sha256, e, self.input_stats
        )


class _Stop(Exception):
    """The first error, when only the first one is wanted."""


def check_shard(
    root: str,
    rel: str,
    info: KindInfo,
    spec: RecordSpec,
    first_seed: int,
    n_params: int,
    *,
    count: Optional[int] = None,
    nbytes: Optional[int] = None,
    sha256: Optional[str] = None,
    n_s: Optional[int] = None,
    legacy: bool = False,
    nonfinite_fatal: bool = False,
    max_issues: int = 20,
    first_error_only: bool = False,
    source: str = "manifest",
    input_stats: Optional[bool] = None,
) -> ShardCheck:
    """Check the file ``rel`` under ``root`` holding records of ``info``'s kind
    from seed ``first_seed`` on, decoded with ``spec``.

    count, nbytes, sha256: what ``source`` (the manifest, or the Beam job's
    plan) says the file holds, each checked when given. n_s: fiducial seed count, named in the
    finite-difference message. legacy: an adopted reference archive (its
    fiducial records may carry extra features). At most ``max_issues``
    record errors are listed per file, then their number. With
    ``first_error_only`` the check stops at the first error (the Beam job
    rewrites such a file anyway). input_stats: gather the statistics of the
    records' inputs (default: for the fiducial kinds, ``FIDUCIAL_KINDS``).
    Never raises for a bad file; a missing file raises
    :class:`writers.errors.MissingFileError`.
    """
    out = ShardCheck(rel)
    if input_stats if input_stats is not None else info.kind in FIDUCIAL_KINDS:
        out.input_stats = InputStats(spec.input_shape)
    issues = 0

    def error(msg, rec=None):
        out.errors.append((msg, rec))
        if first_error_only:
            raise _Stop

    def record_err(msg, rec):
        nonlocal issues
        issues += 1
        if issues <= max_issues:
            error(msg, rec)

    extras_forbidden = not (info.gradient or info.finite_difference or legacy)
    seeds = f"0..{n_s - 1}" if n_s is not None else "of the fiducial kind"
    try:
        with fs.open_read(fs.join(root, rel)) as raw_f:
            hf = HashingReader(raw_f)
            try:
                out.count = _records(
                    out,
                    hf,
                    rel,
                    info,
                    spec,
                    first_seed,
                    n_params,
                    seeds,
                    extras_forbidden,
                    record_err,
                    nonfinite_fatal,
                    max_issues,
                )
            except ArchiveError as e:  # framing broken: cannot go on in this file
                out.count = None
                error(e.detail, e.record)
            hf.drain()
        out.bytes, out.sha256 = hf.n, hf.sha.hexdigest()
        if issues > max_issues:
            error(f"{issues - max_issues} more record errors not shown")
        if out.count is not None and count is not None and out.count != count:
            error(f"record count: {source} says {count}, file has {out.count}")
        if nbytes is not None and out.bytes != nbytes:
            error(f"size: manifest says {nbytes} bytes, file has {out.bytes}")
        if sha256 is not None and out.sha256 != sha256:
            error(f"checksum mismatch: manifest sha256 {sha256[:16]}…, file {out.sha256[:16]}…")
    except _Stop:
        pass
    return out


def _records(
    out,
    hf,
    rel,
    info,
    spec,
    first_seed,
    n_params,
    seeds,
    extras_forbidden,
    record_err,
    nonfinite_fatal,
    cap,
) -> int:
    """Check every record of the open file; returns how many there are."""
    nonfinite = 0
    n = 0
    block = []  # decoded inputs not yet in out.input_stats
    for r, (offset, raw) in enumerate(iter_records(hf, rel, with_offsets=True)):
        n = r + 1
        try:
            features = parse_features(raw)
        except ValueError as e:
            record_err(str(e), r)
            continue
        try:
            rec = decode_features(features, spec, rel, r)
        except ArchiveError as e:
            record_err(e.detail, r)
            continue
        want = record_key(r, first_seed, n_params, info.finite_difference)
        got = (rec["seed"], rec.get("derivative", -1), rec.get("parameter", -1))
        if info.finite_difference:
            if got != want:
                record_err(
                    f"expected (seed, derivative, parameter) = {want}, got {got}: "
                    f"finite-difference records must be complete and ordered "
                    f"seed → sign → parameter, seed-matched to fiducial seeds {seeds}",
                    r,
                )
        elif rec["seed"] != want[0]:
            record_err(
                f"expected seed {want[0]}, got {rec['seed']} (duplicated, "
                f"missing or reordered record)",
                r,
            )
        if extras_forbidden:
            extra = {"gradient", "derivative", "parameter"} & set(features)
            if extra:
                record_err(
                    f"unexpected features {sorted(extra)} in a {info.kind!r} "
                    f"record (gradients belong on exactly the first n_d "
                    f"seeds, in 'main')",
                    r,
                )
        for key in ("data", "gradient"):
            if key in rec and not np.isfinite(rec[key]).all():
                nonfinite += 1
                msg = f"non-finite values (NaN or inf) in {key!r}"
                if nonfinite <= cap:
                    if nonfinite_fatal:
                        record_err(msg, r)
                    else:
                        out.warnings.append((msg, r))
        out.entries.append((*got, offset, len(raw) + FRAMING_BYTES))
        if out.input_stats is not None:
            block.append(rec["data"])
            if len(block) == _STATS_BLOCK:
                out.input_stats.update(np.stack(block))
                block.clear()
    if block and out.input_stats is not None:
        out.input_stats.update(np.stack(block))
    return n
