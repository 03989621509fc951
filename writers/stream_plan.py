"""Which file pieces each device reads: the plan of the per-device streams.

Device ``d`` of ``D`` reads the contiguous seed block
``[first + d·m, first + (d+1)·m)``, ``m = n_seeds / D``
(:func:`writers.layout.device_seeds`), whatever device count the archive
was written for: files are regrouped by seed range into :class:`Segment`
pieces.  Pure arithmetic on the manifest; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LayoutError
from .layout import MANIFEST_NAME, device_seeds
from .manifest import Manifest


@dataclass(frozen=True)
class Segment:
    """Records ``[skip, skip + take)`` of one file (path relative to root)."""

    path: str
    skip: int
    take: int
    first_seed: int  # seed of the first record read


def stream_kinds(manifest: Manifest) -> list[str]:
    """Kinds the trainers consume for this archive's mode."""
    return {
        "numerical": ["fiducial", "derivative"],
        "gradient": ["main", "remaining"] if manifest.n_s > manifest.n_d else ["main"],
        "fiducial": ["fiducial"],
    }[manifest.mode]


def segments(
    manifest: Manifest, split: str, kind: str, n_devices: int, device: int
) -> list[Segment]:
    """The file pieces device ``device`` of ``n_devices`` reads for a kind."""
    info = manifest.kind_info(split, kind)
    try:
        a, b = device_seeds(info, n_devices, device)
    except LayoutError as e:
        raise LayoutError(
            f"cannot split split {split!r} between {n_devices} devices: {e.detail} "
            f"(archive written for {manifest.n_devices})",
            MANIFEST_NAME,
        ) from None
    return seed_segments(manifest, split, kind, a, b)


def seed_segments(m: Manifest, split: str, kind: str, a: int, b: int) -> list[Segment]:
    """The file pieces holding seeds [a, b) of a kind."""
    rps = m.kind_info(split, kind).records_per_seed
    out = []
    for f in m.files(split, kind):
        lo, hi = max(a, f["first_seed"]), min(b, f["last_seed"] + 1)
        if lo < hi:
            out.append(Segment(f["path"], (lo - f["first_seed"]) * rps, (hi - lo) * rps, lo))
    return out


def epoch_records(manifest: Manifest, split: str, kind: str, n_devices: int) -> int:
    """Records of ``kind`` per device per epoch for ``n_devices`` devices."""
    info = manifest.kind_info(split, kind)
    a, b = device_seeds(info, n_devices, 0)
    return (b - a) * info.records_per_seed
