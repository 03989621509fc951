"""Reusable batch buffers: a stream's steady state allocates nothing large.

Why (issue 10): a fresh 16 MiB (64×64 float32 × 1000 records) or 64 MiB batch
per ``next()`` either fragments glibc's heaps (resident memory grows with the
archive) or, with the mmap threshold pinned (:mod:`writers.allocator`), is a
fresh mapping whose every page is faulted in and zeroed, then unmapped: a
third of the reader's time on a 64×64 archive.  A :class:`BatchPool` keeps up to
``keep`` buffers per stream and hands one out again once nothing uses it.

The consumer contract: **a batch's memory is reused only when no Python object
refers to it any more.**  Every batch array is a view of one pool-owned buffer
(NumPy points every view, and views of views, at that owner; buffer exports
such as ``memoryview`` or a zero-copy ``jax.device_put`` keep a view, hence the
owner, alive), so "nothing uses it" is "the pool's own references are the only
references to the owner": :func:`sys.getrefcount`.  A consumer may keep a
batch, or any slice of it, for as long as it likes (the decoded-epoch cache keeps
a whole epoch); the pool then allocates another buffer instead.  Nothing is
ever written into memory that someone can still read.
"""

from __future__ import annotations

import sys
import math
import threading

import numpy as np

__all__ = ["BatchPool", "ALIGN"]

ALIGN = 64  # byte alignment of every array carved from a buffer (XLA's for zero-copy)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class BatchPool:
    """Up to ``keep`` reusable buffers for the batches of one stream.

    :meth:`batch` returns a dict of fresh array objects (views) for ``size``
    records with the given per-record layout, carved from a buffer that nothing
    else refers to, or from a new one.  The pool tracks the ``keep`` most recent
    buffers; older ones that are still in use are forgotten (freed as usual once
    their batch is dropped), so batches a consumer keeps do not block reuse.
    """

    def __init__(self, keep: int):
        self.keep = max(1, int(keep))
        self._owners: list[np.ndarray] = []
        self._lock = threading.Lock()
        #: buffers allocated (all) and handed out again (reused); for tests and benchmarks
        self.allocated = self.reused = 0

    def _free_owner(self, nbytes: int):
        # References to a free owner: the list, the loop variable and getrefcount's argument.
        # (An index loop: enumerate's reused result tuple would hold a fourth.)
        for i in range(len(self._owners)):
            owner = self._owners[i]
            if sys.getrefcount(owner) == 3:
                if owner.nbytes >= nbytes:
                    return owner
                del owner
                self._owners.pop(i)  # too small (a larger batch than before): drop it
                return None
        return None

    def buffer(self, nbytes: int) -> np.ndarray:
        """A uint8 buffer of at least ``nbytes`` that nothing else refers to
        (callers keep only views of it)."""
        with self._lock:
            owner = self._free_owner(nbytes)
            if owner is not None:
                self.reused += 1
                return owner
            owner = np.empty(nbytes + ALIGN, np.uint8)
            self.allocated += 1
            if len(self._owners) >= self.keep:
                # all in use: stop tracking the oldest (it lives on with its batch), so
                # that batches a consumer keeps for good do not block reuse
                self._owners.pop(0)
            self._owners.append(owner)
            return owner

    def batch(self, layout: list, size: int) -> dict:
        """Arrays for ``size`` records: ``layout`` is ``[(key, dtype, row shape)]``."""
        # math.prod, not np.prod: this runs once per batch, and NumPy's reductions of
        # tiny tuples cost ~5 µs each (a tenth of a small-record stream's reader time)
        sizes = [size * math.prod(shape) * np.dtype(dtype).itemsize for _, dtype, shape in layout]
        offsets, total = [], 0
        for n in sizes:
            offsets.append(total)
            total += _aligned(n)
        owner = self.buffer(total)
        skip = (-owner.ctypes.data) % ALIGN
        out = {}
        for (key, dtype, shape), off, n in zip(layout, offsets, sizes):
            a = owner[skip + off : skip + off + n]
            out[key] = a.view(dtype).reshape((size,) + tuple(shape))
        return out

    def clear(self) -> None:
        """Forget every buffer (those still in use live on with their batches)."""
        with self._lock:
            self._owners.clear()
