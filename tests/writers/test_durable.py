"""writers.durable: fsynced atomic writes and lock files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from writers import durable
from writers.durable import Lock, LockedError, StaleLockError, write_atomic


def test_write_atomic_writes_fsyncs_and_replaces(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    path = tmp_path / "sub" / "f.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert len(synced) >= 4  # file and directory, twice
    assert os.listdir(path.parent) == ["f.json"]


def test_write_atomic_failure_removes_temp_and_keeps_old(tmp_path, monkeypatch):
    path = tmp_path / "f"
    write_atomic(path, b"old")

    def boom(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_lock_excludes_second_holder(tmp_path):
    p = tmp_path / ".lock"
    with Lock(p, what="archive X") as lock:
        assert lock.acquired
        holder = json.loads(p.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockedError, match=f"archive X is in use by pid {os.getpid()}") as e:
            Lock(p, what="archive X").acquire()
        assert "\n" not in str(e.value)
    assert not p.exists()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_reports_how_to_clear(tmp_path):
    p = tmp_path / ".lock"
    p.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}))
    with pytest.raises(StaleLockError, match="stale lock") as e:
        Lock(p).acquire()
    msg = str(e.value)
    assert "\n" not in msg and f"rm {p}" in msg
    assert p.exists()


def test_stale_lock_auto_cleared_with_warning(tmp_path):
    p = tmp_path / ".lock"
    p.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}))
    with pytest.warns(UserWarning, match="removing stale lock"):
        with Lock(p, clear_stale=True) as lock:
            assert lock.acquired
    assert not p.exists()


def test_lock_of_other_host_is_never_stale(tmp_path):
    p = tmp_path / ".lock"
    p.write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.invalid", "started": 0}))
    with pytest.raises(LockedError, match="elsewhere.invalid") as e:
        Lock(p, clear_stale=True).acquire()
    assert not isinstance(e.value, StaleLockError)


def test_lock_is_skipped_for_urls():
    with Lock("gs://bucket/archive/.generate.lock") as lock:
        assert not lock.acquired
    assert durable.fsync_dir("gs://bucket/x") is None


def test_archive_files_and_directories_are_fsynced_before_rename(tmp_path, monkeypatch):
    """Shards (writers.shard), index.parquet and manifest.json (writers.manifest,
    writers.index) are fsynced under their temporary names, then renamed, then
    their directory is fsynced (issue 11: no writes were fsynced)."""
    import numpy as np

    from writers.archive import write_arrays

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(a), str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = str(tmp_path / "a")
    m = write_arrays(root, "fiducial", [1.0], None, fiducial=np.zeros((4, 2), np.float32))
    finals = [os.path.join(root, f["path"]) for f in m.all_files()]
    finals += [os.path.join(root, "index.parquet"), os.path.join(root, "manifest.json")]
    for final in finals:
        i = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == final)
        tmp = events[i][1]
        assert ("fsync", tmp) in events[:i], final
        assert ("fsync", os.path.dirname(final)) in events[i + 1 :], final
