"""Multi-process streaming fits (imnn_stream.distributed) through the command line:
2 processes × 1 CPU device on loopback give the weights of 1 process × 2 devices;
process 1 writes nothing; a killed 2-process fit resumes; start-up errors are one line."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

pytestmark = pytest.mark.e2e  # real processes and JAX's multi-process runtime

CLI = [sys.executable, "-m", "imnn_stream", "fit"]
N = 100


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    (f, d, g), (vf, vd, vg) = toy_data(0, N, N), toy_data(1, N, N)
    out = {}
    for mode, kw in (
        ("numerical", dict(derivative=d, validation_derivative=vd)),
        ("gradient", dict(gradient=g, validation_gradient=vg)),
    ):
        out[mode] = str(root / mode)
        write_arrays(
            out[mode],
            mode,
            THETA_FID,
            DELTA_THETA if mode == "numerical" else None,
            fiducial=f,
            validation_fiducial=vf,
            n_devices=2,
            records_per_shard=25,
            **kw,
        )
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def args(archive, out, iterations, devices, *extra):
    return CLI + [
        archive,
        "--model",
        "mlp:16,16",
        "--devices",
        str(devices),
        "--n-per-device",
        "25",
        "--max-iterations",
        str(iterations),
        "--min-iterations",
        str(iterations),
        "--patience",
        str(iterations),
        "--quiet",
        "--out",
        out,
        *extra,
    ]


def start_pair(archive, out, iterations, *extra, outs=None, devices=1, timeout="60"):
    """Processes 0 and 1 of a 2-process fit (process 1 is given its own --out, which
    it must not create)."""
    port = free_port()
    outs = outs or (out, out + "-p1")
    return [
        subprocess.Popen(
            args(archive, o, iterations, devices, *extra)
            + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
            + ["--process-id", str(i), "--coordinator-timeout", timeout],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, o in enumerate(outs)
    ]


def finish(procs, timeout=240):
    results = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, results)]


def weights(run):
    with np.load(os.path.join(run, "imnn.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "meta" and z[k].dtype.kind == "f"}


def assert_close(a, b, rtol=1e-5):
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("mode", ["numerical", "gradient"])
def test_two_processes_match_one(archives, tmp_path, mode):
    one = str(tmp_path / "one")
    r = subprocess.run(args(archives[mode], one, 4, 2), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    two = str(tmp_path / "two")
    for code, _, err in finish(start_pair(archives[mode], two, 4)):
        assert code == 0, err
    assert_close(weights(two), weights(one))
    assert not os.path.exists(two + "-p1") and not os.path.exists(two + "-p1.lock")


def test_killed_pair_resumes(archives, tmp_path):
    archive, iterations = archives["numerical"], 40
    one = str(tmp_path / "one")
    r = subprocess.run(args(archive, one, iterations, 2), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    two = str(tmp_path / "two")
    extra = ("--checkpoint-every", "4")
    procs = start_pair(archive, two, iterations, *extra)
    ckpt = os.path.join(two, "checkpoint", "checkpoint.npz")
    deadline = time.monotonic() + 120
    while not os.path.exists(ckpt) and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    finish(procs)
    assert os.path.exists(ckpt) and not os.path.exists(os.path.join(two, "imnn.npz"))
    for code, _, err in finish(start_pair(archive, two, iterations, *extra, "--resume")):
        assert code == 0, err
    assert_close(weights(two), weights(one))


def test_unreachable_coordinator_is_one_line(archives, tmp_path):
    r = subprocess.run(
        args(archives["numerical"], str(tmp_path / "x"), 2, 1)
        + ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
        + ["--process-id", "1", "--coordinator-timeout", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert "cannot reach the coordinator 127.0.0.1:" in lines[-1], r.stderr
    assert lines[-1].startswith("imnn-stream fit: error:")


def test_device_count_not_dividing_layout(archives, tmp_path):
    # 2 processes × 3 devices = 6 devices: 100 seeds do not split. The processes are
    # told who they are by the variables a launcher would set, not by flags.
    port = free_port()
    procs = [
        subprocess.Popen(
            args(archives["numerical"], str(tmp_path / f"x{i}"), 2, 3),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(
                os.environ,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
        )
        for i in range(2)
    ]
    for code, _, err in finish(procs):
        assert code == 1
        line = err.strip().splitlines()[-1]
        assert "2 processes × 3 devices = 6 devices do not divide the archive's layout" in line
        assert "100 seeds" in line
