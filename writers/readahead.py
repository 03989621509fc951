"""A read-only file over an object in a bucket: concurrent ranged GETs with a
bounded read-ahead.

Object stores serve one request at a time per connection at a rate set by the
request's latency and the server, not by the network: a plain sequential reader
(Beam's ``GcsIO``/``S3IO`` readers, google-cloud-storage's ``BlobReader``) waits
for every chunk in turn. :class:`RangedReader` cuts the object into fixed chunks
(``chunk`` bytes, 8 MiB by default) and, from the chunk being read, keeps the
next ones in flight on a small shared thread pool. Memory per open reader is
bounded: at most ``ahead`` chunks in flight or waiting plus the current one.

It is what :func:`writers.fs.open_read` returns for s3:// objects, and for
gs:// with ``IMNN_STREAM_READ_AHEAD=1`` (see :func:`enabled`). It has the
methods the readers of this package use: ``read``, ``readinto``, ``seek``,
``tell``, ``close`` and the context manager. A seek outside the chunks held
drops them and starts reading ahead from the new position.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

__all__ = ["RangedReader", "CHUNK", "AHEAD", "THREADS", "enabled"]

#: bytes per ranged GET
CHUNK = int(os.environ.get("IMNN_STREAM_READ_CHUNK_MIB", "8")) << 20
#: chunks kept in flight ahead of the one being read, per open reader
AHEAD = int(os.environ.get("IMNN_STREAM_READ_AHEAD_CHUNKS", "3"))
#: threads of the pool shared by every reader of the process
THREADS = int(os.environ.get("IMNN_STREAM_READ_THREADS", "8"))

_pool: Optional[ThreadPoolExecutor] = None
_pool_pid = None
_pool_lock = threading.Lock()


def enabled(scheme: str = "s3") -> bool:
    """Whether reads of ``scheme`` URLs read ahead (``IMNN_STREAM_READ_AHEAD``: 1 for
    gs:// and s3://, 0 for neither; default ``auto``: s3:// only, where it measured
    1.3× the sequential reads on the loopback moto server, while on the
    gcp-storage-emulator it was no faster than Beam's reader — see
    benchmarks/results/bucket_read.json)."""
    v = os.environ.get("IMNN_STREAM_READ_AHEAD", "auto").lower()
    if v == "auto":
        return scheme == "s3"
    return v not in ("0", "", "false", "no")


def _executor() -> ThreadPoolExecutor:
    """The process's fetch pool (rebuilt in a forked child, whose copy has no threads)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="ranged-get")
            _pool_pid = os.getpid()
        return _pool


class RangedReader(io.RawIOBase):
    """Binary, seekable, read-only view of ``size`` bytes fetched by
    ``fetch(start, end) -> bytes`` (``end`` exclusive), ``chunk`` bytes per call,
    up to ``ahead`` calls ahead of the read position, on a shared thread pool."""

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        size: int,
        name: str = "",
        chunk: Optional[int] = None,
        ahead: Optional[int] = None,
    ):
        super().__init__()
        chunk = CHUNK if chunk is None else chunk
        ahead = AHEAD if ahead is None else ahead
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        self._fetch, self.size, self.name = fetch, int(size), name
        self.chunk, self.ahead = int(chunk), max(0, int(ahead))
        self._pos = 0
        self._n_chunks = -(-self.size // self.chunk)
        self._pending: dict[int, Future] = {}  # chunk index -> fetch
        self._k, self._data = -1, b""  # the chunk being read

    # -- io.RawIOBase
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("seek of a closed file")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed file")
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if end <= self._pos:
            return b""
        parts = []
        while self._pos < end:
            k, off = divmod(self._pos, self.chunk)
            data = self._chunk(k)
            take = min(len(data) - off, end - self._pos)
            if take <= 0:  # the object is shorter than its stated size
                break
            parts.append(data if off == 0 and take == len(data) else data[off : off + take])
            self._pos += take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            for fut in self._pending.values():
                fut.cancel()
            self._pending.clear()
            self._data = b""
        super().close()

    # -- chunks
    def _submit(self, k: int) -> None:
        if k < self._n_chunks and k not in self._pending:
            start = k * self.chunk
            self._pending[k] = _executor().submit(
                self._fetch, start, min(start + self.chunk, self.size)
            )

    def _chunk(self, k: int) -> bytes:
        """Chunk ``k``'s bytes; keeps chunks k+1..k+ahead in flight and drops
        any other."""
        if k != self._k:
            for j in [j for j in self._pending if j < k or j > k + self.ahead]:
                self._pending.pop(j).cancel()  # behind us, or beyond a seek
            self._submit(k)
            for j in range(k + 1, k + 1 + self.ahead):
                self._submit(j)
            fut = self._pending.pop(k)
            self._data, self._k = b"", -1  # not held while waiting for the next
            self._data, self._k = fut.result(), k
        return self._data
