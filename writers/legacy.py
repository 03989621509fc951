"""Adopt an archive written by the reference ``imnn`` package's TFRecords writer.

The reference writer leaves ``<stem>_<counter>.tfrecords`` files
(``fiducial_0.tfrecords``, ``derivative_0.tfrecords``, ...; optionally
``validation_fiducial_*`` / ``validation_derivative_*``) of tf.train.Examples
with ``data``, ``seed`` and, for finite differences, ``derivative`` and
``parameter``.  :func:`adopt` scans them (nothing is rewritten), builds a
manifest with ``record_format = "imnn-0.3"`` laid out for one device (the
streams regroup for any device count), validates it, and only then writes
``index.parquet`` and ``manifest.json``, with the statistics of the fiducial
training inputs the validation pass gathered (``input_statistics``).

In gradient mode the reference ``derivative`` files hold dsim/dθ (shape
``input_shape + (n_params,)``) under ``data``; the streams pair them with the
fiducial records by seed to form ``main``.
"""

from __future__ import annotations

import hashlib
import io
from typing import Optional

from . import fs
from .errors import ArchiveError
from .input_stats import InputStats
from .layout import LEGACY_FILE, MODES, records_per_seed
from .manifest import MANIFEST_NAME, Manifest, write_manifest
from .schema import record_seed
from .framing import FRAMING_BYTES, iter_records
from .tfds_meta import write_tfds_metadata


def _scan(path: str, rel: str) -> dict:
    sha = hashlib.sha256()
    entries = []
    with fs.open_read(path) as f:
        data = f.read()
    sha.update(data)
    for offset, raw in iter_records(io.BytesIO(data), rel, with_offsets=True):
        seed, sign, parameter = record_seed(raw)
        if seed is None:
            raise ArchiveError("record has no int64 'seed' feature", rel, len(entries))
        entries.append(
            (
                seed,
                -1 if sign is None else sign,
                -1 if parameter is None else parameter,
                offset,
                len(raw) + FRAMING_BYTES,
            )
        )
    if not entries:
        raise ArchiveError("file has no records", rel)
    return {
        "path": rel,
        "count": len(entries),
        "first_seed": entries[0][0],
        "last_seed": entries[-1][0],
        "bytes": len(data),
        "sha256": sha.hexdigest(),
        "_records": entries,
    }


def build_legacy_manifest(
    root: str,
    mode: str,
    theta_fid,
    delta_theta,
    input_shape,
    dtype: str = "float32",
    base_seeds: Optional[dict] = None,
    simulator: Optional[str] = None,
) -> Manifest:
    """Scan the reference-format files under ``root`` and return a manifest
    (not written).  Raises :class:`ArchiveError` naming the file when the
    files cannot form an archive."""
    if mode not in MODES:
        raise ArchiveError(f"mode must be numerical, gradient or fiducial, got {mode!r}")
    found = {}
    for rel in fs.list_files(root):
        match = LEGACY_FILE.match(rel)
        if match:
            split = match.group(1) or "train"
            found.setdefault(split, {}).setdefault(match.group(2), []).append(
                _scan(fs.join(root, rel), rel)
            )
    if "train" not in found or "fiducial" not in found["train"]:
        raise ArchiveError("no fiducial_<n>.tfrecords files (reference layout) found", root)
    theta_fid = [float(t) for t in theta_fid]
    n_params = len(theta_fid)
    splits = [s for s in ("train", "validation") if s in found]
    kinds = {
        "numerical": ("fiducial", "derivative"),
        "gradient": ("fiducial", "derivative"),
        "fiducial": ("fiducial",),
    }[mode]
    counts = {}
    for split in splits:
        for kind in kinds:
            files = found[split].get(kind)
            if not files:
                raise ArchiveError(
                    f"{mode} mode needs {kind} files for split {split!r} "
                    f"({'validation_' if split == 'validation' else ''}"
                    f"{kind}_<n>.tfrecords)",
                    root,
                )
            files.sort(key=lambda f: (f["first_seed"], f["path"]))
            counts[split, kind] = sum(f["count"] for f in files)
    n_s = counts["train", "fiducial"]
    rps = records_per_seed(mode, "derivative", n_params)
    n_d = counts["train", "derivative"] // rps if mode != "fiducial" else 0
    if mode != "fiducial" and counts["train", "derivative"] % rps:
        raise ArchiveError(
            f"{counts['train', 'derivative']} derivative records are not a "
            f"multiple of 2·n_params = {rps}",
            root,
        )
    base_seeds = dict(base_seeds or {})
    for i, s in enumerate(splits):
        base_seeds.setdefault(s, i)
    m = Manifest(
        mode=mode,
        theta_fid=theta_fid,
        delta_theta=None if delta_theta is None else [float(t) for t in delta_theta],
        n_params=n_params,
        n_s=n_s,
        n_d=n_d,
        input_shape=[int(x) for x in input_shape],
        dtype=dtype,
        simulator={
            "name": simulator,
            "config": {
                "adopted_from": "imnn 0.3 TFRecords writer",
                "note": "base_seeds and rng versions unknown for adopted archives",
            },
        },
        rng={"jax": "unknown", "jaxlib": "unknown", "prng_impl": "unknown"},
        base_seeds={s: int(base_seeds[s]) for s in splits},
        splits=splits,
        n_devices=1,
        records_per_shard=max(f["count"] for s in splits for k in kinds for f in found[s][k]),
        record_format="imnn-0.3",
    )
    for split in splits:
        m.layout[split] = {}
        for kind in kinds:
            files = found[split][kind]
            n_seeds = n_s if kind == "fiducial" else n_d
            r = records_per_seed(mode, kind, n_params)
            if counts[split, kind] != n_seeds * r:
                raise ArchiveError(
                    f"split {split!r} has {counts[split, kind]} {kind} records, "
                    f"train has {n_seeds * r}",
                    root,
                )
            for f in files:
                m.set_record_entries(f["path"], f.pop("_records"))
            m.layout[split][kind] = {
                "first_seed": 0,
                "n_seeds": n_seeds,
                "records_per_seed": r,
                "finite_difference": kind == "derivative" and mode == "numerical",
                "gradient": kind == "derivative" and mode == "gradient",
                "devices": [
                    {"device": 0, "first_seed": 0, "last_seed": n_seeds - 1, "files": files}
                ],
            }
    return m


def adopt(
    root: str,
    mode: str,
    theta_fid,
    delta_theta,
    input_shape,
    dtype: str = "float32",
    base_seeds: Optional[dict] = None,
    simulator: Optional[str] = None,
):
    """Build, validate and (only if valid) write a manifest for a
    reference-format archive.  Returns ``(manifest, report)``; nothing is
    written when the report has errors.  Existing manifests are not
    overwritten."""
    from .validator import validate

    if fs.exists(fs.join(root, MANIFEST_NAME)):
        raise ArchiveError(
            "already has a manifest; refusing to overwrite it", fs.join(root, MANIFEST_NAME)
        )
    m = build_legacy_manifest(
        root, mode, theta_fid, delta_theta, input_shape, dtype, base_seeds, simulator
    )
    report = validate(root, manifest=m)
    if report.ok:
        # the validator read every record: the fiducial training inputs' statistics
        # come from that pass (writers.input_stats), not a second one
        if report.input_statistics is not None:
            m.set_input_statistics(InputStats.from_json(report.input_statistics, m.input_shape))
        write_tfds_metadata(root, m)  # tfds.builder_from_directory(root/split/kind)
        write_manifest(root, m)
    return m, report
