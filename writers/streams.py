"""Per-device record streams built from a manifest.

For a split and a device count, :func:`device_streams` returns, for each
kind, one infinite (repeated, unshuffled) iterator per device, each yielding
batches of up to ``n_per_device`` records (with ``batch_bytes``, whole multiples
of it) as dicts of numpy arrays::

    seed        int64(n)
    data        dtype(n, *input_shape)
    derivative  int64(n)   finite-difference records (0 below, 1 above)
    parameter   int64(n)   finite-difference records
    gradient    dtype(n, *input_shape, n_params)   gradient-mode ``main``

Device ``d`` of ``D`` reads the contiguous seed block
``[first + d·m, first + (d+1)·m)``, ``m = n_seeds / D``, whatever device
count the archive was written for (files are regrouped by seed range).
Files are read through :mod:`writers.fs` (local paths and URLs) with the
TFRecord framing and CRC32C checked here; each iterator reads ahead in a
background thread into a queue of at most ``prefetch`` batches (default: 4 MiB
of batches, at least 2; ``stream_prefetch.default_prefetch``), so memory
is bounded by ``prefetch + 2`` batches per iterator plus, per iterator,
one read buffer (at most the larger of 4 MiB and one batch of records) and
one block of decoded records (at most the larger of 1 MiB and one batch).

Files are read in large chunks, and runs of equal-length records (the
normal case: every record of a kind has one size) are located
arithmetically, framed, CRC-checked and decoded with a few NumPy operations
per run (:func:`writers.framing.scan_run`; long runs check their payload
CRCs together, see there); any record that breaks the pattern is read
through the per-record path, which names the file and record (numbered from
the start of the file) in its errors.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import fs
from .allocator import bound_allocator
from .errors import ArchiveError, LayoutError
from .layout import MANIFEST_NAME, KindInfo, device_seeds
from .manifest import Manifest, read_manifest
from .schema import RecordSpec
from .stream_decode import Source, record_fields
from .stream_plan import Segment, epoch_records, seed_segments, segments, stream_kinds
from .stream_prefetch import DeviceStream

__all__ = [
    "device_streams",
    "close_all",
    "epoch_records",
    "segments",
    "stream_kinds",
    "Segment",
    "DeviceStream",
]


def device_streams(
    root: str,
    split: str,
    n_devices: int,
    n_per_device: int,
    prefetch: Optional[int] = None,
    manifest: Optional[Manifest] = None,
    check_crc: bool = True,
    devices: Optional[list[int]] = None,
    batch_bytes: Optional[int] = None,
) -> dict[str, list[DeviceStream]]:
    """Per-kind lists of per-device batch iterators (see module docstring).

    ``batch_bytes``: batches hold the largest whole multiple of ``n_per_device``
    records that fits in this many decoded bytes (at least ``n_per_device``, never
    past an epoch's end; ``DeviceStream.batch_records``), for consumers that split
    them (small records: fewer, larger batches cost less per record).

    ``devices``: build the streams of these devices (indices of ``n_devices``) only,
    in that order (default all): a process of a multi-process fit reads its own
    devices' seed blocks and nothing else.

    Raises :class:`LayoutError` when ``n_devices`` does not divide a kind's
    seed count.  Bounds glibc's allocator first (:mod:`writers.allocator`:
    without it the batch buffers fragment the heaps and memory grows with the
    archive).
    """
    bound_allocator()
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
        streams = []
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
            streams.append(DeviceStream(sources, n_per_device, epoch, dtype, prefetch, batch_bytes))
        out[kind] = streams
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


def close_all(streams: dict) -> None:
    """Stop the reader threads of a :func:`device_streams` result."""
    for lst in streams.values():
        for s in lst:
            s.close()
