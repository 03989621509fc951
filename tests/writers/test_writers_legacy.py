"""Reference-format archives (adopt), the TFRecords class, tf.data parsers, CLI."""

import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import writers
from writers import cli
from writers.archive import write_arrays
from writers.manifest import read_manifest
from writers.parsers import tf_dataset
from writers.streams import close_all, device_streams

from .writers_helpers import N_D, N_PARAMS, N_S, SHAPE, make_arrays


def _bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))


def write_reference(directory, fid, der=None, grad=None, record_size=1):
    """Files as the reference imnn writer leaves them: <stem>_<counter>.tfrecords."""

    def dump(stem, examples):
        per_file = record_size * (2 * N_PARAMS if stem == "derivative" and der is not None else 1)
        for c in range(math.ceil(len(examples) / per_file)):
            with tf.io.TFRecordWriter(os.path.join(directory, f"{stem}_{c}.tfrecords")) as w:
                for ex in examples[c * per_file : (c + 1) * per_file]:
                    w.write(
                        tf.train.Example(features=tf.train.Features(feature=ex)).SerializeToString()
                    )

    dump("fiducial", [{"data": _bytes(x.tobytes()), "seed": _int(i)} for i, x in enumerate(fid)])
    if der is not None:
        dump(
            "derivative",
            [
                {
                    "data": _bytes(der[i, s, p].tobytes()),
                    "seed": _int(i),
                    "derivative": _int(s),
                    "parameter": _int(p),
                }
                for i in range(len(der))
                for s in (0, 1)
                for p in range(N_PARAMS)
            ],
        )
    if grad is not None:
        dump(
            "derivative",
            [{"data": _bytes(g.tobytes()), "seed": _int(i)} for i, g in enumerate(grad)],
        )


def concat_epoch(streams, kind, per_device):
    out = []
    for s in streams[kind]:
        out.append({k: v for k, v in next(s).items()})
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def test_adopt_numerical_reference_archive(tmp_path, arrays, capsys):
    fid, der, _ = arrays
    d = str(tmp_path)
    write_reference(d, fid, der=der, record_size=1)  # 16 fiducial files: _10 sorts before _2
    code = cli.main(
        [
            "adopt",
            d,
            "--mode",
            "numerical",
            "--theta-fid",
            "1",
            "2",
            "--delta-theta",
            "0.1",
            "0.2",
            "--input-shape",
            "3",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert writers.validate(d).ok
    m = read_manifest(d)
    assert m.record_format == "imnn-0.3" and (m.n_s, m.n_d) == (N_S, N_D)
    for n_devices in (1, 2, 4):
        st = device_streams(d, "train", n_devices, N_S // n_devices)
        try:
            np.testing.assert_array_equal(concat_epoch(st, "fiducial", 0)["data"], fid)
        finally:
            close_all(st)
        st = device_streams(d, "train", n_devices, 4 * N_D // n_devices)
        try:
            got = concat_epoch(st, "derivative", 0)
            np.testing.assert_array_equal(got["data"], der.reshape((-1,) + SHAPE))
        finally:
            close_all(st)
    # a second adopt refuses to overwrite the manifest
    assert (
        cli.main(
            [
                "adopt",
                d,
                "--mode",
                "numerical",
                "--theta-fid",
                "1",
                "2",
                "--delta-theta",
                "0.1",
                "0.2",
                "--input-shape",
                "3",
                "2",
            ]
        )
        == 1
    )


def test_adopt_gradient_reference_archive(tmp_path, arrays):
    fid, _, grad = arrays
    d = str(tmp_path)
    write_reference(d, fid, grad=grad, record_size=4)
    from writers.legacy import adopt

    _, report = adopt(d, "gradient", [1.0, 2.0], None, SHAPE)
    assert report.ok, str(report)
    for n_devices in (1, 2, 4):
        st = device_streams(d, "train", n_devices, N_D // n_devices)
        try:
            main = concat_epoch(st, "main", 0)
            np.testing.assert_array_equal(main["data"], fid[:N_D])
            np.testing.assert_array_equal(main["gradient"], grad)
            np.testing.assert_array_equal(main["seed"], np.arange(N_D))
        finally:
            close_all(st)


def test_adopt_rejects_broken_reference_archive(tmp_path, arrays, capsys):
    fid, der, _ = arrays
    d = str(tmp_path)
    write_reference(d, fid, der=der, record_size=2)
    os.remove(os.path.join(d, "derivative_1.tfrecords"))  # seeds 2, 3 missing: a gap
    code = cli.main(
        [
            "adopt",
            d,
            "--mode",
            "numerical",
            "--theta-fid",
            "1",
            "2",
            "--delta-theta",
            "0.1",
            "0.2",
            "--input-shape",
            "3",
            "2",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err  # errors on stderr (issue 11)
    assert "derivative_2.tfrecords" in err and "first_seed: expected 2, got 4" in err
    assert not os.path.exists(os.path.join(d, "manifest.json"))


def test_seed_numerical_recipe_runs_unchanged(numerical_archive, arrays):
    """The documentation's hand-built tf.data recipe, on our files."""
    root, m = numerical_archive
    fid, der, _ = arrays
    writer = writers.TFRecords.from_manifest(root)
    n_s, n_d, n_params, n_devices, n_per_device = N_S, N_D, N_PARAMS, 2, 4
    fiducial = [
        tf.data.TFRecordDataset(
            sorted(glob.glob(f"{root}/train/fiducial/*/*.tfrecords")), num_parallel_reads=1
        )
        .map(writer.parser)
        .skip(i * n_s // n_devices)
        .take(n_s // n_devices)
        .batch(n_per_device)
        .repeat()
        .as_numpy_iterator()
        for i in range(n_devices)
    ]
    derivative = [
        tf.data.TFRecordDataset(
            sorted(glob.glob(f"{root}/train/derivative/*/*.tfrecords")), num_parallel_reads=1
        )
        .map(writer.parser)
        .skip(i * 2 * n_params * n_d // n_devices)
        .take(2 * n_params * n_d // n_devices)
        .batch(n_per_device)
        .repeat()
        .as_numpy_iterator()
        for i in range(n_devices)
    ]
    ours = device_streams(root, "train", n_devices, n_per_device)
    try:
        for kind, theirs in (("fiducial", fiducial), ("derivative", derivative)):
            for d in range(n_devices):
                for _ in range(5):
                    np.testing.assert_array_equal(next(theirs[d]), next(ours[kind][d])["data"])
    finally:
        close_all(ours)


def test_seed_gradient_recipe_runs_unchanged(tmp_path, arrays):
    fid, _, grad = arrays
    root = str(tmp_path / "g")
    write_arrays(
        root, "gradient", [1.0, 2.0], None, fiducial=fid, gradient=grad, records_per_shard=3
    )
    writer = writers.TFRecords.from_manifest(root)
    n_s, n_d, n_params, n_devices, n_per_device, i = N_S, N_D, N_PARAMS, 1, 4, 0
    # fiducial seeds 0..n_s-1 are the `main` files followed by `remaining`.
    fiducial = (
        tf.data.TFRecordDataset(
            sorted(glob.glob(f"{root}/train/main/*/*"))
            + sorted(glob.glob(f"{root}/train/remaining/*/*")),
            num_parallel_reads=1,
        )
        .map(writer.parser)
        .skip(i * n_s // n_devices)
        .take(n_s // n_devices)
    )
    main = (
        tf.data.Dataset.zip(
            (
                fiducial,
                tf.data.TFRecordDataset(
                    sorted(glob.glob(f"{root}/train/main/*/*")), num_parallel_reads=1
                ).map(lambda example: writer.derivative_parser(example, n_params=n_params)),
            )
        )
        .take(n_d // n_devices)
        .batch(n_per_device)
        .repeat()
        .as_numpy_iterator()
    )
    remaining = (
        fiducial.skip(n_d // n_devices)
        .take((n_s - n_d) // n_devices)
        .batch(n_per_device)
        .repeat()
        .as_numpy_iterator()
    )
    x, dx = next(main)
    np.testing.assert_array_equal(x, fid[:4])
    np.testing.assert_array_equal(dx, grad[:4])
    np.testing.assert_array_equal(next(remaining), fid[N_D : N_D + 4])


def test_tfrecords_float64_is_not_downcast(tmp_path):
    fid, _, _ = make_arrays(dtype=np.float64)
    root = str(tmp_path / "f64")
    write_arrays(root, "fiducial", [1.0, 2.0], fiducial=fid)
    writer = writers.TFRecords.from_manifest(root)
    files = sorted(glob.glob(f"{root}/train/fiducial/*/*"))
    got = np.stack(list(tf.data.TFRecordDataset(files).map(writer.parser).as_numpy_iterator()))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, fid)
    with pytest.raises(ValueError, match="float32"):
        writers.TFRecords(SHAPE).serialize(fid[0], 0)


def test_tf_parse_fn_from_manifest(numerical_archive, arrays):
    root, m = numerical_archive
    fid, der, _ = arrays
    recs = list(tf_dataset(root, m, "validation", "derivative").as_numpy_iterator())
    np.testing.assert_array_equal(
        np.stack([r["data"] for r in recs]), (der + 10).reshape((-1,) + SHAPE)
    )
    assert [int(r["parameter"]) for r in recs[:4]] == [0, 1, 0, 1]
    assert [int(r["derivative"]) for r in recs[:4]] == [0, 0, 1, 1]


def test_index_locates_every_record(numerical_archive, arrays):
    root, m = numerical_archive
    fid, der, _ = arrays
    from writers.index import find, read_index, read_record
    from writers.schema import decode_example

    assert read_index(root).num_rows == 2 * (N_S + 4 * N_D)
    (row,) = find(root, split="train", kind="derivative", seed=5, derivative=1, parameter=0)
    raw = read_record(root, row)
    rec = decode_example(raw, m.record_spec("train", "derivative"))
    np.testing.assert_array_equal(rec["data"], der[5, 1, 0])


def test_validate_cli_exit_status_and_json(numerical_archive):
    root, m = numerical_archive

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "writers.cli", *a], capture_output=True, text=True, timeout=120
        )

    out = run("validate", root)
    assert out.returncode == 0 and out.stdout.startswith("VALID"), out.stderr
    os.remove(os.path.join(root, m.files("train", "fiducial")[0]["path"]))
    out = run("validate", root, "--json")
    assert out.returncode == 1
    d = json.loads(out.stdout)
    assert d["ok"] is False and d["errors"][0]["file"] == m.files("train", "fiducial")[0]["path"]


def test_reading_the_index_never_aborts_the_interpreter_at_exit(numerical_archive):
    # pyarrow 25 aborted ("terminate called without an active exception") about 1 in 5
    # `validate` processes: a pre-buffering I/O thread released the Python buffer of the
    # index during interpreter shutdown (see writers.index.read_index)
    root, _ = numerical_archive
    cmd = [sys.executable, "-m", "writers.cli", "validate", root]
    codes = []
    for _ in range(5):
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(4)]
        codes += [p.wait(timeout=120) for p in procs]
    assert codes == [0] * 20
