"""Input normalisation of an archive's trainer: the statistics of its fiducial
training inputs, read once as a stream (bounded memory) before the fit."""

from __future__ import annotations

from ..normalise import Accumulator, Normalisation

__all__ = ["archive_normalisation"]


def archive_normalisation(archive, transform="none", batch=1024) -> Normalisation:
    """(T(x) − m)/s with m, s of T(x) over the fiducial inputs of the train split."""
    from writers.manifest import read_manifest
    from writers.streams import close_all, device_streams, epoch_records

    m = read_manifest(archive)
    kind = "fiducial" if "fiducial" in m.kinds("train") else "main"
    n = epoch_records(m, "train", kind, 1)
    streams = device_streams(archive, "train", 1, min(n, batch), manifest=m)
    acc = Accumulator(m.input_shape, transform)
    try:
        it, got = streams[kind][0], 0
        while got < n:
            b = next(it)["data"]
            acc.update(b)
            got += len(b)
    finally:
        close_all(streams)
    return acc.finish()
