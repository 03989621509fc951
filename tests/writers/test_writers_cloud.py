"""gs:// and s3:// round trips against loopback servers started by the fixtures."""

import os
import subprocess
import sys

import numpy as np
import pytest

import writers
from writers import fs
from writers.archive import write_arrays
from writers.streams import close_all, device_streams

from .writers_helpers import N_S, make_arrays


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    fs.configure(["--no_auth"])
    yield "gs://imnn-test"
    fs.configure([])


@pytest.fixture
def s3(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    flags = [
        f"--s3_endpoint_url={s3_server}",
        "--s3_region_name=us-east-1",
        "--s3_access_key_id=test",
        "--s3_secret_access_key=test",
    ]
    fs.configure(flags)
    yield "s3://imnn-test", flags
    fs.configure([])


def round_trip(root, n_devices_written=2):
    fid, der, _ = make_arrays(seed=3)
    write_arrays(
        root,
        "numerical",
        [1.0, 2.0],
        [0.1, 0.2],
        fiducial=fid,
        derivative=der,
        n_devices=n_devices_written,
        records_per_shard=5,
    )
    report = writers.validate(root)
    assert report.ok, str(report)
    for n_devices in (1, 2, 4):
        streams = device_streams(root, "train", n_devices, n_per_device=N_S // n_devices)
        try:
            got = np.concatenate([next(s)["data"] for s in streams["fiducial"]])
            np.testing.assert_array_equal(got, fid)
            got = np.concatenate([next(s)["data"] for s in streams["derivative"]])
            np.testing.assert_array_equal(
                got[: len(got)],
                der.reshape((-1,) + fid.shape[1:])[
                    np.concatenate(
                        [
                            np.arange(d * 32 // n_devices, d * 32 // n_devices + N_S // n_devices)
                            for d in range(n_devices)
                        ]
                    )
                ],
            )
        finally:
            close_all(streams)
    return fid


def test_gcs_round_trip(gcs):
    root = f"{gcs}/numerical"
    round_trip(root)
    files = fs.list_files(root)
    assert "manifest.json" in files and "index.parquet" in files
    assert not any(fs.TEMP_MARKER in f for f in files)


def test_gcs_faults_named(gcs):
    root = f"{gcs}/faulty"
    round_trip(root)
    m = writers.manifest.read_manifest(root)
    rel = m.files("train", "fiducial")[0]["path"]
    fs.delete(fs.join(root, rel))
    fs.write_bytes(fs.join(root, "train/extra.tfrecords"), b"x")
    report = writers.validate(root)
    assert {(e.file, e.message.split(":")[0]) for e in report.errors} == {
        (rel, "missing file listed in the manifest"),
        ("train/extra.tfrecords", "unlisted file"),
    }


def test_s3_round_trip_and_cli(s3, tmp_path):
    bucket, flags = s3
    root = f"{bucket}/numerical"
    round_trip(root)
    # The command line tool in a subprocess reaches the same server.
    env = dict(os.environ, IMNN_STREAM_FS_OPTIONS=" ".join(flags))
    out = subprocess.run(
        [sys.executable, "-m", "writers.cli", "validate", root],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("VALID")
