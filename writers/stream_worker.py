"""Decoding in a reader process: device streams whose reader threads run in a
child interpreter, so that their Python work never holds the trainer's GIL.

Why (issue 10): a small record (the toy problem's ~80 bytes) costs the reader
about 0.5 µs of interpreter time to frame, check and decode, even vectorised;
15 000 of them an iteration, in the trainer's process, competed with the
trainer's own dispatch for the interpreter lock. Measured on 2 cores, toy
problem, 2 devices, every pass read: 32 ms an iteration with threads against
15 ms for the same batches already in host memory.

One child process (``python -m writers.stream_worker``) serves every stream a
:func:`start` call is given. It plans them again from the same arguments
(:func:`writers.stream_plan.plan_streams`), runs each as a
:class:`writers.stream_prefetch.DeviceStream` (a reader thread, as in the trainer's
process) and pumps its batches into the stream's own pipe. The trainer's side,
:class:`ProcessStream`, receives each batch array straight into a
:class:`writers.buffer_pool.BatchPool` buffer (``recv_bytes_into``: the pipe's
copy is the only one). Per batch, over the stream's pipe:

* a header, JSON: ``{"n": records}``, or an error ``{"error": class name,
  "detail": ..., "path": ..., "record": ...}`` (re-raised as the same
  :class:`writers.errors.ArchiveError` subclass, naming the same file and
  record);
* then one message per batch array, in :func:`~writers.stream_prefetch.batch_layout`
  order: its raw bytes (``n`` rows).

Nothing is pickled. The child's stdin carries one JSON line of configuration;
its end (the trainer closed every stream, or died) ends the child. A full pipe
blocks the pump, so the read-ahead bound is the child's stream's (``prefetch``
batches) plus what the pipe holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no reader processes (decode="auto" picks threads)
    fcntl = None

from . import errors
from .buffer_pool import BatchPool
from .stream_prefetch import POOL_SLACK, StreamShape

__all__ = ["ProcessStream", "start"]

#: the error classes a reader process may report, by name (anything else: RuntimeError)
_ERRORS = {
    c.__name__: c for c in (errors.ArchiveError, errors.MissingFileError, errors.LayoutError)
}


class _Child:
    """The reader process and how many of its streams are still open."""

    def __init__(self, config: dict, fds: list[int]):
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        # the child imports ``writers`` from where this process did (a checkout on
        # sys.path, not only an installed package)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "writers.stream_worker"],
            stdin=subprocess.PIPE,
            pass_fds=fds,
            env=env,
        )
        self.proc.stdin.write((json.dumps(config) + "\n").encode())
        self.proc.stdin.flush()
        self.open = len(fds)
        self._lock = threading.Lock()
        weakref.finalize(self, _stop, self.proc)

    def release(self) -> None:
        with self._lock:
            self.open -= 1
            last = self.open == 0
        if last:
            _stop(self.proc)


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """End of stdin: the child exits; killed if it has not within ``timeout`` s."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ProcessStream(StreamShape):
    """Infinite iterator of one device's batches decoded in a reader process (see
    module docstring); the interface of :class:`writers.stream_prefetch.DeviceStream`."""

    def __init__(self, shape: StreamShape):
        self.__dict__.update(shape.__dict__)
        self._conn = None
        self._child = None
        self._pool = BatchPool(self.prefetch + POOL_SLACK)

    def _attach(self, conn: Connection, child: _Child) -> None:
        self._conn, self._child = conn, child

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._conn is None:
            raise RuntimeError("this stream is closed")
        header = json.loads(self._recv(self._conn.recv_bytes))
        if "error" in header:
            cls = _ERRORS.get(header["error"])
            if cls is None:
                raise RuntimeError(f"reader process: {header['error']}: {header['detail']}")
            raise cls(header["detail"], header.get("path"), header.get("record"))
        batch = self._pool.batch(self.layout, int(header["n"]))
        for key, _, _ in self.layout:
            a = batch[key]
            got = self._recv(self._conn.recv_bytes_into, a.reshape(-1).view(np.uint8))
            if got != a.nbytes:
                raise RuntimeError(f"reader process: {key!r}: {got} bytes, expected {a.nbytes}")
        return batch

    def _recv(self, fn, *args):
        try:
            return fn(*args)
        except (EOFError, OSError):
            try:
                code = self._child.proc.wait(1.0)
            except subprocess.TimeoutExpired:  # still running: its pipe broke
                code = None
            raise RuntimeError(
                f"the reader process of {self.sources[0].root} ended (exit status {code})"
            ) from None

    def close(self, timeout: float = 10.0) -> None:
        """Stop this stream (the child's pump sees the closed pipe); the child exits
        once every stream it serves is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            self._child.release()
        self._pool.clear()


#: kernel buffer asked for each stream's pipe: a whole batch of small records (the
#: trainers' batches are at most ``sources.BATCH_BYTES``, 1 MiB) then waits in the pipe
#: and the trainer's receive is a copy. With the default 64 KiB the child could only
#: write a batch while the trainer read it (toy: 8.6 ms an iteration waiting on it)
PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    """Ask for :data:`PIPE_BYTES` of pipe buffer (Linux; capped by
    ``/proc/sys/fs/pipe-max-size``; elsewhere, or if refused, the default stays)."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if setsize is None:
        return
    for size in (PIPE_BYTES, PIPE_BYTES // 4):
        try:
            fcntl.fcntl(fd, setsize, size)
            return
        except OSError:
            continue


def start(config: dict, shapes: list[tuple[str, int, StreamShape]]) -> list[ProcessStream]:
    """One reader process serving the streams ``shapes`` = ``[(kind, position in the
    plan's list of that kind, shape)]`` (:func:`writers.stream_plan.plan_streams`);
    ``config``: ``plan_streams``'s arguments (``manifest`` as its JSON dict). Returns
    their :class:`ProcessStream`."""
    streams, ends, wanted = [], [], []
    for kind, d, shape in shapes:
        r, w = os.pipe()
        _widen(w)
        streams.append((ProcessStream(shape), Connection(r, writable=False)))
        ends.append(w)
        wanted.append([kind, d, w])
    try:
        child = _Child(dict(config, streams=wanted), ends)
    finally:
        for w in ends:
            os.close(w)  # the child's now: its end closes when it exits
    for s, conn in streams:
        s._attach(conn, child)
    return [s for s, _ in streams]


# ----------------------------------------------------------------- the child's side


def _pump(stream, conn: Connection) -> None:
    """Send ``stream``'s batches into ``conn`` until the trainer closes it."""
    try:
        for batch in stream:
            conn.send_bytes(json.dumps({"n": len(batch["seed"])}).encode())
            for key in stream.layout:
                conn.send_bytes(batch[key[0]].reshape(-1).view(np.uint8))
            del batch
    except (BrokenPipeError, ConnectionResetError):
        pass  # the trainer closed this stream
    except Exception as e:  # noqa: BLE001 (every reader error goes to the trainer)
        header = {"error": type(e).__name__, "detail": getattr(e, "detail", str(e))}
        if isinstance(e, errors.ArchiveError):
            header.update(path=e.path, record=e.record)
        try:
            conn.send_bytes(json.dumps(header).encode())
        except OSError:
            pass
    finally:
        stream.close()
        conn.close()


def main() -> None:
    from .allocator import bound_allocator
    from .manifest import Manifest
    from .stream_plan import plan_streams
    from .stream_prefetch import DeviceStream

    bound_allocator()  # as device_streams does: batch buffers must not fragment the heap
    config = json.loads(sys.stdin.readline())
    wanted = config.pop("streams")
    config["manifest"] = Manifest.from_json(config["manifest"])
    plan = plan_streams(**config)
    for kind, i, fd in wanted:
        stream = DeviceStream(plan[kind][i])
        conn = Connection(fd, readable=False)
        threading.Thread(target=_pump, args=(stream, conn), daemon=True).start()
    sys.stdin.buffer.read()  # until the trainer closes stdin (or dies)
    os._exit(0)  # the pumps are daemons blocked on full pipes: no clean-up to wait for


if __name__ == "__main__":
    main()
