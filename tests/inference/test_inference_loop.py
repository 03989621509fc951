"""The inference loop of the seed on the toy problem: converge, agree with ABC,
resume after a kill, refuse bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from beam_jobs.simulators import gaussian_toy
from imnn_stream.app.fitting import FitConfig
from imnn_stream.app.inference import InferenceError, InferenceLoop

pytestmark = pytest.mark.e2e  # end to end: real processes, minutes

TRUE = np.array([0.3, 1.5], np.float32)
N_TARGET = 50  # iid realisations of the target: its estimate has σ/√50


def target():
    keys = jax.random.split(jax.random.PRNGKey(123), N_TARGET)
    return np.asarray(jax.vmap(lambda k: gaussian_toy(k, TRUE))(keys))


def infer_cmd(out, target_path, rounds=4, extra=()):
    return [
        sys.executable,
        "-m",
        "imnn_stream",
        "infer",
        "--simulator",
        "toy",
        "--target",
        target_path,
        "--theta-start",
        "0,1",
        "--delta-theta",
        "0.1,0.1",
        "--prior-low=-2,0.2",
        "--prior-high=2,4",
        "--n-s",
        "200",
        "--n-per-device",
        "100",
        "--model",
        "polynomial:2",
        "--optimiser",
        "adam:3e-2",
        "--max-iterations",
        "150",
        "--min-iterations",
        "50",
        "--patience",
        "30",
        "--max-rounds",
        str(rounds),
        "--tolerance",
        "0.5",
        "--abc",
        "20000",
        "--abc-accept",
        "0.005",
        "--export",
        "2000",
        "--out",
        out,
        "--direct_running_mode=in_memory",
        "--direct_num_workers=1",
        *extra,
    ]


def test_loop_converges_agrees_with_abc_and_resumes(tmp_path):
    np.save(tmp_path / "target.npy", target())
    out = str(tmp_path / "run")
    # kill the loop once its first round is finished, then resume it
    proc = subprocess.Popen(
        infer_cmd(out, str(tmp_path / "target.npy")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = os.path.join(out, "round-000", "round.json")
    deadline = time.time() + 600
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(first)
    with open(first) as f:
        round0 = json.load(f)
    # the killed loop's lock (pid dead on this host) is taken over with a one-line warning
    assert os.path.exists(out + ".lock")
    r = subprocess.run(
        infer_cmd(out, str(tmp_path / "target.npy")), capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"warning: removing stale lock {out}.lock" in r.stderr, r.stderr[-3000:]
    assert "resuming after" in r.stdout
    with open(os.path.join(out, "rounds.json")) as f:
        rows = json.load(f)
    assert rows[0] == round0  # the finished round was not redone
    assert 2 <= len(rows) <= 4
    result = json.loads(
        next(l for l in r.stdout.splitlines() if l.startswith("INFER_RESULT "))[
            len("INFER_RESULT ") :
        ]
    )
    θ_hat = np.array(result["θ_hat"])
    # within one Fisher standard deviation (of one realisation) of the truth
    σ_one = np.array(rows[-1]["σ"])
    assert np.all(np.abs(θ_hat - TRUE) < σ_one)
    assert np.all(np.abs(np.array(rows[-1]["θ_fid"]) - TRUE) < σ_one)
    # ABC and the Gaussian approximation agree in mean within their standard errors
    σ_post = np.array(result["σ"])
    abc_mean, abc_std = np.array(result["abc_mean"]), np.array(result["abc_std"])
    n_acc = int(0.005 * 20000)
    err = np.sqrt(σ_post**2 / 10000 + abc_std**2 / n_acc + (0.5 * σ_post) ** 2)
    assert np.all(np.abs(abc_mean - θ_hat) < 3 * err), (abc_mean, θ_hat, err)
    for name in (
        "rounds.parquet",
        "path.png",
        "posterior.png",
        "gaussian_posterior.npz",
        "abc.npz",
        "prior_pairs.npz",
        "prior_pairs.parquet",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0


def loop(tmp_path, **kw):
    args = dict(
        out=str(tmp_path / "x"),
        simulator="toy",
        target=target(),
        theta_start=[0.0, 1.0],
        delta_theta=[0.1, 0.1],
        prior_low=[-2.0, 0.2],
        prior_high=[2.0, 4.0],
        n_s=200,
        n_d=200,
        fit=FitConfig(model="polynomial:2"),
    )
    args.update(kw)
    return InferenceLoop(**args)


def test_start_outside_prior_box_is_refused(tmp_path):
    with pytest.raises(InferenceError, match="outside the prior box"):
        loop(tmp_path, theta_start=[3.0, 1.0])


def test_target_of_wrong_shape_is_refused(tmp_path):
    l = loop(tmp_path, target=np.zeros((5, 7), np.float32))
    with pytest.raises(InferenceError, match="target has shape"):
        l._check_target((10,))


def test_diverging_loop_stops_and_keeps_rounds(tmp_path):
    l = loop(tmp_path)
    os.makedirs(l._round_dir(0))
    row = dict(
        round=0,
        θ_fid=[0.0, 1.0],
        θ_hat=[5.0, 1.0],
        F=[[10.0, 0.0], [0.0, 5.0]],
        n_target=1,
        σ=[0.3, 0.45],
        val_detF=50.0,
        iterations=1,
        seconds=1.0,
        seeds={},
    )
    with open(os.path.join(l._round_dir(0), "round.json"), "w") as f:
        json.dump(row, f)
    with pytest.raises(InferenceError, match="left the prior box"):
        l.run(log=lambda *a: None)
    with open(os.path.join(l.out, "rounds.json")) as f:
        assert json.load(f) == [row]


def test_live_holder_of_the_loop_folder_is_refused(tmp_path):
    import socket

    from writers.durable import LockedError

    l = loop(tmp_path)
    with open(l.out + ".lock", "w") as f:
        json.dump(dict(pid=os.getpid(), host=socket.gethostname(), started=0), f)
    with pytest.raises(LockedError, match=f"in use by pid {os.getpid()}"):
        l.run(log=lambda *a: None)
    assert os.path.exists(l.out + ".lock") and not os.path.exists(l.out)
