"""The infer loop's per-round markers (round.json, rounds.json) are written
atomically and fsynced (file and folder): a failed write keeps the previous
marker and leaves no temporary file."""

import errno
import json
import os

import pytest

from imnn_stream.app import inference


def test_round_marker_is_fsynced_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "round.json"
    synced = []
    fsync = os.fsync

    def record(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    inference._write_json(str(path), {"round": 0, "θ_hat": [0.1, 1.2]})
    assert json.loads(path.read_text()) == {"round": 0, "θ_hat": [0.1, 1.2]}
    assert str(tmp_path) in synced  # the folder, after the rename
    assert any(p.startswith(str(tmp_path / ".round.json.tmp-")) for p in synced)  # the file

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        inference._write_json(str(path), {"round": 1})
    assert json.loads(path.read_text())["round"] == 0
    assert os.listdir(tmp_path) == ["round.json"]
