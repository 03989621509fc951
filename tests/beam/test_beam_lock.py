"""Issue 11: an archive being generated is guarded by ``ARCHIVE/.generate.lock``:
a second ``generate`` is refused while the first runs; a lock left by a killed
run on this host is cleared with a one-line warning; the lock is never listed
in the manifest and never fails validation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import writers
from beam_jobs.driver import run_generation
from beam_jobs.job import JobError
from writers.layout import GENERATE_LOCK
from writers.manifest import read_manifest


pytestmark = pytest.mark.e2e

FIDUCIAL = dict(
    simulator="toy",
    theta_fid=[0.0, 1.0],
    delta_theta=None,
    n_s=4,
    n_d=0,
    n_devices=1,
    mode="fiducial",
    records_per_shard=2,
    batch_size=4,
    n_validation=0,
    progress=False,
)


def _write_lock(root, pid, host=None):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, GENERATE_LOCK), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "started": 0}, f)


def test_second_generate_is_refused_while_the_first_holds_the_lock(tmp_path):
    root = str(tmp_path / "a")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(root, holder.pid)
        with pytest.raises(JobError, match=f"is in use by pid {holder.pid}") as e:
            run_generation(root, **FIDUCIAL)
        assert "\n" not in str(e.value) and GENERATE_LOCK in str(e.value)
        assert os.listdir(root) == [GENERATE_LOCK]  # nothing else touched
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_cleared_with_a_warning_and_never_listed(tmp_path):
    root = str(tmp_path / "a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(root, dead.pid)
    logged = []
    result = run_generation(root, **FIDUCIAL, log=logged.append)
    assert any("removing stale lock" in m and str(dead.pid) in m for m in logged), logged
    assert not os.path.exists(os.path.join(root, GENERATE_LOCK))
    assert GENERATE_LOCK not in {f["path"] for f in result.manifest.all_files()}
    assert writers.validate(root).ok
    # a lock beside a committed archive (a run in progress) is a warning only
    _write_lock(root, os.getpid())
    report = writers.validate(root)
    assert report.ok and any(w.file == GENERATE_LOCK for w in report.warnings)
    assert read_manifest(root).n_s == 4
