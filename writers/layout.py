"""Pure layout arithmetic: which seeds of which kind go to which device and file.

See docs/archive-contract.md.  Everything here is plain integer arithmetic;
no I/O.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import LayoutError

MODES = ("numerical", "gradient", "fiducial")
SPLITS = ("train", "validation")


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
            raise LayoutError(f"numerical mode needs n_d >= 1 and n_params >= 1, "
                              f"got n_d={n_d}, n_params={n_params}")
        return [KindInfo("fiducial", 0, n_s, 1),
                KindInfo("derivative", 0, n_d, 2 * n_params, finite_difference=True)]
    if mode == "gradient":
        if n_d < 1 or n_params < 1:
            raise LayoutError(f"gradient mode needs n_d >= 1 and n_params >= 1, "
                              f"got n_d={n_d}, n_params={n_params}")
        out = [KindInfo("main", 0, n_d, 1, gradient=True)]
        if n_s > n_d:
            out.append(KindInfo("remaining", n_d, n_s - n_d, 1))
        return out
    return [KindInfo("fiducial", 0, n_s, 1)]


def fd_position(seed: int, sign: int, parameter: int, n_params: int) -> int:
    """Flat record position of a finite-difference record within its kind."""
    return seed * 2 * n_params + sign * n_params + parameter


def device_seeds(info: KindInfo, n_devices: int, device: int) -> tuple[int, int]:
    """Seed range ``[start, stop)`` of ``device`` for a kind; raises if the
    seeds do not divide evenly between the devices."""
    if n_devices < 1:
        raise LayoutError(f"n_devices must be >= 1, got {n_devices}")
    if info.n_seeds % n_devices:
        raise LayoutError(
            f"kind {info.kind!r}: {info.n_seeds} seeds do not divide between "
            f"{n_devices} devices (need a divisor of {info.n_seeds})")
    m = info.n_seeds // n_devices
    start = info.first_seed + device * m
    return start, start + m


def shard_path(split: str, kind: str, device: int, n_devices: int, index: int,
               n_shards: int) -> str:
    """Deterministic, sortable file name relative to the archive root."""
    return (f"{split}/{kind}/device-{device:05d}-of-{n_devices:05d}/"
            f"shard-{index:05d}-of-{n_shards:05d}.tfrecords")


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


def plan_shards(mode: str, n_s: int, n_d: int, n_params: int, n_devices: int,
                records_per_shard: int, splits=SPLITS, max_bytes: int | None = None,
                record_bytes: int | None = None) -> list[ShardSpec]:
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
                    specs.append(ShardSpec(
                        split, info.kind, device, n_devices, index, n_shards, a, b - 1,
                        (b - a) * info.records_per_seed,
                        shard_path(split, info.kind, device, n_devices, index, n_shards)))
    return specs
