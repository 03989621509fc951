"""The archive manifest: ``manifest.json`` at the archive root.

Schema (version 1)::

    {
      "version": 1,          # or "1.<minor>" (see manifest_schema; docs/archive-contract.md)
      "format": "imnn-stream-archive",
      "mode": "numerical" | "gradient" | "fiducial",
      "theta_fid": [float] * n_params,          # fiducial parameters θ_fid
      "delta_theta": [float] * n_params | null, # finite-difference widths δθ
                                                # (records at θ_fid ∓ δθ/2)
      "n_params": int, "n_s": int, "n_d": int,
      "input_shape": [int, ...], "dtype": "float32" | "float64" | "float16",
      "simulator": {"name": str | null, "config": {...}},
      "rng": {"jax": str, "jaxlib": str, "prng_impl": str},
      "base_seeds": {"train": int, "validation": int},   # seed i of split s:
                     # jax.random.fold_in(jax.random.PRNGKey(base_seeds[s]), i)
      "splits": ["train", ...],
      "n_devices": int,                # device count the layout was written for
      "records_per_shard": int, "max_bytes": int | null,
      "record_format": "imnn-stream" | "imnn-0.3",  # imnn-0.3: adopted legacy
      "index": "index.parquet" | null,  # per-record index beside the manifest
      "layout": {split: {kind: {
          "first_seed": int, "n_seeds": int, "records_per_seed": int,
          "finite_difference": bool, "gradient": bool,
          "devices": [{"device": d, "first_seed": int, "last_seed": int,
                       "files": [{"path", "count", "first_seed", "last_seed",
                                  "bytes", "sha256"}, ...]}, ...]}}},
      "input_statistics": {...}   # optional, version "1.1": writers.input_stats
    }

``input_statistics`` (of the fiducial training inputs) is gathered as the shards
are written: each training shard's FileMeta carries its statistics, ``add_file``
keeps them and :func:`write_manifest` merges them (when every file brought some).

The manifest is written last: it is the commit marker, and only the files it
lists belong to the archive.  Every listed path is relative, normalised and
inside the archive root (``layout.relpath_problem``); parsing refuses anything
else, and wrong field types or values, naming the entry (``manifest_schema``).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import durable, fs
from .errors import ArchiveError, MissingFileError
from .layout import INDEX_NAME, MANIFEST_NAME, SPLITS, KindInfo, ShardSpec, device_seeds, kinds
from .input_stats import FIDUCIAL_KINDS, InputStats, merge_all
from .manifest_schema import MAJOR, MINOR, OPTIONAL, check_version, consistency_errors, field_errors
from .schema import RecordSpec
from .shard import FileMeta, records_array

__all__ = [
    "Manifest",
    "MANIFEST_NAME",
    "INDEX_NAME",
    "new_manifest",
    "consistency_errors",
    "kind_record_spec",
    "parse_manifest",
    "read_manifest",
    "write_manifest",
    "jax_versions",
]

VERSION = 1
FORMAT = "imnn-stream-archive"


@dataclass
class Manifest:
    """In-memory manifest; see the module docstring for the JSON schema."""

    mode: str
    theta_fid: list
    delta_theta: Optional[list]
    n_params: int
    n_s: int
    n_d: int
    input_shape: list
    dtype: str = "float32"
    simulator: dict = field(default_factory=lambda: {"name": None, "config": {}})
    rng: dict = field(default_factory=dict)
    base_seeds: dict = field(default_factory=dict)
    splits: list = field(default_factory=lambda: ["train"])
    n_devices: int = 1
    records_per_shard: int = 0
    max_bytes: Optional[int] = None
    record_format: str = "imnn-stream"
    index: Optional[str] = None
    layout: dict = field(default_factory=dict)
    input_statistics: Optional[dict] = None
    version: int | str = VERSION
    format: str = FORMAT
    # Per-file record index entries gathered while writing (not serialised).
    _records: dict = field(default_factory=dict, repr=False, compare=False)
    # Per-file InputStats of the fiducial training files gathered while writing.
    _file_stats: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------ accessors
    def kind_info(self, split: str, kind: str) -> KindInfo:
        try:
            k = self.layout[split][kind]
        except KeyError:
            raise ArchiveError(
                f"archive has no kind {kind!r} in split {split!r} "
                f"(has {sorted(self.layout.get(split, {}))})",
                MANIFEST_NAME,
            ) from None
        return KindInfo(
            kind,
            k["first_seed"],
            k["n_seeds"],
            k["records_per_seed"],
            k.get("finite_difference", False),
            k.get("gradient", False),
        )

    def kinds(self, split: str) -> list[str]:
        if split not in self.layout:
            raise ArchiveError(
                f"archive has no split {split!r} (has {list(self.layout)})", MANIFEST_NAME
            )
        return list(self.layout[split])

    def record_spec(self, split: str, kind: str) -> RecordSpec:
        """Shapes and features of the records of one kind."""
        info = self.kind_info(split, kind)
        return RecordSpec(
            tuple(self.input_shape),
            self.dtype,
            self.n_params,
            info.finite_difference,
            info.gradient,
        )

    def files(self, split: str, kind: str) -> list[dict]:
        """The kind's files in seed order (all devices concatenated)."""
        return [f for d in self.layout[split][kind]["devices"] for f in d["files"]]

    def all_files(self) -> list[dict]:
        return [f for s in self.layout for k in self.layout[s] for f in self.files(s, k)]

    def record_entries(self, path: str) -> Optional[np.ndarray]:
        """The per-record index entries of a file gathered while writing or
        adopting it, an int64 array ``(count, 5)`` of ``(seed, derivative,
        parameter, offset, length)`` rows (None if none were gathered: the index
        then scans the file)."""
        return self._records.get(path)

    def set_record_entries(self, path: str, entries) -> None:
        """Keep a file's entries (rows of 5 integers: an array or a sequence of
        tuples) as one int64 array: ~40 bytes per record rather than ~180 for
        a tuple of Python ints."""
        self._records[path] = records_array(entries)

    # ------------------------------------------------------------ building
    def add_file(self, spec: ShardSpec, meta: FileMeta) -> None:
        """Record a written file in the layout (keeps files in path order)."""
        devices = self.layout[spec.split][spec.kind]["devices"]
        if spec.n_devices != len(devices):
            raise ArchiveError(
                f"shard planned for {spec.n_devices} devices, manifest has {len(devices)}",
                meta.path,
            )
        files = devices[spec.device]["files"]
        files[:] = [f for f in files if f["path"] != meta.path] + [meta.to_json()]
        files.sort(key=lambda f: f["path"])
        if meta.records is not None:
            self.set_record_entries(meta.path, meta.records)
        if spec.split == "train" and spec.kind in FIDUCIAL_KINDS:
            self._file_stats[meta.path] = meta.input_stats

    def statistics_kinds(self) -> list[str]:
        """The kinds of the train split holding its fiducial inputs, in order."""
        return [k for k in self.layout.get("train", {}) if k in FIDUCIAL_KINDS]

    def input_stats(self) -> Optional[InputStats]:
        """The recorded ``input_statistics`` as an InputStats (None if none)."""
        st = self.input_statistics
        return None if st is None else InputStats.from_json(st, self.input_shape)

    def set_input_statistics(self, stats: Optional[InputStats]) -> None:
        """Record ``stats`` of every fiducial training input (or None) as
        ``input_statistics``, raising a 1.0 version to 1.1."""
        minor = OPTIONAL["input_statistics"]
        self.input_statistics = (
            None if stats is None else stats.to_json("train", self.statistics_kinds())
        )
        if stats is not None and check_version(self.version)[0] < (MAJOR, minor):
            self.version = f"{MAJOR}.{minor}"

    def gather_input_statistics(self) -> None:
        """Merge the statistics the training files brought to :meth:`add_file`
        (path order) into ``input_statistics``, if every such file brought some."""
        paths = [f["path"] for k in self.statistics_kinds() for f in self.files("train", k)]
        if paths and all(self._file_stats.get(p) is not None for p in paths):
            self.set_input_statistics(merge_all(self._file_stats[p] for p in sorted(paths)))

    # ------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        # not dataclasses.asdict: it deep-copies ``_records`` (the per-record index of
        # every file, millions of entries in a large archive) only for it to be dropped;
        # the layout is copied so that the result shares nothing mutable with self
        return {
            f: copy.deepcopy(getattr(self, f)) if f == "layout" else getattr(self, f)
            for f in self.__dataclass_fields__
            if not f.startswith("_") and not (f in OPTIONAL and getattr(self, f) is None)
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, d: dict, path: str = MANIFEST_NAME) -> "Manifest":
        """A manifest from its JSON object, its field types and values and
        every file path (archive confinement) checked: ArchiveError naming
        ``path`` and the entry otherwise.  A newer minor version's unknown
        fields are ignored with a one-line warning; see manifest_schema."""
        if not isinstance(d, dict):
            raise ArchiveError("manifest is not a JSON object", path)
        if d.get("format") != FORMAT:
            raise ArchiveError(f"format: expected {FORMAT!r}, got {d.get('format')!r:.60}", path)
        version, problem = check_version(d.get("version"))
        if problem:
            raise ArchiveError(problem, path)
        names = {
            f
            for f in cls.__dataclass_fields__
            if not f.startswith("_") and OPTIONAL.get(f, 0) <= version[1]
        }
        missing = sorted(n for n in names if n not in d and n not in OPTIONAL)
        if missing:
            raise ArchiveError(f"missing fields {missing}", path)
        unknown = sorted(set(d) - names)
        if unknown and version[1] > MINOR:
            warnings.warn(
                f"{path}: manifest version {d['version']} is newer than this reader's "
                f"{VERSION}.{MINOR}; ignoring its unknown optional fields {unknown}",
                stacklevel=2,
            )
        elif unknown:
            raise ArchiveError(
                f"unknown fields {unknown} (version {d['version']} has none; a newer "
                f'minor version would say so, e.g. "version": "{VERSION}.{MINOR + 1}")',
                path,
            )
        problems = field_errors(d)
        if problems:
            raise ArchiveError("; ".join(problems), path)
        return cls(**{k: d[k] for k in names if k in d})


def jax_versions(prng_impl: Optional[str] = None) -> dict:
    """Versions of jax/jaxlib and the default PRNG implementation in use."""
    import jax
    import jaxlib

    impl = prng_impl or str(jax.config.jax_default_prng_impl)
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "prng_impl": impl}


def new_manifest(
    mode: str,
    theta_fid,
    delta_theta,
    n_s: int,
    n_d: int,
    input_shape,
    dtype: str = "float32",
    simulator: Optional[str] = None,
    simulator_config: Optional[dict] = None,
    base_seeds: Optional[dict] = None,
    splits=SPLITS,
    n_devices: int = 1,
    records_per_shard: int = 1000,
    max_bytes: Optional[int] = None,
    rng: Optional[dict] = None,
    record_format: str = "imnn-stream",
) -> Manifest:
    """A manifest with an empty per-device layout for every split and kind.

    theta_fid, delta_theta: length-n_params sequences (delta_theta required
    for numerical mode, optional otherwise); base_seeds: {split: int},
    defaulting to train 0, validation 1 (they must differ).
    """
    theta_fid = [float(t) for t in theta_fid]
    n_params = len(theta_fid)
    if delta_theta is not None:
        delta_theta = [float(t) for t in delta_theta]
    base_seeds = dict(base_seeds or {})
    for i, s in enumerate(splits):
        base_seeds.setdefault(s, i)
    base_seeds = {s: int(base_seeds[s]) for s in splits}
    m = Manifest(
        mode=mode,
        theta_fid=theta_fid,
        delta_theta=delta_theta,
        n_params=n_params,
        n_s=int(n_s),
        n_d=int(n_d),
        input_shape=[int(x) for x in input_shape],
        dtype=str(dtype),
        simulator={"name": simulator, "config": dict(simulator_config or {})},
        rng=rng if rng is not None else jax_versions(),
        base_seeds=base_seeds,
        splits=list(splits),
        n_devices=int(n_devices),
        records_per_shard=int(records_per_shard),
        max_bytes=max_bytes,
        record_format=record_format,
    )
    for split in splits:
        m.layout[split] = {}
        for info in kinds(mode, m.n_s, m.n_d, n_params):
            devices = []
            for d in range(n_devices):
                a, b = device_seeds(info, n_devices, d)
                devices.append({"device": d, "first_seed": a, "last_seed": b - 1, "files": []})
            m.layout[split][info.kind] = {
                "first_seed": info.first_seed,
                "n_seeds": info.n_seeds,
                "records_per_seed": info.records_per_seed,
                "finite_difference": info.finite_difference,
                "gradient": info.gradient,
                "devices": devices,
            }
    errors = consistency_errors(m, require_files=False)
    if errors:
        raise ArchiveError("; ".join(errors), MANIFEST_NAME)
    return m


def write_manifest(root: str, manifest: Manifest, write_index: bool = True) -> str:
    """Check ``manifest`` and write it (and the Parquet index) under ``root``,
    with the input statistics its files brought (:meth:`Manifest.gather_input_statistics`).

    The index is written first and the manifest last: the manifest is the
    commit marker.  Raises :class:`ArchiveError` on an inconsistent
    manifest without writing anything.  Returns the manifest's path.
    """
    manifest.gather_input_statistics()
    errors = consistency_errors(manifest)
    if errors:
        raise ArchiveError(
            "refusing to write an inconsistent manifest: " + "; ".join(errors),
            fs.join(root, MANIFEST_NAME),
        )
    if write_index:
        from .index import write_index as _write_index

        _write_index(root, manifest)
        manifest.index = INDEX_NAME
    path = fs.join(root, MANIFEST_NAME)
    durable.write_atomic(path, manifest.dumps().encode())
    return path


def kind_record_spec(m: Manifest, split: str, kind: str) -> RecordSpec:
    """Record spec of a kind as its files hold it, including adopted reference
    archives whose gradient-mode ``derivative`` files hold dsim/dθ under ``data``."""
    if m.record_format == "imnn-0.3" and m.mode == "gradient" and kind == "derivative":
        return RecordSpec(tuple(m.input_shape) + (m.n_params,), m.dtype)
    return m.record_spec(split, kind)


def parse_manifest(data: bytes, path: str = MANIFEST_NAME) -> Manifest:
    """A manifest from the bytes of ``manifest.json`` (not checked for
    consistency: see :func:`consistency_errors`).  Raises
    :class:`ArchiveError` naming ``path`` when it is not valid JSON or not
    our schema."""
    try:
        d = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArchiveError(f"not valid JSON: {err}", path) from None
    return Manifest.from_json(d, path)


def read_manifest(root: str) -> Manifest:
    """Read and check ``root/manifest.json``.

    Raises MissingFileError when there is none and ArchiveError (naming the
    manifest) when it is not valid JSON, not our schema, or inconsistent.
    """
    path = fs.join(root, MANIFEST_NAME)
    if not fs.exists(path):
        if not fs.exists(root) and not fs.is_url(root):
            raise MissingFileError("archive directory does not exist", str(root))
        raise MissingFileError("no manifest (not an archive, or its writing never finished)", path)
    m = parse_manifest(fs.read_bytes(path), path)
    errors = consistency_errors(m)
    if errors:
        raise ArchiveError("inconsistent manifest: " + "; ".join(errors), path)
    return m
