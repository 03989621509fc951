"""Issue 11: archives stay inside their root, and the validator never crashes
(forged record lengths, wrong manifest types and values, a fuzzed manifest)."""

from __future__ import annotations

import copy
import json
import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

import writers
from writers import fs
from writers.archive import write_arrays
from writers.cli import main as writers_cli
from writers.errors import ArchiveError
from writers.framing import masked_crc
from writers.manifest import read_manifest
from writers.streams import close_all, device_streams

from .writers_helpers import make_arrays, rewrite_manifest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def small(tmp_path):
    fid, der, _ = make_arrays(n_s=4, n_d=2, shape=(3,))
    root = str(tmp_path / "a")
    m = write_arrays(
        root, "numerical", [1.0, 2.0], [0.1, 0.2], fiducial=fid, derivative=der, records_per_shard=4
    )
    return root, m


def _set_first_path(root, path):
    def edit(d):
        d["layout"]["train"]["fiducial"]["devices"][0]["files"][0]["path"] = path

    rewrite_manifest(root, edit)


ESCAPES = [
    "../outside/x.tfrecords",
    "train/../../outside/x.tfrecords",
    "/etc/passwd",
    "gs://other-bucket/x.tfrecords",
    "file:/etc/passwd",
    "train\\fiducial\\x.tfrecords",
    "./train/x.tfrecords",
    "train//x.tfrecords",
    "",
]


@pytest.mark.parametrize("bad", ESCAPES)
def test_manifest_paths_outside_the_root_are_refused(small, bad):
    root, _ = small
    _set_first_path(root, bad)
    errs = writers.validate(root).errors
    assert len(errs) == 1 and errs[0].file == "manifest.json", errs
    msg = errs[0].message
    assert "split train, kind fiducial, device 0, file 0" in msg and repr(bad) in msg, msg
    with pytest.raises(ArchiveError, match="split train, kind fiducial, device 0"):
        read_manifest(root)
    with pytest.raises(ArchiveError, match="split train, kind fiducial"):
        device_streams(root, "train", 1, 2)
    with pytest.raises(ArchiveError, match="split train, kind fiducial"):
        writers.TFRecords.from_manifest(root)


def test_escaping_file_is_never_read(small, tmp_path):
    """Before the fix, fit read ``../outside/x.tfrecords``; now nothing is opened."""
    root, m = small
    outside = tmp_path / "outside"
    outside.mkdir()
    src = os.path.join(root, m.files("train", "fiducial")[0]["path"])
    (outside / "x.tfrecords").write_bytes(open(src, "rb").read())
    _set_first_path(root, "../outside/x.tfrecords")
    with pytest.raises(ArchiveError, match="leaves the archive root"):
        streams = device_streams(root, "train", 1, 2)
        close_all(streams)


def test_index_path_is_confined(small):
    root, _ = small
    rewrite_manifest(root, lambda d: d.update(index="../index.parquet"))
    (err,) = writers.validate(root).errors
    assert "index: path '../index.parquet'" in err.message


@pytest.mark.parametrize("root", ["gs://b/a", "s3://b/a", "/data/a"])
@pytest.mark.parametrize("part", ["/etc/passwd", "../x", "train/../../x"])
def test_fs_join_keeps_parts_inside_the_root(root, part):
    with pytest.raises(ArchiveError, match="not a relative path inside"):
        fs.join(root, part)
    assert fs.join(root, "train/x.tfrecords").startswith(root + "/")


def test_from_archive_refuses_escaping_paths(small):
    im = pytest.importorskip("imnn_stream")
    import jax
    import optax

    root, _ = small
    for bad in ("../outside/x.tfrecords", "/etc/passwd"):
        _set_first_path(root, bad)
        with pytest.raises(ArchiveError, match="split train, kind fiducial"):
            im.DatasetNumericalGradientIMNN.from_archive(
                root,
                model=im.models.mlp((4,), 2),
                optimiser=optax.adam(1e-3),
                key_or_state=jax.random.PRNGKey(0),
                host=jax.devices()[0],
                devices=jax.devices()[:1],
                n_per_device=2,
            )


@pytest.mark.e2e
def test_fit_command_refuses_escaping_paths(small, tmp_path):
    root, _ = small
    _set_first_path(root, "../outside/x.tfrecords")
    out = subprocess.run(
        [sys.executable, "-m", "imnn_stream", "fit", root, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode != 0
    assert "leaves the archive root" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run" / "imnn.pkl").exists()


# ------------------------------------------------------------------ never crash
def _forge_length(path, length):
    """Give the first record a forged length with a valid header CRC."""
    with open(path, "r+b") as f:
        header = struct.pack("<Q", length)
        f.write(header + struct.pack("<I", masked_crc(header)))


@pytest.mark.parametrize("length", [1 << 40, (1 << 64) - 1, (1 << 63) + 5])
def test_forged_record_length_is_a_named_error(small, length):
    root, m = small
    rel = m.files("train", "fiducial")[0]["path"]
    _forge_length(os.path.join(root, rel), length)
    errs = [e for e in writers.validate(root).errors if e.file == rel]
    assert errs and errs[0].record == 0, errs
    assert f"record length {length}" in errs[0].message
    assert "exceeds the remaining file size" in errs[0].message


@pytest.mark.parametrize("length", [1 << 40, (1 << 64) - 1])
def test_forged_record_length_in_the_stream_reader_is_a_named_error(tmp_path, length):
    """The fit's reader (not only the validator) names the record instead of allocating
    the forged length (MemoryError / OverflowError before). The shard is larger than the
    reader's first read, so the file's end is not yet in view."""
    fid, der, _ = make_arrays(n_s=4, n_d=2, shape=(256, 256))
    root = str(tmp_path / "a")
    m = write_arrays(
        root, "numerical", [1.0, 2.0], [0.1, 0.2], fiducial=fid, derivative=der, records_per_shard=4
    )
    rel = m.files("train", "fiducial")[0]["path"]
    _forge_length(os.path.join(root, rel), length)
    streams = device_streams(root, "train", 1, 2, manifest=m)
    try:
        with pytest.raises(ArchiveError, match="record 0"):
            for _ in range(4):
                next(streams["fiducial"][0])
    finally:
        close_all(streams)


def test_forged_record_length_cli_one_line(small, capsys):
    root, m = small
    rel = m.files("train", "fiducial")[0]["path"]
    _forge_length(os.path.join(root, rel), (1 << 64) - 1)
    assert writers_cli(["validate", root]) == 1
    err = capsys.readouterr().err
    assert "exceeds the remaining file size" in err and "Traceback" not in err


BAD_FIELDS = [
    ({"delta_theta": [0.0, 0.2]}, "must be finite and > 0"),
    ({"delta_theta": [-0.1, 0.2]}, "must be finite and > 0"),
    ({"theta_fid": ["a", 2.0]}, "theta_fid: expected numbers"),
    ({"theta_fid": [float("nan"), 2.0]}, "theta_fid: values must be finite"),
    ({"theta_fid": [float("inf"), 2.0]}, "theta_fid: values must be finite"),
    ({"delta_theta": "0.1"}, "delta_theta: expected a list"),
    ({"record_format": "imnn-9"}, "unknown record format"),
    ({"mode": "quantum"}, "unknown mode"),
    ({"n_s": -4}, "n_s: expected an integer >= 1"),
    ({"n_d": "2"}, "n_d: expected an integer"),
    ({"n_devices": 0}, "n_devices: expected an integer >= 1"),
    ({"input_shape": 3}, "input_shape"),
    ({"input_shape": [10**9, 10**9]}, "2 GiB"),
    ({"layout": []}, "layout: expected an object"),
    ({"splits": "train"}, "splits"),
    ({"base_seeds": {"train": "x"}}, "base_seeds.train"),
    ({"simulator": 3}, "simulator"),
    ({"dtype": 32}, "dtype"),
]


@pytest.mark.parametrize("edit,message", BAD_FIELDS)
def test_bad_manifest_values_are_named_errors(small, edit, message):
    root, _ = small
    rewrite_manifest(root, lambda d: d.update(edit))
    report = writers.validate(root)
    assert not report.ok and any(message in e.message for e in report.errors), report.errors


def test_wrong_types_deep_in_the_layout(small):
    root, _ = small

    def edit(d):
        f = d["layout"]["train"]["derivative"]["devices"][0]["files"][0]
        f["count"], f["last_seed"] = "8", None

    rewrite_manifest(root, edit)
    (err,) = writers.validate(root).errors
    assert "files[0] (split train, kind derivative, device 0, file 0).count" in err.message


# ------------------------------------------------------------------ manifest fuzz
_VALUES = [
    None,
    True,
    False,
    -1,
    0,
    1,
    2.5,
    10**30,
    -(10**30),
    float("nan"),
    float("inf"),
    "",
    "x",
    "../x",
    [],
    [1],
    ["a"],
    {},
    {"a": 1},
    [None, None],
]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(d, path, value):
    d = copy.deepcopy(d)
    parent = d
    for p in path[:-1]:
        parent = parent[p]
    if value is _DELETE:
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    return d


_DELETE = object()


def test_manifest_fuzz_validate_never_crashes(small, capsys):
    root, _ = small
    mpath = os.path.join(root, "manifest.json")
    with open(mpath) as f:
        original = json.load(f)
    paths = [p for p in _paths(original) if p]
    rng = random.Random(11)
    cases = [(p, v) for p in paths for v in (rng.choice(_VALUES), _DELETE)]
    rng.shuffle(cases)
    cases = cases[:250]
    assert len({c[0][0] for c in cases}) >= len(original) - 1  # every top-level field
    for path, value in cases:
        d = _mutate(original, path, value)
        with open(mpath, "w") as f:
            json.dump(d, f)
        report = writers.validate(root)
        assert not any("internal error" in e.message for e in report.errors), (path, value, report)
        code = writers_cli(["validate", root])
        out = capsys.readouterr()
        assert code == (0 if report.ok else 1), (path, value)
        assert "Traceback" not in out.err + out.out
        lines = out.err.splitlines()
        assert len(lines) == len(report.errors) + len(report.warnings)
        assert all(ln.startswith(("error: ", "warning: ")) for ln in lines), lines
        if not report.ok and report.errors[0].file == "manifest.json":
            assert len(lines) >= 1 and out.out.startswith("INVALID")


@pytest.mark.e2e
def test_validate_command_one_line_on_stderr(small):
    root, _ = small
    rewrite_manifest(root, lambda d: d.update(n_s="lots"))
    out = subprocess.run(
        [sys.executable, "-m", "imnn_stream", "validate", root],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 1, out
    assert len(out.stderr.strip().splitlines()) == 1 and "n_s" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_small_archive_is_valid(small):
    root, _ = small
    assert writers.validate(root).ok
    np.testing.assert_equal(read_manifest(root).n_s, 4)
