"""Decoding in a reader process (``decode="process"``, :mod:`writers.stream_worker`):
the same batches as the reader threads, the same errors naming the same file and
record, a clean error when the process dies, no process left behind, and the
trainers' ``decode="auto"`` choice (a process only for small records read every
epoch)."""

import os

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from writers.errors import ArchiveError, MissingFileError
from writers.manifest import read_manifest
from writers.stream_prefetch import DeviceStream
from writers.stream_worker import ProcessStream
from writers.streams import close_all, device_streams

from ..toy_problem import toy_data, write_toy_archives

N_S, N_D = 64, 32


@pytest.fixture()
def archives(tmp_path):
    return write_toy_archives(tmp_path, toy_data(8, N_S, N_D), toy_data(9, N_S, N_D))


def _children(streams):
    return {s._child.proc for per in streams.values() for s in per}


@pytest.mark.parametrize("mode", ["numerical", "gradient"])
def test_process_streams_hand_out_the_thread_streams_batches(archives, mode):
    root = str(archives / mode)
    a = device_streams(root, "train", 2, 8)
    b = device_streams(root, "train", 2, 8, decode="process")
    try:
        assert all(isinstance(s, ProcessStream) for per in b.values() for s in per)
        (child,) = _children(b)  # one reader process serves every stream of the call
        for kind in a:
            for sa, sb in zip(a[kind], b[kind]):
                assert (sb.epoch, sb.batch_records) == (sa.epoch, sa.batch_records)
                for _ in range(2 * sa.batches_per_epoch + 1):  # into the third epoch
                    x, y = next(sa), next(sb)
                    assert x.keys() == y.keys()
                    for key in x:
                        assert x[key].dtype == y[key].dtype
                        np.testing.assert_array_equal(x[key], y[key])
    finally:
        close_all(a)
        close_all(b)
    assert child.wait(10) == 0  # the last close ends the reader process


def _flip_byte(root, m, kind, record):
    rel = m.files("train", kind)[0]["path"]
    path = os.path.join(root, rel)
    data = bytearray(open(path, "rb").read())
    rec_len = len(data) // m.files("train", kind)[0]["count"]
    data[record * rec_len + 40] ^= 0x01
    open(path, "wb").write(bytes(data))
    return rel


def _first_error(root, decode, kind):
    streams = device_streams(root, "train", 2, 8, decode=decode)
    try:
        with pytest.raises(ArchiveError) as e:
            for _ in range(100):
                next(streams[kind][0])
        return e.value
    finally:
        close_all(streams)


def test_a_corrupt_record_names_the_same_file_and_record(archives):
    root = str(archives / "numerical")
    rel = _flip_byte(root, read_manifest(root), "derivative", 3)
    t, p = _first_error(root, "thread", "derivative"), _first_error(root, "process", "derivative")
    assert type(p) is type(t) and str(p) == str(t)
    assert (p.path, p.record) == (t.path, t.record) and p.path.endswith(rel) and p.record == 3


def test_a_missing_file_is_the_same_error_class(archives):
    root = str(archives / "numerical")
    os.remove(os.path.join(root, read_manifest(root).files("train", "fiducial")[0]["path"]))
    t, p = _first_error(root, "thread", "fiducial"), _first_error(root, "process", "fiducial")
    assert isinstance(p, MissingFileError) and str(p) == str(t)


def test_a_killed_reader_process_is_a_clean_error(archives):
    streams = device_streams(str(archives / "numerical"), "train", 2, 8, decode="process")
    try:
        (child,) = _children(streams)
        next(streams["fiducial"][0])
        child.kill()
        child.wait(10)
        with pytest.raises(RuntimeError, match=r"reader process of .* ended \(exit status -9\)"):
            for _ in range(100):  # what the pipe still held, then the end
                next(streams["fiducial"][0])
    finally:
        close_all(streams)


def _trainer(archives, devices, cache, decode="auto"):
    return im.DatasetNumericalGradientIMNN.from_archive(
        str(archives / "numerical"),
        model=im.models.mlp((8,), 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(1),
        host=devices[0],
        devices=devices,
        n_per_device=8,
        cache=cache,
        decode=decode,
    )


def test_auto_decodes_small_uncached_records_in_a_process(archives, cpu_devices):
    devices = cpu_devices[:2]
    streamed, cached, threads = (
        _trainer(archives, devices, 0),
        _trainer(archives, devices, True),
        _trainer(archives, devices, 0, "thread"),
    )
    try:
        for imnn, cls in (
            (streamed, ProcessStream),
            (cached, DeviceStream),
            (threads, DeviceStream),
        ):
            assert all(
                isinstance(s, cls) for split in imnn._streams for per in split.values() for s in per
            )
        for _ in range(2):
            g = [imnn.loss_gradient(10.0, 0.1)[0] for imnn in (streamed, cached, threads)]
            for other in g[1:]:
                for x, y in zip(jax.tree_util.tree_leaves(g[0]), jax.tree_util.tree_leaves(other)):
                    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    finally:
        for imnn in (streamed, cached, threads):
            imnn.close()


def test_decode_option():
    import argparse

    from imnn_stream.app.fitting import add_fit_options, fit_config_from_args

    p = add_fit_options(argparse.ArgumentParser())
    assert fit_config_from_args(p.parse_args([])).decode == "auto"
    assert fit_config_from_args(p.parse_args(["--decode", "thread"])).decode == "thread"
    with pytest.raises(SystemExit):
        p.parse_args(["--decode", "fork"])
