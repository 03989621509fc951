"""Read-ahead: one background thread per device stream, a bounded queue of batches.

A :class:`DeviceStream` is the infinite iterator of batches of one device:
a daemon thread reads its sources' records (:class:`writers.stream_read.Reader`)
epoch after epoch into a queue of at most ``prefetch`` batches (default
:func:`default_prefetch`: 4 MiB of batches, at least 2), so memory is
bounded by ``prefetch + 2`` batches (the queue's, the one being filled, the
one the consumer holds) plus, per source, one read buffer and one block of
decoded records (``tests/streaming/test_memory_bound.py`` counts them).
Batch memory comes from a :class:`writers.buffer_pool.BatchPool` of
``prefetch + POOL_SLACK`` buffers, reused once nothing refers to a batch any
more, so the steady state allocates nothing large (no heap fragmentation, no
page faults); the consumer may keep batches as long as it likes.  Errors in
the thread (corrupt or missing file) are raised from ``next()``.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref

import numpy as np

from .buffer_pool import BatchPool
from .errors import ArchiveError
from .stream_decode import Source
from .stream_read import Reader


#: buffers a stream's pool keeps beyond ``prefetch`` (see DeviceStream)
POOL_SLACK = int(os.environ.get("IMNN_STREAM_POOL_SLACK", "2"))
#: default read-ahead of a stream: as many batches as fit in this many bytes (at
#: least 2, at most one epoch). Small batches need depth: a trainer reads one kind's
#: streams at a time, so a stream refills only while the others are consumed (toy
#: archive, batches of 100 records: with 2 batches the trainer waited on input for
#: 55 % of an iteration)
PREFETCH_BYTES = 4 << 20


def batch_records(n_per_device: int, epoch: int, row_bytes: int, batch_bytes=None) -> int:
    """Records in a stream's batches: ``n_per_device``, or with ``batch_bytes`` the
    largest whole multiple of it whose decoded rows fit in that many bytes (at least
    one ``n_per_device``; at most the epoch, rounded up to whole ``n_per_device``).

    Why batches of several ``n_per_device``: every batch costs the reader, the queue
    and the consumer a fixed ~100 µs of interpreter time, so batches of 100 records of
    ~80 bytes (the toy problem: 150 batches an iteration) were bound by it."""
    if not batch_bytes:
        return n_per_device
    k = max(1, int(batch_bytes) // max(n_per_device * row_bytes, 1))
    return n_per_device * int(min(k, max(1, -(-epoch // n_per_device))))


def default_prefetch(n_per_device: int, epoch: int, row_bytes: int) -> int:
    """Batches a stream reads ahead by default (see :data:`PREFETCH_BYTES`)."""
    batches = -(-epoch // max(n_per_device, 1))
    return int(max(2, min(batches, PREFETCH_BYTES // max(n_per_device * row_bytes, 1))))


class StreamShape:
    """What a per-device stream hands out, known before it reads anything: records per
    batch and per epoch, the decoded bytes of an epoch, the read-ahead depth and the
    batch layout ``[(key, dtype, row shape)]``.  :class:`DeviceStream` (a reader thread)
    and :class:`writers.stream_worker.ProcessStream` (a reader process) are both one."""

    def __init__(
        self,
        sources: list[Source],
        n_per_device: int,
        epoch: int,
        dtype: np.dtype,
        prefetch: int | None = None,
        batch_bytes: int | None = None,
    ):
        if n_per_device < 1:
            raise ValueError(f"n_per_device must be >= 1, got {n_per_device}")
        self.sources, self.dtype = sources, np.dtype(dtype)
        self.n_per_device, self.epoch = n_per_device, epoch
        #: decoded bytes of one record (every batch key once)
        self.row_bytes = _row_bytes(sources, self.dtype)
        #: decoded bytes of one epoch (what keeping it in memory costs)
        self.epoch_bytes = epoch * self.row_bytes
        #: records per batch (:func:`batch_records`) and batches per epoch
        self.batch_records = batch_records(n_per_device, epoch, self.row_bytes, batch_bytes)
        self.batches_per_epoch = -(-epoch // self.batch_records)
        if prefetch is None:
            prefetch = default_prefetch(self.batch_records, epoch, self.row_bytes)
        #: batches read ahead: the queue's bound
        self.prefetch = max(1, int(prefetch))
        self.layout = batch_layout(sources, self.dtype)


class DeviceStream(StreamShape):
    """Infinite iterator of batches for one device (see module docstring).

    Reads ahead in a daemon thread; call :meth:`close` (or let it be garbage
    collected) to stop the thread.  Errors in the reader (corrupt file,
    missing file) are raised from ``next()``.
    """

    def __init__(self, shape: StreamShape):
        self.__dict__.update(shape.__dict__)  # a planned stream (stream_plan.plan_streams)
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce,
            # buffers the pool keeps: the queue's, the one being filled, the one the
            # consumer holds and the engine's groups in flight (2); more are allocated
            # (and freed as usual) when a consumer keeps batches longer
            args=(
                self.sources,
                self.batch_records,
                self.epoch,
                self.dtype,
                self._queue,
                self._stop,
                self.prefetch + POOL_SLACK,
            ),
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


def batch_layout(sources, dtype) -> list:
    """``[(key, dtype, row shape)]`` of a stream's batches (every key once)."""
    layout, seen = [], set()
    for s in sources:
        for _, key, typ, shape in s.fields:
            if key not in seen:
                seen.add(key)
                layout.append((key, np.dtype(np.int64) if typ == "int" else dtype, tuple(shape)))
    return layout


def _new_batch(pool: BatchPool, layout: list, size: int) -> dict:
    """Arrays for one batch of ``size`` records: a new dict of new array objects,
    whose memory the pool reuses only once nothing refers to it any more
    (:mod:`writers.buffer_pool`): consumers may keep a batch as long as they like,
    and it is never written again once queued."""
    return pool.batch(layout, size)


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


def _produce(sources, n, epoch, dtype, q, stop, keep):
    pool = BatchPool(keep)
    layout = batch_layout(sources, np.dtype(dtype))
    readers = []
    try:
        readers = [Reader(s, np.dtype(dtype)) for s in sources]
        while not stop.is_set():
            for r in readers:
                r.restart()
            done = 0
            while done < epoch and not stop.is_set():
                size = min(n, epoch - done)
                batch = _new_batch(pool, layout, size)
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
                del batch  # the consumer's now: the pool may reuse it once they drop it
    except BaseException as e:  # hand the error to the consumer
        _put(q, e, stop)
    finally:
        for r in readers:
            r.close()
        pool.clear()
