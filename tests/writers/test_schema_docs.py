"""The published schemas (docs/manifest.schema.json, docs/index.schema.json)
describe what the writers write: every generated manifest and index row
validates, the versioning rule holds, and the Parquet index names its format."""

from __future__ import annotations

import copy
import json
import os

import jsonschema
import numpy as np
import pytest

from writers.archive import write_arrays
from writers.index import FORMAT_KEY, FORMAT_VERSION, read_index
from writers.manifest import Manifest

from .writers_helpers import make_arrays

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")


def _schema(name):
    with open(os.path.join(DOCS, name)) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


MANIFEST = _schema("manifest.schema.json")
INDEX = _schema("index.schema.json")


def _archive(tmp_path, mode, n_devices):
    fid, der, grad = make_arrays()
    root = str(tmp_path / f"{mode}-{n_devices}")
    kw = {"numerical": {"derivative": der}, "gradient": {"gradient": grad}, "fiducial": {}}[mode]
    val = {f"validation_{k}": v + 1 for k, v in kw.items()}
    write_arrays(
        root,
        mode,
        [1.0, 2.0],
        [0.1, 0.2] if mode == "numerical" else None,
        fiducial=fid,
        validation_fiducial=fid + 1,
        n_devices=n_devices,
        records_per_shard=5,
        **kw,
        **val,
    )
    with open(os.path.join(root, "manifest.json")) as f:
        return root, json.load(f)


@pytest.mark.parametrize("n_devices", [1, 2])
@pytest.mark.parametrize("mode", ["numerical", "gradient", "fiducial"])
def test_generated_manifest_and_index_validate(tmp_path, mode, n_devices):
    root, d = _archive(tmp_path, mode, n_devices)
    MANIFEST.validate(d)
    # the schema lists every field the writer writes, and no other
    props = MANIFEST.schema["properties"]
    assert set(props) == set(d) == {f for f in Manifest.__dataclass_fields__ if f[0] != "_"}
    table = read_index(root)
    assert table.schema.metadata[FORMAT_KEY.encode()] == FORMAT_VERSION.encode()
    assert list(table.column_names) == INDEX.schema["required"]
    for name, field in INDEX.schema["properties"].items():
        assert str(table.schema.field(name).type) == field["x-arrow-type"]
    rows = table.to_pylist()
    for row in rows:
        INDEX.validate(row)
    fd = [r for r in rows if r["kind"] == "derivative"]
    others = [r for r in rows if r["kind"] != "derivative"]
    assert all(r["derivative"] == -1 and r["parameter"] == -1 for r in others)
    assert all(r["derivative"] in (0, 1) and r["parameter"] >= 0 for r in fd)


def _errors(d):
    return [e.message for e in MANIFEST.iter_errors(d)]


def test_versioning_rule_and_refusals(tmp_path):
    _, d = _archive(tmp_path, "numerical", 2)
    assert not _errors(d) and d["version"] == "1.1"
    # 1.1's optional input_statistics: absent in older manifests, not in a 1.0 one
    d = {**{k: v for k, v in d.items() if k != "input_statistics"}, "version": 1}
    assert not _errors(d)
    _, d11 = _archive(tmp_path / "again", "numerical", 2)
    assert _errors({**d11, "version": 1}) and _errors({**d11, "version": "1.0"})
    assert not _errors({**d11, "input_statistics": None})
    bad = copy.deepcopy(d11)
    bad["input_statistics"]["transforms"]["sqrt"] = None
    assert _errors(bad)
    bad = copy.deepcopy(d11)
    bad["input_statistics"]["transforms"]["none"]["mean"] = "0"
    assert _errors(bad)
    # version 1.0 has no unknown field, at any level
    assert _errors({**d, "compression": "zstd"})
    for v in ("1", "1.0"):
        assert _errors({**d, "version": v, "compression": "zstd"})
    nested = copy.deepcopy(d)
    nested["layout"]["train"]["fiducial"]["devices"][0]["files"][0]["crc32c"] = "abc"
    assert _errors(nested)
    # a newer minor version may add optional fields, anywhere
    assert not _errors({**d, "version": "1.3", "compression": "zstd"})
    nested["version"] = "1.1"
    assert not _errors(nested)
    # another major version, missing fields, wrong values, unconfined paths
    assert _errors({**d, "version": 2})
    assert _errors({**d, "version": "2.0"})
    assert _errors({k: v for k, v in d.items() if k != "n_s"})
    assert _errors({**d, "mode": "other"})
    assert _errors({**d, "dtype": "int8"})
    assert _errors({**d, "delta_theta": [0.1, 0.0]})
    assert _errors({**d, "index": "../index.parquet"})
    for bad in ("/abs/x.tfrecords", "gs://b/x", "a/../b", "a//b", "./a", "a\\b", "a/"):
        broken = copy.deepcopy(d)
        broken["layout"]["train"]["fiducial"]["devices"][0]["files"][0]["path"] = bad
        assert _errors(broken), bad
    assert not _errors({**d, "delta_theta": None, "mode": "gradient"})  # types only


def test_index_sentinel_is_documented():
    desc = INDEX.schema["properties"]["derivative"]["description"]
    assert "−1" in desc and "not applicable" in desc
    assert INDEX.schema["x-parquet-key-value-metadata"] == {FORMAT_KEY: FORMAT_VERSION}
    assert np.int8(-1) in INDEX.schema["properties"]["derivative"]["enum"]
