"""Read-ahead: one background thread per device stream, a bounded queue of batches.

A :class:`DeviceStream` is the infinite iterator of batches of one device:
a daemon thread reads its sources' records (:class:`writers.stream_read.Reader`)
epoch after epoch into a queue of at most ``prefetch`` batches, so memory is
bounded by ``prefetch + 2`` batches (the queue's, the one being filled, the
one the consumer holds) plus, per source, one read buffer and one block of
decoded records (``tests/streaming/test_memory_bound.py`` counts them).  Errors in the thread (corrupt or missing
file) are raised from ``next()``.
"""

from __future__ import annotations

import queue
import threading
import weakref

import numpy as np

from .errors import ArchiveError
from .stream_decode import Source
from .stream_read import Reader


class DeviceStream:
    """Infinite iterator of batches for one device (see module docstring).

    Reads ahead in a daemon thread; call :meth:`close` (or let it be garbage
    collected) to stop the thread.  Errors in the reader (corrupt file,
    missing file) are raised from ``next()``.
    """

    def __init__(
        self,
        sources: list[Source],
        n_per_device: int,
        epoch: int,
        dtype: np.dtype,
        prefetch: int = 2,
    ):
        if n_per_device < 1:
            raise ValueError(f"n_per_device must be >= 1, got {n_per_device}")
        self.n_per_device, self.epoch = n_per_device, epoch
        #: decoded bytes of one epoch (what keeping it in memory costs)
        self.epoch_bytes = epoch * _row_bytes(sources, np.dtype(dtype))
        self._queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce,
            args=(sources, n_per_device, epoch, dtype, self._queue, self._stop),
            daemon=True,
        )
        self._thread.start()
        weakref.finalize(self, self._stop.set)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._stop.set()
            raise item
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stop the reader and drop what it read ahead. Waits (up to ``timeout`` s) for the
        thread to let go of the batch it is filling, so that a closed stream holds no
        batch once this returns (the memory bound counts on it)."""
        self._stop.set()
        self._drain()  # unblock a producer waiting on a full queue
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._drain()  # what it put between the first drain and seeing the stop

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


def _new_batch(sources, size: int, dtype) -> dict:
    """Fresh arrays for one batch of ``size`` records (every batch is a new dict of
    new arrays, never written again once queued: consumers may keep them)."""
    batch = {}
    for s in sources:
        for _, key, typ, shape in s.fields:
            if key not in batch:
                batch[key] = (
                    np.empty((size,), np.int64)
                    if typ == "int"
                    else np.empty((size,) + shape, dtype)
                )
    return batch


def _row_bytes(sources, dtype) -> int:
    """Decoded bytes of one record of a stream (every batch key once)."""
    keys = {}
    for s in sources:
        for _, key, typ, shape in s.fields:
            keys.setdefault(
                key, 8 if typ == "int" else int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            )
    return sum(keys.values())


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _produce(sources, n, epoch, dtype, q, stop):
    try:
        while not stop.is_set():
            readers = [Reader(s, np.dtype(dtype)) for s in sources]
            try:
                done = 0
                while done < epoch and not stop.is_set():
                    size = min(n, epoch - done)
                    batch = _new_batch(sources, size, dtype)
                    # Each source checks its records' seeds against the device's
                    # seed range, so zipped sources are matched by seed.
                    for r in readers:
                        got = r.read_into(batch, size)
                        if got != size:
                            raise ArchiveError(
                                f"stream ended after {done + got} records of an epoch of {epoch}"
                            )
                    done += size
                    if not _put(q, batch, stop):
                        return
            finally:
                for r in readers:
                    r.close()
    except BaseException as e:  # hand the error to the consumer
        _put(q, e, stop)
