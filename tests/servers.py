"""Real storage servers on loopback for the cloud-path tests: a gcp-storage-emulator
for gs:// and a moto S3 server for s3://, each on a free 127.0.0.1 port, started and
stopped by session fixtures (declared in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

BUCKET = "imnn-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc, timeout=30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start within {timeout}s")


@contextlib.contextmanager
def serve(argv, port, log_path):
    """Run ``argv`` (a server on ``port``) until the block ends."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def gcs_emulator(log_path):
    """gcp-storage-emulator with bucket imnn-test; yields its URL (STORAGE_EMULATOR_HOST)."""
    port = free_port()
    return serve(
        [
            sys.executable,
            "-c",
            "from gcp_storage_emulator.__main__ import main; main()",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            BUCKET,
        ],
        port,
        log_path,
    )


@contextlib.contextmanager
def s3_moto(log_path):
    """moto S3 server with bucket imnn-test; yields its endpoint URL."""
    port = free_port()
    with serve(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, log_path
    ) as url:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket=BUCKET)
        yield url
