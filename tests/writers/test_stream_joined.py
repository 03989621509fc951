"""Small files decoded as one run (``Reader._small_files`` / ``_decode_joined``): the
same batches as file by file, and every fault in a joined file still named by the
per-file path (file and record), as without joining."""

import os

import numpy as np
import pytest

from writers import stream_read
from writers.errors import ArchiveError, MissingFileError
from writers.manifest import read_manifest
from writers.streams import close_all, device_streams

from ..toy_problem import toy_data, write_toy_archives

N_S, N_D = 64, 32  # seeds < 128: one varint byte, every record of a kind one length


@pytest.fixture()
def archives(tmp_path):
    # 8 records a file: the fiducial stream of a device is 4 files, its derivative 16
    return write_toy_archives(
        tmp_path, toy_data(4, N_S, N_D), toy_data(5, N_S, N_D), records_per_shard=8
    )


@pytest.fixture()
def joins(monkeypatch):
    """How many joined runs were decoded, and how many files they held."""
    seen = []
    original = stream_read.Reader._decode_joined

    def counting(self, block, segs):
        ok = original(self, block, segs)
        if ok:
            seen.append(len(segs))
        return ok

    monkeypatch.setattr(stream_read.Reader, "_decode_joined", counting)
    return seen


def _epochs(root, n=2):
    streams = device_streams(root, "train", 2, 8)
    try:
        return {
            k: [[next(s) for _ in range(n * s.batches_per_epoch)] for s in v]
            for k, v in streams.items()
        }
    finally:
        close_all(streams)


@pytest.mark.parametrize("mode", ["numerical", "gradient"])
def test_joined_files_hand_out_the_per_file_batches(archives, joins, monkeypatch, mode):
    root = str(archives / mode)
    joined = _epochs(root)
    assert joins and max(joins) >= 2  # runs of small files were joined
    monkeypatch.setattr(stream_read.Reader, "_small_files", lambda self, cap: [])
    per_file = _epochs(root)
    for kind in joined:
        for a, b in zip(joined[kind], per_file[kind]):
            for x, y in zip(a, b):
                assert x.keys() == y.keys()
                for key in x:
                    np.testing.assert_array_equal(x[key], y[key])


def _first_error(root, kind):
    streams = device_streams(root, "train", 2, 8)
    try:
        with pytest.raises(ArchiveError) as e:
            for _ in range(1000):
                next(streams[kind][0])
        return e.value
    finally:
        close_all(streams)


def _damage(root, kind, file_index, how):
    m = read_manifest(root)
    entry = m.files("train", kind)[file_index]
    path = os.path.join(root, entry["path"])
    data = bytearray(open(path, "rb").read())
    rec = len(data) // entry["count"]
    if how == "flip":
        data[2 * rec + 30] ^= 0x01  # record 2's payload
    elif how == "truncate":
        del data[5 * rec + 7 :]  # record 5 cut short
    open(path, "wb").write(bytes(data))
    if how == "remove":
        os.remove(path)
    return entry["path"]


@pytest.mark.parametrize(
    "how, record, cls, text",
    [
        ("flip", 2, ArchiveError, "CRC"),
        ("truncate", 5, ArchiveError, ""),
        ("remove", None, MissingFileError, "does not exist"),
    ],
)
def test_a_fault_in_a_later_joined_file_is_named(
    archives, joins, monkeypatch, how, record, cls, text
):
    root = str(archives / "numerical")
    rel = _damage(root, "derivative", 2, how)  # the third file of device 0's derivative stream
    joined = _first_error(root, "derivative")
    monkeypatch.setattr(stream_read.Reader, "_small_files", lambda self, cap: [])
    per_file = _first_error(root, "derivative")
    assert isinstance(joined, cls) and type(joined) is type(per_file)
    assert str(joined) == str(per_file) and text in str(joined)
    assert joined.path.endswith(rel) and joined.record == record
