"""Manifest evolution (issue 11): version 1 readers accept a newer minor
version's unknown optional fields with a one-line warning, refuse another
major version naming both, and still refuse unknown fields of their own version."""

from __future__ import annotations

import numpy as np
import pytest

import writers
from writers.archive import write_arrays
from writers.errors import ArchiveError
from writers.manifest import read_manifest

from .writers_helpers import rewrite_manifest


@pytest.fixture
def root(tmp_path):
    root = str(tmp_path / "a")
    write_arrays(root, "fiducial", [1.0, 2.0], None, fiducial=np.zeros((4, 3), np.float32))
    return root


def test_this_package_writes_version_1_1_with_input_statistics(root):
    import json

    with open(f"{root}/manifest.json") as f:
        d = json.load(f)
    assert d["version"] == "1.1" and d["input_statistics"]["records"] == 4


@pytest.mark.parametrize("version", [1, "1.0", "1.1"])
def test_manifest_without_input_statistics_reads(root, version, recwarn):
    """Archives written before 1.1 (and 1.1 ones without statistics) stay valid."""
    rewrite_manifest(root, lambda d: (d.pop("input_statistics"), d.update(version=version)))
    m = read_manifest(root)
    assert m.input_statistics is None and m.input_stats() is None and not recwarn.list
    assert writers.validate(root).ok


def test_input_statistics_need_version_1_1(root):
    rewrite_manifest(root, lambda d: d.update(version=1))
    with pytest.raises(ArchiveError, match=r"unknown fields \['input_statistics'\]"):
        read_manifest(root)


def test_newer_minor_unknown_optional_fields_are_warned(root):
    rewrite_manifest(root, lambda d: d.update(version="1.3", compression="zstd", notes={"a": 1}))
    with pytest.warns(UserWarning, match=r"version 1\.3 is newer.*\['compression', 'notes'\]") as w:
        m = read_manifest(root)
    assert m.n_s == 4 and len(w) == 1 and "\n" not in str(w[0].message)
    report = writers.validate(root)
    assert report.ok, str(report)
    assert [x.file for x in report.warnings] == ["manifest.json"]
    assert "compression" in report.warnings[0].message


def test_minor_version_string_without_new_fields_is_plain(root, recwarn):
    rewrite_manifest(root, lambda d: (d.pop("input_statistics"), d.update(version="1.0")))
    assert read_manifest(root).n_s == 4 and not recwarn.list


@pytest.mark.parametrize("version", [2, "2.0", "3.1"])
def test_newer_major_is_refused_naming_both(root, version):
    rewrite_manifest(root, lambda d: d.update(version=version, shiny=True))
    with pytest.raises(ArchiveError, match=rf"manifest version {version} is newer than .*1\.1"):
        read_manifest(root)
    (err,) = writers.validate(root).errors
    assert f"version {version}" in err.message and "1.1" in err.message


@pytest.mark.parametrize("version", [1, "1", "1.0"])
def test_unknown_fields_of_the_same_version_are_refused(root, version):
    rewrite_manifest(
        root, lambda d: (d.pop("input_statistics"), d.update(version=version, surprise=1))
    )
    with pytest.raises(ArchiveError, match=r"unknown fields \['surprise'\]"):
        read_manifest(root)


@pytest.mark.parametrize("version", ["1.x", "", None, 1.5, [1]])
def test_malformed_version_is_a_named_error(root, version):
    rewrite_manifest(root, lambda d: d.update(version=version))
    (err,) = writers.validate(root).errors
    assert err.message.startswith("version: expected 1")
