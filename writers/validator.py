"""Archive validator: every check of an archive against its manifest.

Checks, each reported with the file (and record number, 0-based, where it
applies): manifest schema and internal consistency; every listed file
present and no unlisted files; per-file SHA-256 and size; TFRecord framing
CRCs of every record; record counts; shapes and dtypes; seed order per file
and seed ranges contiguous per device without gaps or duplicates across
devices; finite-difference records complete and ordered seed → sign →
parameter and matched to the fiducial seeds; gradients on exactly the first
n_d seeds; NaN/inf values (warnings unless ``nonfinite_fatal``); the
Parquet index agreeing with the files.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from . import fs
from .errors import ArchiveError, format_location
from .manifest import INDEX_NAME, MANIFEST_NAME, Manifest, consistency_errors
from .schema import RecordSpec, decode_example, parse_features
from .shard import HashingReader
from .tfrecord import iter_records


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
    """Result of :func:`validate`: ``ok`` is True only without errors."""
    root: str
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary_line(self) -> str:
        s = self.summary
        return (f"{'VALID' if self.ok else 'INVALID'} {self.root}: {s.get('files', 0)} files, "
                f"{s.get('records', 0)} records, {s.get('bytes', 0)} bytes; "
                f"{len(self.errors)} errors, {len(self.warnings)} warnings")

    def to_json(self) -> dict:
        return {"root": self.root, "ok": self.ok, "summary": self.summary,
                "errors": [asdict(i) for i in self.errors],
                "warnings": [asdict(i) for i in self.warnings]}

    def __str__(self) -> str:
        return "\n".join([str(i) for i in self.errors + self.warnings] + [self.summary_line()])


def kind_record_spec(m: Manifest, split: str, kind: str) -> RecordSpec:
    """Record spec of a kind, including adopted reference archives whose
    gradient-mode ``derivative`` files hold dsim/dθ under ``data``."""
    if m.record_format == "imnn-0.3" and m.mode == "gradient" and kind == "derivative":
        return RecordSpec(tuple(m.input_shape) + (m.n_params,), m.dtype)
    return m.record_spec(split, kind)


def validate(root: str, nonfinite_fatal: bool = False, max_issues_per_file: int = 20,
             manifest: Optional[Manifest] = None) -> ValidationReport:
    """Validate the archive at ``root`` (local path or URL).

    Never raises for a bad archive: every problem is an :class:`Issue` in the
    returned :class:`ValidationReport`.
    """
    root = str(root)
    rep = ValidationReport(root)
    err = lambda msg, f=None, r=None: rep.errors.append(Issue("error", msg, f, r))
    warn = lambda msg, f=None, r=None: rep.warnings.append(Issue("warning", msg, f, r))
    if manifest is None:
        if not fs.is_url(root) and not fs.exists(root):
            err("archive directory does not exist", root)
            return rep
        mpath = fs.join(root, MANIFEST_NAME)
        if not fs.exists(mpath):
            err("no manifest.json (not an archive, or its writing never finished)",
                MANIFEST_NAME)
            return rep
        try:
            d = json.loads(fs.read_bytes(mpath))
            m = Manifest.from_json(d, MANIFEST_NAME)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            err(f"not valid JSON: {e}", MANIFEST_NAME)
            return rep
        except (ArchiveError, TypeError) as e:
            err(getattr(e, "detail", str(e)), MANIFEST_NAME)
            return rep
    else:
        m = manifest
    problems = consistency_errors(m)
    for p in problems:
        err(f"inconsistent manifest: {p}", MANIFEST_NAME)
    if problems:
        return rep

    listed = {f["path"] for f in m.all_files()}
    present = set(fs.list_files(root))
    allowed = {MANIFEST_NAME} | ({m.index} if m.index else set())
    # tensorflow-datasets metadata (writers.tfds_meta) beside each split
    allowed |= {f"{s}/{name}" for s in m.layout
                for name in ("dataset_info.json", "features.json")}
    for extra in sorted(present - listed - allowed):
        if fs.TEMP_MARKER in extra:
            err("unlisted file (temporary file left by an interrupted write)", extra)
        else:
            err("unlisted file: not in the manifest", extra)
    total_records = total_bytes = 0
    file_records = {}
    for split in m.layout:
        for kind in m.layout[split]:
            info = m.kind_info(split, kind)
            spec = kind_record_spec(m, split, kind)
            for f in m.files(split, kind):
                if f["path"] not in present:
                    err("missing file listed in the manifest", f["path"])
                    continue
                n, nbytes = _check_file(root, m, info, spec, f, err, warn, nonfinite_fatal,
                                        max_issues_per_file)
                file_records[f["path"]] = n
                total_records += n
                total_bytes += nbytes
    if m.index:
        _check_index(root, m, file_records, err, warn)
    rep.summary = {"files": len(file_records), "records": total_records,
                   "bytes": total_bytes, "mode": m.mode, "splits": list(m.layout),
                   "n_s": m.n_s, "n_d": m.n_d, "n_params": m.n_params,
                   "n_devices": m.n_devices}
    return rep


def _check_file(root, m, info, spec, f, err, warn, nonfinite_fatal, cap):
    rel = f["path"]
    path = fs.join(root, rel)
    rps = info.records_per_seed
    n_params = m.n_params
    issues = 0
    nonfinite = 0
    count = 0

    def record_err(msg, rec):
        nonlocal issues
        issues += 1
        if issues <= cap:
            err(msg, rel, rec)

    with fs.open_read(path) as raw_f:
        hf = HashingReader(raw_f)
        try:
            for r, raw in enumerate(iter_records(hf, rel)):
                count = r + 1
                try:
                    rec = decode_example(raw, spec, rel, r)
                except ArchiveError as e:
                    record_err(e.detail, r)
                    continue
                want_seed = f["first_seed"] + r // rps
                got = (rec["seed"], rec.get("derivative"), rec.get("parameter"))
                if info.finite_difference:
                    want = (want_seed, (r % rps) // n_params, r % n_params)
                    if got != want:
                        record_err(
                            f"expected (seed, derivative, parameter) = {want}, got {got}: "
                            f"finite-difference records must be complete and ordered "
                            f"seed → sign → parameter, seed-matched to fiducial seeds "
                            f"0..{m.n_s - 1}", r)
                elif rec["seed"] != want_seed:
                    record_err(f"expected seed {want_seed}, got {rec['seed']} (duplicated, "
                               f"missing or reordered record)", r)
                if not info.gradient and not info.finite_difference:
                    extra = {"gradient", "derivative", "parameter"} & set(parse_features(raw))
                    if extra and not (m.record_format == "imnn-0.3"):
                        record_err(f"unexpected features {sorted(extra)} in a {info.kind!r} "
                                   f"record (gradients belong on exactly the first n_d "
                                   f"seeds, in 'main')", r)
                for key in ("data", "gradient"):
                    if key in rec and not np.isfinite(rec[key]).all():
                        nonfinite += 1
                        msg = f"non-finite values (NaN or inf) in {key!r}"
                        if nonfinite <= cap:
                            (record_err if nonfinite_fatal else
                             (lambda mm, rr: warn(mm, rel, rr)))(msg, r)
        except ArchiveError as e:  # framing broken: cannot go on in this file
            err(e.detail, rel, e.record)
            count = None
        hf.drain()
    if issues > cap:
        err(f"{issues - cap} more record errors not shown", rel)
    if count is not None and count != f["count"]:
        err(f"record count: manifest says {f['count']}, file has {count}", rel)
    if hf.n != f["bytes"]:
        err(f"size: manifest says {f['bytes']} bytes, file has {hf.n}", rel)
    if hf.sha.hexdigest() != f["sha256"]:
        err(f"checksum mismatch: manifest sha256 {f['sha256'][:16]}…, file "
            f"{hf.sha.hexdigest()[:16]}…", rel)
    return (count or 0), hf.n


def _check_index(root, m, file_records, err, warn):
    path = fs.join(root, m.index)
    if not fs.exists(path):
        err("index listed in the manifest is missing", m.index)
        return
    try:
        from .index import read_index
        table = read_index(root)
        counts = {}
        for name in table.column("file").to_pylist():
            counts[name] = counts.get(name, 0) + 1
    except Exception as e:  # pyarrow raises many types for a damaged file
        err(f"unreadable Parquet index: {e}", m.index)
        return
    for f in m.all_files():
        if counts.get(f["path"], 0) != f["count"]:
            err(f"index has {counts.get(f['path'], 0)} rows for {f['path']}, manifest says "
                f"{f['count']}", m.index)
