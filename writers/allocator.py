"""Bound glibc's allocator so that batch-sized buffers go back to the OS.

Why (issue 10, measured): glibc raises its mmap threshold to the size of every
mmap'ed block that is freed (up to 32 MiB on 64-bit), after which batch buffers
(16 MiB for 1000 records of 64×64 float32, 64 MiB for a derivative batch) and
read chunks are carved from the malloc heaps instead.  The reader threads
allocate them (one arena each) and the consumer frees them, interleaved with
small long-lived allocations (pass-1 outputs, order checks, XLA buffers), so the
heaps fragment and their free space is never returned: the resident size grows
with the number of batches streamed, i.e. with the archive.  Measured on a 64×64
field, mlp:4, ``--n-per-device 1000``, 2 devices: peak RSS 760 MiB on a 0.16 GB
archive and 915 MiB on a 5 GB one before; 621 and 646 MiB after.

Setting the threshold explicitly (``mallopt(M_MMAP_THRESHOLD)``) turns the
dynamic adjustment off: blocks of ``threshold`` bytes or more are always mapped,
and unmapped when freed, so resident memory follows what is alive.

Default: off (``MMAP_THRESHOLD = 0``). Since the reader reuses its buffers
(:mod:`writers.buffer_pool`) nothing batch-sized is allocated in the steady state,
and the bound only costs: every XLA temporary above 1 MiB became a fresh,
page-faulted mapping. Measured on the 40.5 GB (1.6 × RAM) archive of
benchmarks/out_of_core.py (64×64, mlp:4, 2 × 512): unbounded, read 925 MB/s of a
1028 MB/s raw read (90 %), 87.8 s/iteration, peak RSS 837 MiB against 713 MiB on
the 1/32 archive at equal bytes read (the difference, ~53 bytes per record, is the
per-sample outputs, cotangents and positions of docs/streaming-memory.md); bounded
at 1 MiB the same reader ran at 37–50 % of the raw rate. ``IMNN_STREAM_MMAP_THRESHOLD``
(bytes) turns the bound on.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

__all__ = ["MMAP_THRESHOLD", "bound_allocator"]

#: allocations at least this large are mmap'ed and unmapped on free; 0: glibc's
#: dynamic threshold (the default, see the module docstring)
MMAP_THRESHOLD = 0
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_lock = threading.Lock()
_bounded = False


def bound_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes, once per process.

    Returns whether the bound is in place.  A no-op (False) off Linux/glibc,
    or when the user set ``MALLOC_MMAP_THRESHOLD_`` (their choice wins);
    ``IMNN_STREAM_MMAP_THRESHOLD`` (bytes) replaces ``threshold``, 0 leaving
    glibc's dynamic threshold alone.
    """
    global _bounded
    with _lock:
        if _bounded:
            return True
        if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
            return False
        env = os.environ.get("IMNN_STREAM_MMAP_THRESHOLD", "").strip()
        if env:
            threshold = int(env)
        if threshold <= 0:  # 0: leave glibc's dynamic threshold alone
            return False
        try:
            libc = ctypes.CDLL("libc.so.6")
            _bounded = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
        except (OSError, AttributeError):
            return False
        return _bounded
