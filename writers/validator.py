"""Archive validator: every check of an archive against its manifest.

Checks, each reported with the file (and record number, 0-based, where it
applies): manifest schema and internal consistency; every listed file
present and no unlisted files; per-file SHA-256 and size; TFRecord framing
CRCs of every record; record counts; shapes and dtypes; seed order per file
and seed ranges contiguous per device without gaps or duplicates across
devices; finite-difference records complete and ordered seed → sign →
parameter and matched to the fiducial seeds; gradients on exactly the first
n_d seeds; NaN/inf values (warnings unless ``nonfinite_fatal``); the
Parquet index agreeing with the files; the manifest's ``input_statistics``
(shapes against the input shape, and values against the statistics of the
fiducial training records, gathered in the same single pass).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from . import fs
from .check import check_shard
from .errors import ArchiveError, format_location
from .layout import GENERATE_LOCK, MANIFEST_NAME, TFDS_FILES, tfds_files
from .input_stats import FIDUCIAL_KINDS, InputStats, merge_all
from .manifest import Manifest, consistency_errors, kind_record_spec, parse_manifest

#: relative tolerance of recorded against recomputed input statistics
STATS_RTOL = 1e-6


@dataclass
class Issue:
    """One finding: ``severity`` "error" or "warning", ``file`` relative to
    the archive root (or None), ``record`` 0-based (or None)."""

    severity: str
    message: str
    file: Optional[str] = None
    record: Optional[int] = None

    def __str__(self) -> str:
        return f"{self.severity}: {format_location(self.file, self.record)}{self.message}"


@dataclass
class ValidationReport:
    """Result of :func:`validate`: ``ok`` is True only without errors.
    ``input_statistics``: the statistics of the fiducial training inputs as
    read (JSON, as the manifest records them; None when not all were read)."""

    root: str
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    input_statistics: Optional[dict] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary_line(self) -> str:
        s = self.summary
        return (
            f"{'VALID' if self.ok else 'INVALID'} {self.root}: {s.get('files', 0)} files, "
            f"{s.get('records', 0)} records, {s.get('bytes', 0)} bytes; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "ok": self.ok,
            "summary": self.summary,
            "errors": [asdict(i) for i in self.errors],
            "warnings": [asdict(i) for i in self.warnings],
        }

    def __str__(self) -> str:
        return "\n".join([str(i) for i in self.errors + self.warnings] + [self.summary_line()])


def validate(
    root: str,
    nonfinite_fatal: bool = False,
    max_issues_per_file: int = 20,
    manifest: Optional[Manifest] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> ValidationReport:
    """Validate the archive at ``root`` (local path or URL).

    Never raises for a bad archive: every problem is an :class:`Issue` in the
    returned :class:`ValidationReport`. ``progress(done, total)``: called with
    the bytes of listed files checked so far and in all, after every file.
    """
    root = str(root)
    rep = ValidationReport(root)
    try:
        _validate(rep, root, nonfinite_fatal, max_issues_per_file, manifest, progress)
    except Exception as e:  # a bug, not a bad archive: still a report, never a crash
        rep.errors.append(
            Issue("error", f"internal error while validating: {type(e).__name__}: {e}")
        )
    return rep


def _validate(rep, root, nonfinite_fatal, max_issues_per_file, manifest, progress=None) -> None:
    def err(msg, f=None, r=None):
        rep.errors.append(Issue("error", msg, f, r))

    def warn(msg, f=None, r=None):
        rep.warnings.append(Issue("warning", msg, f, r))

    if manifest is None:
        if not fs.is_url(root) and not fs.exists(root):
            err("archive directory does not exist", root)
            return
        mpath = fs.join(root, MANIFEST_NAME)
        if not fs.exists(mpath):
            err("no manifest.json (not an archive, or its writing never finished)", MANIFEST_NAME)
            return
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m = parse_manifest(fs.read_bytes(mpath), MANIFEST_NAME)
        except (ArchiveError, TypeError) as e:
            err(getattr(e, "detail", str(e)), MANIFEST_NAME)
            return
        for w in caught:  # e.g. a newer minor version's optional fields
            warn(str(w.message).removeprefix(f"{MANIFEST_NAME}: "), MANIFEST_NAME)
    else:
        m = manifest
    problems = consistency_errors(m)
    for p in problems:
        err(f"inconsistent manifest: {p}", MANIFEST_NAME)
    if problems:
        return

    listed = {f["path"] for f in m.all_files()}
    present = set(fs.list_files(root))
    allowed = {MANIFEST_NAME, GENERATE_LOCK} | ({m.index} if m.index else set())
    if GENERATE_LOCK in present:
        warn(
            "lock file of a generate run (running, or killed: the next run clears it)",
            GENERATE_LOCK,
        )
    # tensorflow-datasets metadata (writers.tfds_meta) in each kind directory
    # (and beside each split, where archives before 0.2 had it)
    allowed |= {f"{s}/{name}" for s in m.layout for name in TFDS_FILES}
    allowed |= {p for s in m.layout for k in m.layout[s] for p in tfds_files(s, k)}
    for extra in sorted(present - listed - allowed):
        if fs.TEMP_MARKER in extra:
            err("unlisted file (temporary file left by an interrupted write)", extra)
        else:
            err("unlisted file: not in the manifest", extra)
    total_records = total_bytes = done = 0
    listed_bytes = sum(int(f.get("bytes") or 0) for f in m.all_files())
    file_records = {}
    file_stats: dict = {}  # path -> InputStats of the fiducial training files
    for split in m.layout:
        for kind in m.layout[split]:
            info = m.kind_info(split, kind)
            spec = kind_record_spec(m, split, kind)
            for f in m.files(split, kind):
                done += int(f.get("bytes") or 0)
                if f["path"] not in present:
                    err("missing file listed in the manifest", f["path"])
                    continue
                c = check_shard(
                    root,
                    f["path"],
                    info,
                    spec,
                    f["first_seed"],
                    m.n_params,
                    count=f["count"],
                    nbytes=f["bytes"],
                    sha256=f["sha256"],
                    n_s=m.n_s,
                    legacy=m.record_format == "imnn-0.3",
                    nonfinite_fatal=nonfinite_fatal,
                    max_issues=max_issues_per_file,
                    input_stats=split == "train" and kind in FIDUCIAL_KINDS,
                )
                if c.input_stats is not None:
                    file_stats[f["path"]] = c.input_stats if c.ok else None
                for msg, r in c.errors:
                    err(msg, f["path"], r)
                for msg, r in c.warnings:
                    warn(msg, f["path"], r)
                file_records[f["path"]] = c.count or 0
                total_records += c.count or 0
                total_bytes += c.bytes
                if progress is not None:
                    progress(done, listed_bytes)
    if m.index:
        _check_index(root, m, file_records, err, warn)
    _check_statistics(rep, m, file_stats, err)
    rep.summary = {
        "files": len(file_records),
        "records": total_records,
        "bytes": total_bytes,
        "mode": m.mode,
        "splits": list(m.layout),
        "n_s": m.n_s,
        "n_d": m.n_d,
        "n_params": m.n_params,
        "n_devices": m.n_devices,
    }


def _check_statistics(rep, m: Manifest, file_stats: dict, err) -> None:
    """The recorded ``input_statistics`` against those of the records read
    (their shapes were checked with the manifest)."""
    paths = [f["path"] for k in m.statistics_kinds() for f in m.files("train", k)]
    got = None
    if paths and all(file_stats.get(p) is not None for p in paths):
        got = merge_all(file_stats[p] for p in sorted(paths))
        rep.input_statistics = got.to_json("train", m.statistics_kinds())
    if m.input_statistics is None or got is None:
        return
    recorded = InputStats.from_json(m.input_statistics, m.input_shape)
    for problem in got.differences(recorded, STATS_RTOL):
        err(
            f"input_statistics disagree with the fiducial training records: {problem}",
            MANIFEST_NAME,
        )


def _check_index(root, m, file_records, err, warn):
    path = fs.join(root, m.index)
    if not fs.exists(path):
        err("index listed in the manifest is missing", m.index)
        return
    try:
        from .index import read_index  # pyarrow only when there is an index

        table = read_index(root)
        import pyarrow.compute as pc

        # one count per file, not one Python string per row
        vc = pc.value_counts(table.column("file")).to_pylist()
        counts = {v["values"]: v["counts"] for v in vc}
    except Exception as e:  # pyarrow raises many types for a damaged file
        err(f"unreadable Parquet index: {e}", m.index)
        return
    for f in m.all_files():
        if counts.get(f["path"], 0) != f["count"]:
            err(
                f"index has {counts.get(f['path'], 0)} rows for {f['path']}, manifest says "
                f"{f['count']}",
                m.index,
            )
