"""Durable local writes and lock files.  Imports nothing of ours but ``errors``.

* :func:`write_atomic` — write ``data`` to a temporary file in the target's
  directory, flush, ``fsync`` it, ``os.replace`` it over the target and
  ``fsync`` the directory, so that after a crash the path holds either the
  old or the new bytes, never a torn file.  The temporary file is removed
  when anything fails.
* :func:`atomic_writer` — the same for a file written as a stream (shards).
* :func:`fsync_file` / :func:`fsync_dir` — the two halves, for writers that
  stream into their own temporary file and rename it themselves.
* :class:`Lock` — an exclusive lock file created with ``O_CREAT|O_EXCL``
  holding JSON ``{"pid", "host", "started"}``.  A second holder gets
  :class:`LockedError` naming the holder and since when.  A lock whose pid
  is dead on this host is *stale*: by default that is a :class:`StaleLockError`
  whose message gives the exact command that clears it; with
  ``clear_stale=True`` it is removed with a one-line warning and taken.

Local paths only.  Object stores (gs://, s3://, any ``scheme://``) publish
an object atomically when its upload completes and have no directory to
fsync and no ``O_EXCL`` create, so for URLs :func:`write_atomic` and
:func:`atomic_writer` upload once via :mod:`writers.fs` and :class:`Lock`
does nothing (``acquired`` stays False): a lock object written to a bucket
could not be created exclusively, so it would only pretend to exclude.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import time
import uuid
import warnings

from typing import Iterator

from . import fs
from .errors import WriteError

TEMP_MARKER = fs.TEMP_MARKER


def _is_url(path) -> bool:
    return fs.is_url(str(path))


def fsync_file(f) -> None:
    """Flush a Python file object and fsync its descriptor."""
    f.flush()
    os.fsync(f.fileno())


fsync_dir = fs.fsync_dir


def temp_path(path) -> str:
    """A unique temporary name beside ``path`` (hidden, marked ``.tmp-``)."""
    directory, name = os.path.split(os.path.abspath(str(path)))
    return os.path.join(directory, f".{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_writer(path) -> Iterator:
    """Like :func:`writers.fs.atomic_writer` (a file object whose bytes
    appear under ``path`` only when the ``with`` block succeeds; the
    temporary file is removed on failure), and for local paths durable: the
    temporary file is fsynced before its rename and the directory after it.
    URLs: one upload after the block."""
    with fs.atomic_writer(str(path), sync=True) as f:
        yield f


def write_atomic(path, data: bytes) -> None:
    """Durably and atomically replace ``path`` with ``data``.

    Local: temp file in the same directory, write, flush, fsync, os.replace,
    fsync the directory; the temp file is removed on any failure and an
    existing ``path`` is then untouched.  URLs are uploaded in one piece
    (an object appears only when complete).  Errors become WriteError.
    """
    try:
        with atomic_writer(path) as f:
            f.write(data)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"cannot write: {e.strerror or e}", str(path)) from e


def replace_durably(tmp, path) -> None:
    """``os.replace(tmp, path)`` after fsyncing ``tmp``; then fsync the directory."""
    fd = os.open(str(tmp), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(str(tmp), str(path))
    fsync_dir(os.path.dirname(os.path.abspath(str(path))))


class LockedError(RuntimeError):
    """A lock file is held by a live process (or one on another host)."""

    def __init__(self, message: str, path: str, holder: dict | None = None):
        super().__init__(message)
        self.path = path
        self.holder = holder or {}


class StaleLockError(LockedError):
    """A lock file is held by a process that is dead on this host."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _since(started) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"


def read_lock(path) -> dict | None:
    """The holder recorded in a lock file; {} when unreadable; None when absent."""
    try:
        with open(str(path), "rb") as f:
            raw = f.read(65536)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


class Lock:
    """Exclusive lock file at ``path`` (use as a context manager).

    ``what`` names the guarded thing in messages (e.g. "archive /data/a").
    ``clear_stale``: when the recorded pid is dead on this host, remove the
    lock with a one-line warning and take it (instead of StaleLockError); the
    warning goes to ``warn(message)`` when given, else ``warnings.warn``.
    For URLs the lock is skipped (object stores have no exclusive create).
    """

    def __init__(self, path, what: str | None = None, clear_stale: bool = False, warn=None):
        self.path = str(path)
        self.what = what or self.path
        self.clear_stale = clear_stale
        self.warn = warn
        self.acquired = False
        self._token = None

    def acquire(self) -> Lock:
        if _is_url(self.path):
            return self  # documented: no lock for object stores
        host = socket.gethostname()
        record = {
            "pid": os.getpid(),
            "host": host,
            "started": time.time(),
            "token": uuid.uuid4().hex,
        }
        data = json.dumps(record).encode()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear(host)
                continue
            except OSError as e:
                raise WriteError(f"cannot create lock file: {e.strerror or e}", self.path) from e
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            self.acquired = True
            self._token = record["token"]
            return self
        raise LockedError(f"{self.what} is locked: could not take {self.path}", self.path)

    def _refuse_or_clear(self, host: str) -> None:
        holder = read_lock(self.path)
        if holder is None:
            return  # vanished meanwhile: try again
        pid, hhost = holder.get("pid"), holder.get("host")
        since = _since(holder.get("started"))
        clear = f"rm {shlex.quote(self.path)}"
        if (
            isinstance(pid, int)
            and not isinstance(pid, bool)
            and hhost == host
            and not _pid_alive(pid)
        ):
            if self.clear_stale:
                msg = f"removing stale lock {self.path} (pid {pid} on {host}, since {since}, is not running)"
                if self.warn is not None:
                    self.warn(f"warning: {msg}")
                else:
                    warnings.warn(msg, stacklevel=3)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                return
            raise StaleLockError(
                f"{self.what} has a stale lock {self.path}: pid {pid} on {host} (since {since}) "
                f"is not running; if no other process uses it, clear it with: {clear}",
                self.path,
                holder,
            )
        if not holder:
            raise LockedError(
                f"{self.what} is locked by {self.path} (unreadable holder); if no process uses it, clear it with: {clear}",
                self.path,
                holder,
            )
        where = (
            ""
            if hhost == host
            else f"; if it is no longer running on {hhost}, clear it with: {clear}"
        )
        raise LockedError(
            f"{self.what} is in use by pid {pid} on {hhost} since {since} "
            f"(lock file {self.path}){where}",
            self.path,
            holder,
        )

    def release(self) -> None:
        if not self.acquired:
            return
        self.acquired = False
        holder = read_lock(self.path)
        if holder and holder.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
