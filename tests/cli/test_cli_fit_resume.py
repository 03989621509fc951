"""The command line end to end: fit from an archive, kill and resume, estimate."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

pytestmark = pytest.mark.e2e  # end to end: real processes, minutes

CLI = [sys.executable, "-m", "imnn_stream"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (f, d, _), (vf, vd, _) = toy_data(0, 200, 200), toy_data(1, 200, 200)
    path = str(root / "archive")
    write_arrays(
        path,
        "numerical",
        THETA_FID,
        DELTA_THETA,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
        n_devices=2,
        records_per_shard=50,
    )
    target = str(root / "target")
    write_arrays(
        target,
        "fiducial",
        THETA_FID,
        fiducial=toy_data(9, 64, 1)[0],
        n_devices=1,
        records_per_shard=64,
    )
    return path, target


def fit_args(archive, out, iterations):
    return CLI + [
        "fit",
        archive,
        "--model",
        "mlp:32,32",
        "--optimiser",
        "adam:1e-3",
        "--devices",
        "2",
        "--n-per-device",
        "50",
        "--max-iterations",
        str(iterations),
        "--min-iterations",
        str(iterations),
        "--patience",
        str(iterations),
        "--checkpoint-every",
        "3",
        "--out",
        out,
    ]


def saved(path):
    """(meta, leaves) of a save file or checkpoint (arrays + JSON, no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        return meta, {k: z[k] for k in z.files if k != "meta"}


def final_w(run):
    meta, leaves = saved(os.path.join(run, "imnn.npz"))
    first, n = meta["trees"]["final_w"]
    return [leaves[f"leaf_{i:05d}"] for i in range(first, first + n)]


def test_fit_killed_and_resumed_equals_uninterrupted(archive, tmp_path):
    path, _ = archive
    iterations = 40
    whole = str(tmp_path / "whole")
    subprocess.run(fit_args(path, whole, iterations), check=True, capture_output=True, timeout=600)

    cut = str(tmp_path / "cut")
    ckpt = os.path.join(cut, "checkpoint", "checkpoint.npz")
    proc = subprocess.Popen(
        fit_args(path, cut, iterations), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the fit finished before it could be killed"
    done = saved(ckpt)[0]["done"]
    assert 0 < done < iterations
    assert not os.path.exists(os.path.join(cut, "imnn.npz"))

    # the killed fit left its lock (pid dead on this host): --resume takes it over with a
    # one-line warning
    lock = cut + ".lock"
    assert os.path.exists(lock)
    r = subprocess.run(
        fit_args(path, cut, iterations) + ["--resume", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    warning = [line for line in r.stderr.splitlines() if "stale lock" in line]
    assert len(warning) == 1 and warning[0].startswith(f"warning: removing stale lock {lock}")
    assert not os.path.exists(lock)
    a, b = final_w(whole), final_w(cut)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))
    with open(os.path.join(cut, "summary.json")) as f:
        assert json.load(f)["iterations"] == iterations


def test_estimate_from_run_on_npy_and_archive(archive, tmp_path, capsys):
    from imnn_stream.app.cli import main  # in this process: the same code path, no start-up cost

    path, target = archive
    run = str(tmp_path / "run")
    assert main(fit_args(path, run, 5)[3:]) == 0
    data = toy_data(9, 64, 1)[0]
    np.save(tmp_path / "target.npy", data)
    out = []
    for source in (str(tmp_path / "target.npy"), target):
        capsys.readouterr()
        assert main(["estimate", run, source]) == 0
        out.append(
            np.array(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["estimate"])
        )
    assert out[0].shape == (64, 2)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6)
    assert (tmp_path / "run" / "history.png").stat().st_size > 1000
