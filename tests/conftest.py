"""Test-wide set-up: 4 XLA host devices (set before jax is first imported), and
the toy Gaussian problem's data."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

from .toy_problem import toy_data  # noqa: E402


@pytest.fixture(scope="session")
def toy_1000():
    """n_s = n_d = 1000 training and validation sets of the 10-draw Gaussian."""
    return toy_data(0, 1000, 1000), toy_data(1, 1000, 1000)


@pytest.fixture(scope="session")
def cpu_devices():
    devices = jax.devices("cpu")
    assert len(devices) >= 4, "tests expect 4 XLA host devices (XLA_FLAGS set in conftest)"
    return devices


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A gcp-storage-emulator on 127.0.0.1:<free port> with bucket imnn-test; yields its URL."""
    pytest.importorskip(
        "gcp_storage_emulator", reason="gcp-storage-emulator not installed (pip install '.[test]')"
    )
    from .servers import gcs_emulator

    with gcs_emulator(tmp_path_factory.mktemp("gcs") / "log.txt") as url:
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1:<free port> with bucket imnn-test; yields its endpoint."""
    pytest.importorskip("moto.server", reason="moto[server] not installed (pip install '.[test]')")
    from .servers import s3_moto

    with s3_moto(tmp_path_factory.mktemp("s3") / "log.txt") as url:
        yield url
