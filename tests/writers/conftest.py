"""Fixtures for the writers tests: small archives and loopback object stores."""
from __future__ import annotations

import subprocess
import sys

import pytest

from writers.archive import write_arrays
from writers_helpers import free_port, make_arrays, wait_port


@pytest.fixture
def arrays():
    return make_arrays()


@pytest.fixture
def numerical_archive(tmp_path, arrays):
    """A 2-device numerical archive with train and validation splits."""
    fid, der, _ = arrays
    root = str(tmp_path / "archive")
    m = write_arrays(root, "numerical", [1.0, 2.0], [0.1, 0.2], fiducial=fid, derivative=der,
                     validation_fiducial=fid + 10, validation_derivative=der + 10,
                     n_devices=2, records_per_shard=6)
    return root, m


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A gcp-storage-emulator on 127.0.0.1:<free port>; yields its host."""
    pytest.importorskip("gcp_storage_emulator",
                        reason="gcp-storage-emulator not installed (pip install '.[test]')")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from gcp_storage_emulator.__main__ import main; main()",
         "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
         "--default-bucket", "imnn-test"],
        stdout=open(tmp_path_factory.mktemp("server") / "log.txt", "wb"),
        stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1:<free port> with bucket imnn-test;
    yields its endpoint URL."""
    pytest.importorskip("moto.server", reason="moto[server] not installed (pip install '.[test]')")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(tmp_path_factory.mktemp("server") / "log.txt", "wb"),
        stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        import boto3
        boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test"
                     ).create_bucket(Bucket="imnn-test")
        yield url
    finally:
        _stop(proc)

