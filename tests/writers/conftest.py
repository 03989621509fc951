"""Fixtures for the writers tests: small archives and loopback object stores."""

from __future__ import annotations


import pytest

from writers.archive import write_arrays
from .writers_helpers import make_arrays


@pytest.fixture
def arrays():
    return make_arrays()


@pytest.fixture
def numerical_archive(tmp_path, arrays):
    """A 2-device numerical archive with train and validation splits."""
    fid, der, _ = arrays
    root = str(tmp_path / "archive")
    m = write_arrays(
        root,
        "numerical",
        [1.0, 2.0],
        [0.1, 0.2],
        fiducial=fid,
        derivative=der,
        validation_fiducial=fid + 10,
        validation_derivative=der + 10,
        n_devices=2,
        records_per_shard=6,
    )
    return root, m
