"""One test per fault: each creates the fault in a real file and checks that
the validator names the file (and record where it applies)."""

import hashlib
import json
import os
import stat

import numpy as np
import pytest

import writers
from writers.archive import write_arrays
from writers.errors import ArchiveError, MissingFileError, WriteError
from writers.manifest import read_manifest
from writers.schema import encode_example
from writers.shard import write_shard
from writers.framing import frame, read_records

from .writers_helpers import SHAPE, rewrite_manifest


def errors_of(root, **kw):
    report = writers.validate(root, **kw)
    assert not report.ok
    return report.errors


def first_file(m, kind="fiducial", split="train", i=0):
    return m.files(split, kind)[i]["path"]


def replace_records(root, rel, payloads):
    """Rewrite a shard with the given payloads and update the manifest's
    checksum and size, so that only the record-level fault remains."""
    path = os.path.join(root, rel)
    data = b"".join(frame(p) for p in payloads)
    with open(path, "wb") as f:
        f.write(data)

    def fix(d):
        for s in d["layout"].values():
            for k in s.values():
                for dev in k["devices"]:
                    for f in dev["files"]:
                        if f["path"] == rel:
                            f["sha256"] = hashlib.sha256(data).hexdigest()
                            f["bytes"] = len(data)

    rewrite_manifest(root, fix)


def test_valid_archive_has_summary(numerical_archive):
    root, m = numerical_archive
    report = writers.validate(root)
    assert report.ok, str(report)
    assert report.summary["records"] == 2 * (16 + 8 * 4)
    assert report.summary["bytes"] == sum(f["bytes"] for f in m.all_files())


def test_truncated_file(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m)
    path = os.path.join(root, rel)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 7)
    errs = errors_of(root)
    assert any(e.file == rel and e.record == 5 and "truncated" in e.message for e in errs), errs


def test_flipped_byte(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m, "derivative")
    path = os.path.join(root, rel)
    data = bytearray(open(path, "rb").read())
    rec_len = len(data) // m.files("train", "derivative")[0]["count"]  # equal-sized records
    data[2 * rec_len + 40] ^= 0x01
    open(path, "wb").write(bytes(data))
    errs = errors_of(root)
    assert any(e.file == rel and e.record == 2 and "CRC" in e.message for e in errs), errs
    assert any(e.file == rel and "checksum mismatch" in e.message for e in errs)


def test_missing_file(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m, "fiducial", "validation", 1)
    os.remove(os.path.join(root, rel))
    errs = errors_of(root)
    assert [e.file for e in errs] == [rel] and "missing" in errs[0].message


def test_extra_file(numerical_archive):
    root, m = numerical_archive
    extra = "train/fiducial/device-00000-of-00002/shard-00009-of-00009.tfrecords"
    with open(os.path.join(root, extra), "wb") as f:
        f.write(frame(encode_example(np.zeros(SHAPE, np.float32), 0)))
    errs = errors_of(root)
    assert [e.file for e in errs] == [extra] and "unlisted" in errs[0].message


def test_leftover_temporary_file(numerical_archive):
    root, _ = numerical_archive
    tmp = "train/.shard-00000-of-00001.tfrecords.tmp-abc"
    open(os.path.join(root, tmp), "wb").close()
    errs = errors_of(root)
    assert errs[0].file == tmp and "temporary" in errs[0].message


def test_duplicated_record(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m)
    recs = read_records(os.path.join(root, rel))
    replace_records(root, rel, [recs[0], recs[0]] + recs[2:])
    errs = errors_of(root)
    assert len(errs) == 1 and errs[0].file == rel and errs[0].record == 1
    assert "expected seed 1, got 0" in errs[0].message


def test_reordered_records(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m, "derivative")
    recs = read_records(os.path.join(root, rel))
    recs[1], recs[2] = recs[2], recs[1]
    replace_records(root, rel, recs)
    errs = errors_of(root)
    assert {(e.file, e.record) for e in errs} == {(rel, 1), (rel, 2)}
    assert "seed → sign → parameter" in errs[0].message


def test_wrong_dtype(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m)
    recs = read_records(os.path.join(root, rel))
    recs[3] = encode_example(np.zeros(SHAPE, np.float64), 3)
    replace_records(root, rel, recs)
    errs = errors_of(root)
    assert len(errs) == 1 and (errs[0].file, errs[0].record) == (rel, 3)
    assert "expected 24 bytes (float32[3, 2]), got 48" in errs[0].message


def test_wrong_shape(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m, "derivative", "validation")
    recs = read_records(os.path.join(root, rel))
    recs[0] = encode_example(np.zeros((4,), np.float32), 0, 0, 0)
    replace_records(root, rel, recs)
    errs = errors_of(root)
    assert len(errs) == 1 and (errs[0].file, errs[0].record) == (rel, 0)
    assert "wrong dtype or shape" in errs[0].message


def test_unmatched_finite_difference_seeds(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m, "derivative", i=1)  # seeds 1..1 of device 0
    recs = [encode_example(np.zeros(SHAPE, np.float32), 99, s, p) for s in (0, 1) for p in range(2)]
    replace_records(root, rel, recs)
    errs = errors_of(root)
    assert all(e.file == rel for e in errs) and [e.record for e in errs] == [0, 1, 2, 3]
    assert "seed-matched to fiducial seeds" in errs[0].message and "99" in errs[0].message


def test_gradient_on_remaining_seed(tmp_path):
    from .writers_helpers import make_arrays

    fid, _, grad = make_arrays()
    root = str(tmp_path / "g")
    m = write_arrays(root, "gradient", [1.0, 2.0], None, fiducial=fid, gradient=grad)
    rel = m.files("train", "remaining")[0]["path"]
    recs = read_records(os.path.join(root, rel))
    recs[2] = encode_example(fid[10], 10, gradient=grad[0])
    replace_records(root, rel, recs)
    errs = errors_of(root)
    assert (errs[0].file, errs[0].record) == (rel, 2) and "first n_d" in errs[0].message


def test_manifest_edited_inconsistent(numerical_archive):
    root, _ = numerical_archive
    rewrite_manifest(root, lambda d: d.update(n_s=20))
    errs = errors_of(root)
    assert all(e.file == "manifest.json" for e in errs)
    assert any("n_seeds" in e.message and "expected 20" in e.message for e in errs), errs
    with pytest.raises(ArchiveError, match="manifest.json"):
        read_manifest(root)


def test_manifest_edited_count(numerical_archive):
    root, m = numerical_archive
    rel = first_file(m)

    def edit(d):
        d["layout"]["train"]["fiducial"]["devices"][0]["files"][0]["count"] = 7

    rewrite_manifest(root, edit)
    errs = errors_of(root)
    assert errs[0].file == "manifest.json" and rel in errs[0].message


def test_manifest_not_json(numerical_archive):
    root, _ = numerical_archive
    with open(os.path.join(root, "manifest.json"), "w") as f:
        f.write('{"version": 1,')
    errs = errors_of(root)
    assert errs[0].file == "manifest.json" and "JSON" in errs[0].message


def test_nonfinite_is_warning_unless_asked(tmp_path):
    from .writers_helpers import make_arrays

    fid, _, _ = make_arrays()
    fid[5, 1, 1] = np.nan
    root = str(tmp_path / "n")
    m = write_arrays(root, "fiducial", [1.0, 2.0], fiducial=fid, records_per_shard=4)
    report = writers.validate(root)
    assert report.ok and len(report.warnings) == 1
    w = report.warnings[0]
    assert (w.file, w.record) == (m.files("train", "fiducial")[1]["path"], 1)
    errs = errors_of(root, nonfinite_fatal=True)
    assert "NaN" in errs[0].message


def test_path_does_not_exist(tmp_path):
    root = str(tmp_path / "nope")
    errs = errors_of(root)
    assert errs[0].file == root and "does not exist" in errs[0].message
    with pytest.raises(MissingFileError, match="nope"):
        read_manifest(root)
    from writers.streams import device_streams

    with pytest.raises(FileNotFoundError, match="nope"):
        device_streams(root, "train", 1, 1)


def test_path_cannot_be_written(tmp_path, arrays):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    root = str(blocker / "archive")
    with pytest.raises(WriteError, match="a_file"):
        write_arrays(root, "fiducial", [1.0, 2.0], fiducial=arrays[0])
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path, arrays):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(WriteError, match="ro"):
            write_arrays(str(ro), "fiducial", [1.0, 2.0], fiducial=arrays[0])
    finally:
        ro.chmod(stat.S_IRWXU)


def test_failed_shard_write_leaves_existing_file(numerical_archive):
    root, m = numerical_archive
    spec_path = first_file(m)
    path = os.path.join(root, spec_path)
    before = open(path, "rb").read()
    from writers.layout import plan_shards

    spec = [s for s in plan_shards("numerical", 16, 8, 2, 2, 6) if s.path == spec_path][0]
    bad = [encode_example(np.zeros(SHAPE, np.float32), s) for s in range(3)]  # too few
    with pytest.raises(ArchiveError, match="expected 6 records, got 3"):
        write_shard(root, spec, bad)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(os.path.dirname(path))) == sorted(
        os.path.basename(f["path"])
        for f in m.files("train", "fiducial")
        if os.path.dirname(f["path"]) == os.path.dirname(spec_path)
    )
    assert writers.validate(root).ok


def test_json_report(numerical_archive):
    root, m = numerical_archive
    os.remove(os.path.join(root, first_file(m)))
    d = json.loads(json.dumps(writers.validate(root).to_json()))
    assert d["ok"] is False and d["errors"][0]["file"] == first_file(m)
