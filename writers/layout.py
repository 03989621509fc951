"""The archive contract, written once: file names, kinds, record order,
records per seed and per-device seed blocks.

See docs/archive-contract.md.  Everything here is plain integer arithmetic
and names; no I/O.  The validator, the Beam job, the in-memory archive
writer, the legacy adopter, the streams and the trainers' record positions
all take the contract from here.

Record order within a kind: by seed; a finite-difference seed holds
``2·n_params`` records ordered sign → parameter (sign 0 at θ_fid − δθ/2,
1 at θ_fid + δθ/2), every other kind one record per seed.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Iterator

from .errors import LayoutError

MODES = ("numerical", "gradient", "fiducial")
SPLITS = ("train", "validation")

#: the manifest, at the archive root: the commit marker of an archive
MANIFEST_NAME = "manifest.json"
#: the per-record Parquet index beside the manifest
INDEX_NAME = "index.parquet"
#: the record index (the Parquet index's numeric columns, gathered by the shard writers):
#: int64(n, 5), one row per record, in this column order; derivative (the sign ±1) and
#: parameter are -1 for fiducial records, offset and length are the framed record's
RECORD_COLUMNS = ("seed", "derivative", "parameter", "offset", "length")
OFFSET_COLUMN = RECORD_COLUMNS.index("offset")


def record_entry(seed: int, sign, parameter, offset: int, framed_length: int) -> tuple:
    """One record index row (:data:`RECORD_COLUMNS`) from a record's seed features
    (``sign``/``parameter`` None when absent) and its place in the file."""
    return (
        seed,
        -1 if sign is None else sign,
        -1 if parameter is None else parameter,
        offset,
        framed_length,
    )


#: lock file held at the archive root by the ``generate`` driver while it writes
#: (never listed in the manifest; the validator allows it with a warning)
GENERATE_LOCK = ".generate.lock"
#: tensorflow-datasets metadata files in each kind directory (``tfds_files``)
TFDS_FILES = ("dataset_info.json", "features.json")
#: file names the reference ``imnn`` writer leaves (adopted by ``writers.legacy``):
#: ``[validation_](fiducial|derivative)_<counter>.tfrecords``
LEGACY_FILE = re.compile(r"^(?:(validation)_)?(fiducial|derivative)_(\d+)\.tfrecords$")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def relpath_problem(path) -> str | None:
    """Why ``path`` is not a file name an archive may list (None when it is).

    Archive confinement: every path in a manifest is relative to the archive
    root, '/'-separated and normalised — a non-empty string without a
    leading '/', a scheme (``gs://``, ``file:``, ``C:``), backslashes, NUL
    characters, or empty, ``.`` or ``..`` segments — so that it names a file
    inside the root for local roots and for gs:// and s3:// alike.
    """
    if not isinstance(path, str):
        return f"must be a string, got {type(path).__name__}"
    if not path:
        return "is empty"
    if path.startswith("/"):
        return "is absolute (must be relative to the archive root)"
    if _SCHEME.match(path):
        return "has a scheme or drive (must be relative to the archive root)"
    if "\\" in path:
        return "contains a backslash (use '/')"
    if "\x00" in path:
        return "contains a NUL character"
    segments = path.split("/")
    if ".." in segments:
        return "contains '..' (leaves the archive root)"
    if "." in segments or "" in segments:
        return "is not normalised ('.' or empty segments)"
    return None


def shard_path(
    split: str, kind: str, device: int, n_devices: int, index: int, n_shards: int
) -> str:
    """Deterministic, sortable file name relative to the archive root."""
    return (
        f"{split}/{kind}/device-{device:05d}-of-{n_devices:05d}/"
        f"shard-{index:05d}-of-{n_shards:05d}.tfrecords"
    )


def tfds_files(split: str, kind: str) -> list[str]:
    """The TFDS metadata of a kind, relative to the root (``writers.tfds_meta``):
    ``tfds.builder_from_directory(ARCHIVE/<split>/<kind>)`` reads them."""
    return [f"{split}/{kind}/{name}" for name in TFDS_FILES]


# ------------------------------------------------------------------ kinds and records
def kind_features(mode: str, kind: str) -> tuple[bool, bool]:
    """``(finite_difference, gradient)``: the extra features a kind's records
    carry (``derivative``/``parameter``, or ``gradient``)."""
    return mode == "numerical" and kind == "derivative", mode == "gradient" and kind == "main"


def records_per_seed(mode: str, kind: str, n_params: int) -> int:
    """Records one seed contributes to a kind (2·n_params for finite differences)."""
    return 2 * n_params if kind_features(mode, kind)[0] else 1


def keys_per_seed(n_params: int, finite_difference: bool) -> list[tuple[int, int]]:
    """``(sign, parameter)`` of the records of one seed, in file order
    (``[(-1, -1)]`` for kinds without finite differences)."""
    if not finite_difference:
        return [(-1, -1)]
    return [(sign, parameter) for sign in (0, 1) for parameter in range(n_params)]


def record_keys(
    first_seed: int, last_seed: int, n_params: int, finite_difference: bool
) -> Iterator[tuple[int, int, int]]:
    """``(seed, derivative, parameter)`` of every record of seeds
    ``first_seed..last_seed`` (inclusive) in file order (−1 where absent)."""
    keys = keys_per_seed(n_params, finite_difference)
    for seed in range(first_seed, last_seed + 1):
        for sign, parameter in keys:
            yield seed, sign, parameter


def record_key(
    r: int, first_seed: int, n_params: int, finite_difference: bool
) -> tuple[int, int, int]:
    """``(seed, derivative, parameter)`` of record ``r`` (0-based) of a file
    whose first seed is ``first_seed`` (−1 where absent)."""
    if not finite_difference:
        return first_seed + r, -1, -1
    rps = 2 * n_params
    return first_seed + r // rps, (r % rps) // n_params, r % n_params


def record_position(seed, sign=None, parameter=None, n_params: int = 0, first_seed: int = 0):
    """0-based position of a record within its kind (every device's files
    concatenated): the inverse of the record order.

    Finite-difference records (``sign`` and ``parameter`` given):
    ``(seed − first_seed)·2·n_params + sign·n_params + parameter``; other
    kinds: ``seed − first_seed``.  Works elementwise on NumPy arrays.
    """
    if sign is None:
        return seed - first_seed
    return (seed - first_seed) * 2 * n_params + sign * n_params + parameter


@dataclass(frozen=True)
class KindInfo:
    """One kind of a split: seeds ``[first_seed, first_seed + n_seeds)``,
    ``records_per_seed`` records each; finite_difference / gradient say
    which extra features its records carry."""

    kind: str
    first_seed: int
    n_seeds: int
    records_per_seed: int
    finite_difference: bool = False
    gradient: bool = False

    @property
    def n_records(self) -> int:
        return self.n_seeds * self.records_per_seed


def kinds(mode: str, n_s: int, n_d: int, n_params: int) -> list[KindInfo]:
    """The kinds of one split for an archive mode, in canonical order."""
    if mode not in MODES:
        raise LayoutError(f"mode must be one of {MODES}, got {mode!r}")
    if n_s < 1 or n_d < 0 or n_d > n_s:
        raise LayoutError(f"need 1 <= n_s and 0 <= n_d <= n_s, got n_s={n_s}, n_d={n_d}")
    if mode == "numerical":
        if n_d < 1 or n_params < 1:
            raise LayoutError(
                f"numerical mode needs n_d >= 1 and n_params >= 1, "
                f"got n_d={n_d}, n_params={n_params}"
            )
        return [
            KindInfo("fiducial", 0, n_s, 1),
            KindInfo(
                "derivative",
                0,
                n_d,
                records_per_seed(mode, "derivative", n_params),
                finite_difference=True,
            ),
        ]
    if mode == "gradient":
        if n_d < 1 or n_params < 1:
            raise LayoutError(
                f"gradient mode needs n_d >= 1 and n_params >= 1, "
                f"got n_d={n_d}, n_params={n_params}"
            )
        out = [KindInfo("main", 0, n_d, 1, gradient=True)]
        if n_s > n_d:
            out.append(KindInfo("remaining", n_d, n_s - n_d, 1))
        return out
    return [KindInfo("fiducial", 0, n_s, 1)]


# ------------------------------------------------------------------ devices
def device_blocks(count: int, n_devices: int, first: int = 0) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` blocks of ``count`` items (seeds or
    positions) numbered from ``first``, one per device, in device order.
    Raises :class:`LayoutError` unless ``n_devices`` divides ``count``."""
    if n_devices < 1:
        raise LayoutError(f"n_devices must be >= 1, got {n_devices}")
    if count % n_devices:
        raise LayoutError(
            f"{count} seeds do not divide between {n_devices} devices (need a divisor of {count})"
        )
    m = count // n_devices
    return [(first + d * m, first + (d + 1) * m) for d in range(n_devices)]


def device_seeds(info: KindInfo, n_devices: int, device: int) -> tuple[int, int]:
    """Seed range ``[start, stop)`` of ``device`` for a kind; raises if the
    seeds do not divide evenly between the devices."""
    try:
        return device_blocks(info.n_seeds, n_devices, info.first_seed)[device]
    except LayoutError as e:
        if n_devices < 1:
            raise
        raise LayoutError(f"kind {info.kind!r}: {e.detail}") from None


@dataclass(frozen=True)
class ShardSpec:
    """One planned file: seeds ``first_seed..last_seed`` (inclusive) of a kind
    on a device, ``n_records`` records, at ``path`` relative to the root."""

    split: str
    kind: str
    device: int
    n_devices: int
    index: int
    n_shards: int
    first_seed: int
    last_seed: int
    n_records: int
    path: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ShardSpec":
        return cls(**d)


def plan_shards(
    mode: str,
    n_s: int,
    n_d: int,
    n_params: int,
    n_devices: int,
    records_per_shard: int,
    splits=SPLITS,
    max_bytes: int | None = None,
    record_bytes: int | None = None,
) -> list[ShardSpec]:
    """Plan every file of an archive.

    Each device's seeds of each kind are cut into shards of whole seeds,
    at most ``records_per_shard`` records (and ``max_bytes`` bytes, given the
    framed size ``record_bytes`` of one record) per shard; a single seed with
    more records than the cap gets a shard of its own.  Returns the specs in
    (split, kind, device, index) order.
    """
    if records_per_shard < 1:
        raise LayoutError(f"records_per_shard must be >= 1, got {records_per_shard}")
    cap = records_per_shard
    if max_bytes is not None:
        if not record_bytes or record_bytes < 1:
            raise LayoutError("max_bytes needs record_bytes (bytes of one framed record)")
        cap = min(cap, max(1, max_bytes // record_bytes))
    for split in splits:
        if split not in SPLITS:
            raise LayoutError(f"split must be one of {SPLITS}, got {split!r}")
    specs = []
    for split in splits:
        for info in kinds(mode, n_s, n_d, n_params):
            seeds_per_shard = max(1, cap // info.records_per_seed)
            for device in range(n_devices):
                start, stop = device_seeds(info, n_devices, device)
                n_shards = max(1, math.ceil((stop - start) / seeds_per_shard))
                for index in range(n_shards):
                    a = start + index * seeds_per_shard
                    b = min(stop, a + seeds_per_shard)
                    specs.append(
                        ShardSpec(
                            split,
                            info.kind,
                            device,
                            n_devices,
                            index,
                            n_shards,
                            a,
                            b - 1,
                            (b - a) * info.records_per_seed,
                            shard_path(split, info.kind, device, n_devices, index, n_shards),
                        )
                    )
    return specs
