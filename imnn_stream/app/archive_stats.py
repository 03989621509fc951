"""Input normalisation of an archive's trainer: the statistics of its fiducial
training inputs, from the manifest's ``input_statistics`` where the writer
recorded them (``generate``, ``write_arrays``, ``adopt``: no read), else read
once as a stream (bounded memory) before the fit (archives written before the
manifest recorded them, or statistics invalid for the transform)."""

from __future__ import annotations

from ..normalise import Accumulator, Normalisation, from_statistics

__all__ = ["archive_normalisation", "read_normalisation", "fiducial_sample", "fiducial_batches"]


def archive_normalisation(archive, transform="none", batch=1024) -> Normalisation:
    """(T(x) − m)/s with m, s of T(x) over the fiducial inputs of the train split;
    ``transform="auto"`` chooses T from the same statistics (``normalise.choose_transform``)."""
    from writers.manifest import read_manifest

    m = read_manifest(archive)
    stats = m.input_stats()
    if stats is not None and (stats.valid(transform) or transform == "auto"):
        return from_statistics(stats, transform)
    return read_normalisation(archive, transform, batch, m)


def read_normalisation(archive, transform="none", batch=1024, manifest=None) -> Normalisation:
    """The normalisation of :func:`archive_normalisation`, reading every
    fiducial training input (every kind of fiducial simulations: gradient-mode
    ``main`` and ``remaining``)."""
    from writers.manifest import read_manifest

    m = manifest if manifest is not None else read_manifest(archive)
    acc = Accumulator(m.input_shape, transform)
    for b in fiducial_batches(archive, batch, manifest=m):
        acc.update(b)
    return acc.finish()


def fiducial_sample(archive, n: int, manifest=None):
    """The first ``n`` (or fewer) fiducial training inputs float(≤n, *input_shape),
    for a fresh network's calibration (``Trainer.calibrate``)."""
    import numpy as np

    parts = [
        np.array(b)  # a copy: the reader reuses its batch buffers
        for b in fiducial_batches(archive, min(n, 1024), limit=n, manifest=manifest)
    ]
    return np.concatenate(parts)


def fiducial_batches(archive, batch=1024, limit=None, manifest=None):
    """Yield the fiducial training inputs float(≤batch, *input_shape) in archive
    order, kind by kind, ``limit`` of them at most (streamed: bounded memory)."""
    from writers.input_stats import FIDUCIAL_KINDS
    from writers.manifest import read_manifest
    from writers.streams import close_all, device_streams, epoch_records, stream_kinds

    m = manifest if manifest is not None else read_manifest(archive)
    counts = {k: epoch_records(m, "train", k, 1) for k in stream_kinds(m) if k in FIDUCIAL_KINDS}
    left = sum(counts.values()) if limit is None else int(limit)
    streams = device_streams(archive, "train", 1, min(max(counts.values()), batch), manifest=m)
    try:
        for kind, n in counts.items():
            it, got = streams[kind][0], 0
            while got < n and left > 0:
                b = next(it)["data"][: min(n - got, left)]
                got += len(b)
                left -= len(b)
                yield b
    finally:
        close_all(streams)
