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


from .allocator import bound_allocator
from .manifest import Manifest, read_manifest
from .stream_plan import Segment, epoch_records, plan_streams, segments, stream_kinds
from .stream_prefetch import DeviceStream

__all__ = [
    "device_streams",
    "plan_streams",
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
    decode="thread",
) -> dict[str, list]:
    """Per-kind lists of per-device batch iterators (see module docstring).

    ``batch_bytes``: batches hold the largest whole multiple of ``n_per_device``
    records that fits in this many decoded bytes (at least ``n_per_device``, never
    past an epoch's end; ``DeviceStream.batch_records``), for consumers that split
    them (small records: fewer, larger batches cost less per record).

    ``devices``: build the streams of these devices (indices of ``n_devices``) only,
    in that order (default all): a process of a multi-process fit reads its own
    devices' seed blocks and nothing else.

    ``decode``: where each stream's records are read and decoded: ``"thread"`` (a
    reader thread in this process, :class:`DeviceStream`), ``"process"`` (one reader
    process for all such streams, :class:`writers.stream_worker.ProcessStream`: small
    records, whose decoding would hold this process's GIL), or a function of the
    :func:`plan_streams` dict returning the same dict of ``"thread"``/``"process"``.

    Raises :class:`LayoutError` when ``n_devices`` does not divide a kind's
    seed count.  Bounds glibc's allocator first (:mod:`writers.allocator`:
    without it the batch buffers fragment the heaps and memory grows with the
    archive).
    """
    bound_allocator()
    m = manifest if manifest is not None else read_manifest(root)
    plan = plan_streams(
        root, split, n_devices, n_per_device, prefetch, m, check_crc, devices, batch_bytes
    )
    how = decode(plan) if callable(decode) else {k: [decode] * len(v) for k, v in plan.items()}
    out = {kind: [None] * len(shapes) for kind, shapes in plan.items()}
    remote = []
    for kind, shapes in plan.items():
        for i, shape in enumerate(shapes):
            if how[kind][i] == "process":
                remote.append((kind, i, shape))
            elif how[kind][i] == "thread":
                out[kind][i] = DeviceStream(shape)
            else:
                raise ValueError(f"decode must be 'thread' or 'process', got {how[kind][i]!r}")
    if remote:
        from .stream_worker import start

        config = dict(
            root=root,
            split=split,
            n_devices=n_devices,
            n_per_device=n_per_device,
            prefetch=prefetch,
            manifest=m.to_json(),
            check_crc=check_crc,
            devices=devices,
            batch_bytes=batch_bytes,
        )
        for (kind, i, _), stream in zip(remote, start(config, remote)):
            out[kind][i] = stream
    return out


def close_all(streams: dict) -> None:
    """Stop the reader threads of a :func:`device_streams` result."""
    for lst in streams.values():
        for s in lst:
            s.close()
