"""Which file pieces each device reads: the plan of the per-device streams.

Device ``d`` of ``D`` reads the contiguous seed block
``[first + d·m, first + (d+1)·m)``, ``m = n_seeds / D``
(:func:`writers.layout.device_seeds`), whatever device count the archive
was written for: files are regrouped by seed range into :class:`Segment`
pieces, and :func:`plan_streams` puts them together per kind and device
(:class:`writers.stream_prefetch.StreamShape`).  Pure arithmetic on the
manifest; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import fs
from .errors import ArchiveError, LayoutError
from .layout import MANIFEST_NAME, KindInfo, device_seeds
from .manifest import Manifest, read_manifest
from .schema import RecordSpec
from .stream_decode import Source, record_fields
from .stream_prefetch import StreamShape


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


def plan_streams(
    root: str,
    split: str,
    n_devices: int,
    n_per_device: int,
    prefetch: Optional[int] = None,
    manifest: Optional[Manifest] = None,
    check_crc: bool = True,
    devices: Optional[list[int]] = None,
    batch_bytes: Optional[int] = None,
) -> dict[str, list[StreamShape]]:
    """What :func:`device_streams` would open, per kind and device, without reading
    anything: each stream's sources, batch and epoch sizes and decoded bytes."""
    m = manifest if manifest is not None else read_manifest(root)
    if split not in m.layout:
        raise ArchiveError(
            f"no split {split!r} in the archive (has {list(m.layout)})",
            fs.join(root, MANIFEST_NAME),
        )
    dtype = np.dtype(m.dtype).newbyteorder("<")
    legacy_gradient = m.record_format == "imnn-0.3" and m.mode == "gradient"
    out = {}
    for kind in stream_kinds(m):
        shapes = []
        for d in range(n_devices) if devices is None else devices:
            if legacy_gradient:
                sources, epoch = _legacy_gradient_sources(
                    root, m, split, kind, n_devices, d, check_crc
                )
            else:
                sources = [
                    Source(
                        root,
                        segments(m, split, kind, n_devices, d),
                        m.kind_info(split, kind),
                        record_fields(m.record_spec(split, kind)),
                        check_crc,
                    )
                ]
                epoch = epoch_records(m, split, kind, n_devices)
            shapes.append(StreamShape(sources, n_per_device, epoch, dtype, prefetch, batch_bytes))
        out[kind] = shapes
    return out


def _legacy_gradient_sources(
    root, m: Manifest, split: str, kind: str, n_devices: int, device: int, check_crc: bool
) -> tuple[list[Source], int]:
    """Sources and epoch length of one device of an adopted reference archive
    in gradient mode: ``main`` = fiducial seeds 0..n_d-1 zipped (by seed) with
    the derivative files, whose ``data`` is dsim/dθ; ``remaining`` = the other
    fiducial seeds."""
    sub = KindInfo(
        kind, 0 if kind == "main" else m.n_d, m.n_d if kind == "main" else m.n_s - m.n_d, 1
    )
    spec = RecordSpec(tuple(m.input_shape), m.dtype, m.n_params)
    try:
        a, b = device_seeds(sub, n_devices, device)
    except LayoutError as e:
        raise LayoutError(
            f"cannot split split {split!r} between {n_devices} devices: {e.detail}", MANIFEST_NAME
        ) from None
    sources = [
        Source(
            root,
            seed_segments(m, split, "fiducial", a, b),
            m.kind_info(split, "fiducial"),
            record_fields(spec),
            check_crc,
        )
    ]
    if kind == "main":
        sources.append(
            Source(
                root,
                seed_segments(m, split, "derivative", a, b),
                m.kind_info(split, "derivative"),
                [("seed", "seed", "int", ()), ("data", "gradient", "bytes", spec.gradient_shape)],
                check_crc,
            )
        )
    return sources, b - a
