"""Aggregated (two-pass, several devices) gradients equal the in-memory ones."""

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from beam_jobs.simulators import gaussian_random_field, gaussian_toy
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

N_S, N_D = 96, 48


def rel_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = np.sqrt(
        sum(
            np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
            for x, y in zip(la, lb)
        )
    )
    den = np.sqrt(sum(np.sum(np.asarray(y, np.float64) ** 2) for y in lb))
    return num / den


def common(shape=(10,)):
    model = im.models.mlp((32, 32), 2) if len(shape) == 1 else im.models.cnn((4, 8), 16, 2)
    return dict(
        n_s=N_S,
        n_d=N_D,
        n_params=2,
        n_summaries=2,
        input_shape=shape,
        θ_fid=THETA_FID,
        model=model,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(3),
    )


@pytest.fixture(scope="module")
def data():
    return toy_data(5, N_S, N_D)


@pytest.mark.parametrize("n_devices", [1, 2])
def test_numerical_aggregated_gradient_equals_in_memory(data, cpu_devices, n_devices):
    fid, num, _ = data
    a = im.NumericalGradientIMNN(**common(), fiducial=fid, derivative=num, δθ=DELTA_THETA)
    b = im.AggregatedNumericalGradientIMNN(
        **common(),
        fiducial=fid,
        derivative=num,
        δθ=DELTA_THETA,
        host=cpu_devices[0],
        devices=cpu_devices[:n_devices],
        n_per_device=8,
    )
    ga, sa = a.loss_gradient(10.0, 0.1)
    gb, sb = b.loss_gradient(10.0, 0.1)
    assert rel_diff(gb, ga) < 1e-5
    assert float(sb["detF"]) == pytest.approx(float(sa["detF"]), rel=1e-5)


@pytest.mark.parametrize("n_devices", [2])
def test_gradient_aggregated_gradient_equals_in_memory(data, cpu_devices, n_devices):
    fid, _, grad = data
    a = im.GradientIMNN(**common(), fiducial=fid, derivative=grad)
    b = im.AggregatedGradientIMNN(
        **common(),
        fiducial=fid,
        derivative=grad,
        host=cpu_devices[0],
        devices=cpu_devices[:n_devices],
        n_per_device=8,
    )
    ga, _ = a.loss_gradient(10.0, 0.1)
    gb, _ = b.loss_gradient(10.0, 0.1)
    assert rel_diff(gb, ga) < 1e-5


@pytest.mark.parametrize("n_devices", [2])
def test_simulator_aggregated_gradient_equals_in_memory(cpu_devices, n_devices):
    key = jax.random.PRNGKey(11)
    a = im.SimulatorIMNN(**common(), simulator=gaussian_toy)
    b = im.AggregatedSimulatorIMNN(
        **common(),
        simulator=gaussian_toy,
        host=cpu_devices[0],
        devices=cpu_devices[:n_devices],
        n_per_device=8,
    )
    ga, _ = a.loss_gradient(10.0, 0.1, key=key)
    gb, _ = b.loss_gradient(10.0, 0.1, key=key)
    assert rel_diff(gb, ga) < 1e-5


def test_gradient_mode_on_non_square_2d_input_matches_finite_differences(cpu_devices):
    # dsim/dθ by jax versus seed-matched finite differences of the same simulator on 8×6 inputs
    def field(key, θ):
        return gaussian_random_field(8)(key, θ)[:, :6]

    θ = np.array([1.0, 2.0], np.float32)
    δθ = np.array([0.002, 0.002], np.float32)
    fid, num, grad = toy_data(7, 64, 64, simulator=field, θ=θ, δθ=δθ)
    assert grad.shape == (64, 8, 6, 2)
    kw = common((8, 6))
    kw.update(θ_fid=θ, n_s=64, n_d=64, model=im.models.mlp((16,), 2))
    g = im.GradientIMNN(**kw, fiducial=fid, derivative=grad)
    n = im.NumericalGradientIMNN(**kw, fiducial=fid, derivative=num, δθ=δθ)
    xg, dxg = g.get_summaries()
    xn, dxn = n.get_summaries()
    np.testing.assert_allclose(xg, xn, rtol=1e-6)
    np.testing.assert_allclose(dxg, dxn, rtol=2e-2, atol=2e-3)
    b = im.AggregatedGradientIMNN(
        **kw,
        fiducial=fid,
        derivative=grad,
        host=cpu_devices[0],
        devices=cpu_devices[:2],
        n_per_device=16,
    )
    assert rel_diff(b.loss_gradient(10.0, 0.1)[0], g.loss_gradient(10.0, 0.1)[0]) < 1e-5


def test_aggregated_over_four_devices_matches_one(data, cpu_devices):
    fid, num, _ = data
    one = im.AggregatedNumericalGradientIMNN(
        **common(),
        fiducial=fid,
        derivative=num,
        δθ=DELTA_THETA,
        host=cpu_devices[0],
        devices=cpu_devices[:1],
        n_per_device=24,
    )
    four = im.AggregatedNumericalGradientIMNN(
        **common(),
        fiducial=fid,
        derivative=num,
        δθ=DELTA_THETA,
        host=cpu_devices[0],
        devices=cpu_devices[:4],
        n_per_device=6,
    )
    assert rel_diff(four.loss_gradient(10.0, 0.1)[0], one.loss_gradient(10.0, 0.1)[0]) < 1e-5


def test_scanned_groups_see_n_per_device_samples(data, cpu_devices):
    """Sources hand out whole multiples of n_per_device (``sources.BATCH_BYTES``); where
    groups are scanned (accelerators) the engine splits them again, so the network sees
    n_per_device samples at a time, and the gradient is the fused (CPU) one's."""
    from imnn_stream.modes import numerical_mode, split_numerical
    from imnn_stream.strategies import array_sources
    from imnn_stream.twopass import TwoPass

    fid, num, _ = data
    init, apply = im.models.mlp((32, 32), 2)
    seen = []

    def spy(w, x):  # records the batch size the network is traced with
        seen.append(x.shape[0])
        return apply(w, x)

    mode = numerical_mode(spy, N_S, N_D, 2, DELTA_THETA)
    sources = array_sources(split_numerical(fid, num), mode, 2, 8)
    assert all(s.n > s.unit == 8 for per in sources.values() for s in per)
    w = init(jax.random.PRNGKey(0), (10,))[1]
    out = {}
    for fuse in (True, False):
        engine = TwoPass(mode, cpu_devices[0], cpu_devices[:2], fuse=fuse)
        seen.clear()
        out[fuse] = engine.value_and_grad(w, sources, 10.0, 0.1)
        assert set(seen) == ({8} if not fuse else {N_S // 2, N_D * 2 * 2 // 2})
    assert rel_diff(out[False][0], out[True][0]) < 1e-5
    assert float(out[False][1]["detF"]) == pytest.approx(float(out[True][1]["detF"]), rel=1e-4)


@pytest.mark.parametrize("aggregated", [False, True])
def test_simulator_classes_without_validation_train_the_same(cpu_devices, aggregated):
    # validation=False (as the reference's simulator classes): no validation pass, the
    # training statistics stand for it; the training itself is unchanged
    def make(validation):
        if not aggregated:
            return im.SimulatorIMNN(**common(), simulator=gaussian_toy, validation=validation)
        return im.AggregatedSimulatorIMNN(
            **common(),
            simulator=gaussian_toy,
            host=cpu_devices[0],
            devices=cpu_devices[:2],
            n_per_device=8,
            validation=validation,
        )

    on, off = make(True), make(False)
    assert on.validate and not off.validate
    for imnn in (on, off):
        imnn.fit(10.0, 0.1, rng=jax.random.PRNGKey(3), min_iterations=4, max_iterations=4)
    # the same training passes (``w`` differs: each keeps its best by its own det F)
    np.testing.assert_allclose(on.history["detF"], off.history["detF"], rtol=1e-5)
    np.testing.assert_array_equal(off.history["val_detF"], off.history["detF"])
    assert not np.allclose(on.history["val_detF"], on.history["detF"])
    with pytest.raises(TypeError, match="`validation` must be True or False"):
        make("no")
    # the factory passes it on to the simulator classes, and refuses it with data
    agg = dict(host=cpu_devices[0], devices=cpu_devices[:2], n_per_device=8) if aggregated else {}
    picked = im.IMNN(**common(), simulator=gaussian_toy, validation=False, verbose=False, **agg)
    assert type(picked) is type(off) and not picked.validate
    assert im.IMNN(**common(), simulator=gaussian_toy, verbose=False, **agg).validate
    x = np.zeros((N_S, 10), np.float32)
    with pytest.raises(ValueError, match="`validation` applies with `simulator` only"):
        im.IMNN(**common(), fiducial=x, derivative=x, validation=False, verbose=False, **agg)
