"""Issue 11 (core half): save files and checkpoints run no code when read, model
specs import nothing untrusted, a checkpoint resumes only the fit it belongs to,
and set_F_statistics(w=…) makes w the current weights."""

import json
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import imnn_stream as im
from imnn_stream import models
from imnn_stream.checkpoint import PickleRefusedError
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data
from ..writers.test_writers_cloud import gcs, s3  # noqa: F401  (bucket fixtures)


@pytest.fixture(scope="module")
def data():
    return toy_data(3, 100, 100)


def small(data, key=0, hidden=(8,)):
    f, d, _ = data
    return im.NumericalGradientIMNN(
        n_s=100,
        n_d=100,
        n_params=2,
        n_summaries=2,
        input_shape=(10,),
        θ_fid=THETA_FID,
        model=models.mlp(hidden, 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(key),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
    )


class Marker:
    """Unpickling this creates the file ``path`` (as a crafted pickle could run anything)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def same_tree(a, b):
    return jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))


def test_save_file_is_arrays_and_json_and_round_trips(data, tmp_path):
    t = small(data)
    t.fit(10.0, 0.1, max_iterations=3, min_iterations=0)
    path = t.save(tmp_path / "imnn.npz")
    raw = open(path, "rb").read()
    assert b"optax" not in raw and b"numpy._core" not in raw  # no private module paths
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        assert all(k == "meta" or k.startswith("leaf_") for k in z.files)
    assert (
        meta["format"] == "imnn_stream"
        and meta["version"] == 2
        and len(meta["history"]["detF"]) == 3
    )
    other = small(data, key=5)
    other.load(path)
    assert same_tree(other.w, t.w) and same_tree(other.state, t.state)
    assert same_tree(other.best_w, t.best_w) and other._step == t._step
    np.testing.assert_array_equal(other.history["detF"], t.history["detF"])
    np.testing.assert_array_equal(other.get_estimate(data[0][:5]), t.get_estimate(data[0][:5]))
    # fitting goes on from the loaded state exactly as from the original
    t.fit(10.0, 0.1, max_iterations=2, min_iterations=0)
    other.fit(10.0, 0.1, max_iterations=2, min_iterations=0)
    assert same_tree(other.final_w, t.final_w)


def test_malicious_pickle_runs_nothing_without_the_flag(data, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Marker(marker))
    (tmp_path / "imnn.pkl").write_bytes(evil)
    with pytest.raises(
        PickleRefusedError, match=r"pickle from imnn_stream 0\.1\.0.*--trust-pickle"
    ):
        small(data).load(tmp_path / "imnn.pkl")
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "checkpoint.pkl").write_bytes(evil)
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        small(data).fit(10.0, 0.1, max_iterations=2, checkpoint_dir=ckpt, resume=True)
    # an old protocol-0 pickle is not read either
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(Marker(marker), protocol=0))
    with pytest.raises(ValueError):
        small(data).load(tmp_path / "old.pkl")
    assert not marker.exists()
    # the test's pickle does run code when trusted (so the refusals above are meaningful)
    with pytest.raises(Exception):
        small(data).load(tmp_path / "imnn.pkl", allow_pickle=True)
    assert marker.exists()


def test_legacy_pickle_loads_only_with_opt_in(data, tmp_path, capsys):
    t = small(data)
    t.fit(10.0, 0.1, max_iterations=3, min_iterations=0)
    legacy = jax.device_get(  # what 0.1.0's Trainer.save pickled
        dict(
            version=1,
            cls=type(t).__name__,
            config=dict(n_s=100, n_d=100, n_params=2, n_summaries=2, input_shape=(10,)),
            state=t.state,
            step=t._step,
            monitor=t._monitor.to_dict(),
            history=t.history,
            initial_w=t.initial_w,
            final_w=t.final_w,
            best_w=t.best_w,
            w=t.w,
            stats_key=t._stats_key,
            statistics=dict(F=t.F, invF=t.invF, C=t.C, invC=t.invC, dμ_dθ=t.dμ_dθ, μ=t.μ),
        )
    )
    path = tmp_path / "imnn.pkl"
    path.write_bytes(pickle.dumps(legacy))
    other = small(data, key=5)
    with pytest.raises(PickleRefusedError):
        other.load(path)
    capsys.readouterr()
    other.load(path, allow_pickle=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "0.1.0" in err[0]
    np.testing.assert_array_equal(other.get_estimate(data[0][:5]), t.get_estimate(data[0][:5]))


def test_module_spec_is_imported_only_with_trust_code(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_spec_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from imnn_stream.models import mlp\n"
        "def factory(n):\n    return mlp((4,), n)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("evil_spec_mod:factory", "os:system"):
        with pytest.raises(models.UntrustedCodeError, match=rf"{spec}.*--trust-code"):
            models.from_spec(spec, 2)
    assert not marker.exists() and "evil_spec_mod" not in sys.modules
    for spec in ("mlp:4", "cnn:2", "polynomial:2"):  # built-ins load anywhere
        models.from_spec(spec, 2)
    init, _ = models.from_spec("evil_spec_mod:factory", 2, trust_code=True)
    assert marker.exists() and init(jax.random.PRNGKey(0), (10,))[0] == (2,)


def test_resume_refuses_another_fit_and_lists_what_differs(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    t = small(data)
    t.identity = dict(model="mlp:4", archive_manifest_sha256="aaa")
    t.fit(10.0, 0.1, max_iterations=3, min_iterations=0, checkpoint_dir=ckpt, checkpoint_every=1)
    assert (ckpt / "checkpoint.npz").exists() and not (ckpt / "checkpoint.pkl").exists()
    other = small(data)
    other.identity = dict(model="mlp:8", archive_manifest_sha256="bbb")
    with pytest.raises(ValueError, match="cannot resume") as e:
        other.fit(10.0, 0.1, max_iterations=3, min_iterations=0, checkpoint_dir=ckpt, resume=True)
    message = str(e.value)
    assert "\n" not in message
    assert "model: 'mlp:4' → 'mlp:8'" in message and "archive_manifest_sha256" in message
    other.identity = dict(t.identity)
    with pytest.raises(ValueError, match="λ: 10.0 → 5.0"):
        other.fit(5.0, 0.1, max_iterations=3, min_iterations=0, checkpoint_dir=ckpt, resume=True)


@pytest.mark.parametrize("how", ["max_iterations", "early_stopping"])
def test_resuming_a_stopped_fit_does_not_iterate_again(data, tmp_path, how):
    ckpt = tmp_path / "ckpt"
    kw = dict(max_iterations=4, min_iterations=0, patience=100)
    if how == "early_stopping":
        kw = dict(max_iterations=300, min_iterations=0, patience=1)
    t = small(data)
    t.fit(10.0, 0.1, checkpoint_dir=ckpt, **kw)
    n = len(t.history["detF"])
    assert n == 4 if how == "max_iterations" else n < 300
    for _ in range(2):
        again = small(data)
        again.fit(10.0, 0.1, checkpoint_dir=ckpt, resume=True, **kw)
        assert len(again.history["detF"]) == n
        assert same_tree(again.final_w, t.final_w)


def test_set_F_statistics_makes_w_the_current_weights(data):
    t = small(data)
    t.fit(10.0, 0.1, max_iterations=5, min_iterations=0, best=False)
    w0 = t.initial_w
    assert not same_tree(t.w, w0)
    t.set_F_statistics(w=w0)
    assert t.w is w0
    # by hand, in numpy, at w0
    f, d, _ = data
    x = np.asarray(t.model(w0, jnp.asarray(f)), np.float64)
    x_minus = np.asarray(t.model(w0, jnp.asarray(d[:, 0])), np.float64)
    x_plus = np.asarray(t.model(w0, jnp.asarray(d[:, 1])), np.float64)
    δθ = np.asarray(DELTA_THETA, np.float64)
    dx = ((x_plus - x_minus) / δθ[None, :, None]).transpose(0, 2, 1)  # (n_d, summaries, params)
    mu = x.mean(0)
    C = np.cov(x.T, ddof=1)
    dmu = dx.mean(0)
    F = dmu.T @ np.linalg.inv(C) @ dmu
    target = f[:7]
    xd = np.asarray(t.model(w0, jnp.asarray(target)), np.float64)
    by_hand = THETA_FID + (np.linalg.inv(F) @ dmu.T @ np.linalg.inv(C) @ (xd - mu).T).T
    np.testing.assert_allclose(t.F, F, rtol=2e-3)
    np.testing.assert_allclose(t.get_estimate(target), by_hand, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("bucket", ["gcs", "s3"])
def test_save_and_load_through_a_bucket(data, bucket, request):
    # save files go through writers.fs like archives: one upload to gs:// and s3://
    # (loopback emulators), read back with no local copy
    root = request.getfixturevalue(bucket)
    root = root if isinstance(root, str) else root[0]
    t = small(data)
    t.fit(10.0, 0.1, max_iterations=2, min_iterations=0)
    url = f"{root}/runs/imnn-{bucket}.npz"
    assert t.save(url) == url
    other = small(data, key=5)
    other.load(url)
    assert same_tree(other.w, t.w) and same_tree(other.state, t.state)
    np.testing.assert_array_equal(other.history["detF"], t.history["detF"])
    with pytest.raises(FileNotFoundError):
        other.load(f"{root}/runs/absent.npz")
