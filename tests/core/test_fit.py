"""Fitting on the toy Gaussian problem (exact det F = 50) and the fitting API."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import imnn_stream as im
from beam_jobs.simulators import gaussian_toy
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

EXACT = 50.0


def kwargs(n_s=1000, n_d=1000, lr=1e-3, hidden=(128, 128), key=0):
    return dict(
        n_s=n_s,
        n_d=n_d,
        n_params=2,
        n_summaries=2,
        input_shape=(10,),
        θ_fid=THETA_FID,
        model=im.models.mlp(hidden, 2),
        optimiser=optax.adam(lr),
        key_or_state=jax.random.PRNGKey(key),
    )


@pytest.fixture(scope="module")
def numerical_fit(toy_1000):
    (f, d, _), (vf, vd, _) = toy_1000
    imnn = im.NumericalGradientIMNN(
        **kwargs(),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
        validation_fiducial=vf,
        validation_derivative=vd,
    )
    imnn.fit(10.0, 0.1, patience=100, max_iterations=3000)
    return imnn


def test_numerical_reaches_exact_information_on_validation(numerical_fit):
    h = numerical_fit.history
    assert 40.0 <= h["val_detF"].max() <= 52.0
    assert h["max_detF"][-1] == pytest.approx(h["val_detF"].max())
    # early stopping stopped: the last `patience` iterations did not improve
    assert np.argmax(h["val_detF"]) == len(h["val_detF"]) - 101
    # the kept weights are the ones that were judged best
    x, dx = numerical_fit.get_summaries(validate=True)
    F = im.fisher.fisher_statistics(jnp.asarray(x), jnp.asarray(dx))[0]
    assert float(jnp.linalg.det(F)) == pytest.approx(h["val_detF"].max(), rel=1e-4)


def test_gradient_reaches_exact_information_on_validation(toy_1000):
    (f, _, g), (vf, _, vg) = toy_1000
    imnn = im.GradientIMNN(
        **kwargs(), fiducial=f, derivative=g, validation_fiducial=vf, validation_derivative=vg
    )
    imnn.fit(10.0, 0.1, patience=100, max_iterations=3000)
    assert 40.0 <= imnn.history["val_detF"].max() <= 52.0


@pytest.mark.parametrize("aggregated", [False, True])
def test_simulator_reaches_exact_information_on_fresh_simulations(aggregated, cpu_devices):
    # a network that can represent the sufficient statistics (Σd, Σd²), so the check is
    # on the trainer: simulator derivatives, loss, optimiser, early stopping
    kw = dict(
        kwargs(n_s=500, n_d=500),
        model=im.models.polynomial(2, 2),
        optimiser=optax.adam(optax.exponential_decay(3e-2, 600, 0.03)),
    )
    if aggregated:
        imnn = im.AggregatedSimulatorIMNN(
            **kw,
            simulator=gaussian_toy,
            host=cpu_devices[0],
            devices=cpu_devices[:2],
            n_per_device=125,
        )
        iterations = 150
    else:
        imnn = im.SimulatorIMNN(**kw, simulator=gaussian_toy)
        iterations = 600
    imnn.fit(
        10.0,
        0.1,
        rng=jax.random.PRNGKey(2),
        patience=iterations,
        min_iterations=0,
        max_iterations=iterations,
    )
    if aggregated:  # a short fit of the same trainer through two passes: learning, finite
        assert imnn.history["val_detF"][-10:].mean() > 10 * imnn.history["val_detF"][:10].mean()
        return
    # judged on 5000 fresh simulations, with the fitted weights
    big = im.SimulatorIMNN(
        **dict(kw, n_s=5000, n_d=5000, key_or_state=imnn.state), simulator=gaussian_toy
    )
    big.set_F_statistics(w=imnn.w, key=jax.random.PRNGKey(99))
    assert 45.0 <= float(np.linalg.det(big.F)) <= 52.0


def test_estimates_of_fiducial_simulations_average_to_theta_fid(numerical_fit):
    fid, _, _ = toy_data(42, 2000, 1)
    est = numerical_fit.get_estimate(fid)
    assert est.shape == (2000, 2)
    mean, err = est.mean(0), est.std(0, ddof=1) / np.sqrt(len(est))
    assert np.all(np.abs(mean - THETA_FID) < 3 * err)
    one = numerical_fit.get_estimate(fid[0])
    assert one.shape == (2,)
    np.testing.assert_allclose(one, est[0], rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_reproduces_estimates(numerical_fit, tmp_path, toy_1000):
    (f, d, _), (vf, vd, _) = toy_1000
    path = numerical_fit.save(tmp_path / "imnn.pkl")
    other = im.NumericalGradientIMNN(
        **kwargs(key=7),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
        validation_fiducial=vf,
        validation_derivative=vd,
    )
    other.load(path)
    np.testing.assert_array_equal(other.get_estimate(vf[:50]), numerical_fit.get_estimate(vf[:50]))
    np.testing.assert_array_equal(other.history["val_detF"], numerical_fit.history["val_detF"])
    wrong = im.NumericalGradientIMNN(
        **dict(kwargs(key=7), model=im.models.mlp((8,), 2)),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
    )
    with pytest.raises(ValueError, match="parameter shapes"):
        wrong.load(path)


def test_plot_writes_history_figure(numerical_fit, tmp_path):
    out = tmp_path / "history.png"
    ax = numerical_fit.plot(expected_detF=EXACT, filename=out)
    assert len(ax) == 3 and out.stat().st_size > 10000


def count_compiles(fn):
    events = []

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(events)


@pytest.mark.parametrize("loop", ["step", "while_loop", "aggregated"])
def test_second_fit_continues_and_compiles_nothing(cpu_devices, loop):
    f, d, _ = toy_data(3, 200, 200)
    kw = kwargs(n_s=200, n_d=200, hidden=(16,))
    if loop == "aggregated":
        imnn = im.AggregatedNumericalGradientIMNN(
            **kw,
            fiducial=f,
            derivative=d,
            δθ=DELTA_THETA,
            host=cpu_devices[0],
            devices=cpu_devices[:2],
            n_per_device=50,
        )
    else:
        imnn = im.NumericalGradientIMNN(**kw, fiducial=f, derivative=d, δθ=DELTA_THETA)
        imnn.loop = loop
    imnn.fit(10.0, 0.1, min_iterations=0, max_iterations=5, patience=100)
    count = imnn.state[1][0].count
    assert len(imnn.history["detF"]) == 5 and int(count) == 5
    n = count_compiles(
        lambda: imnn.fit(10.0, 0.1, min_iterations=0, max_iterations=7, patience=100)
    )
    assert n == 0
    assert len(imnn.history["detF"]) == 12
    assert int(imnn.state[1][0].count) == 12  # the optimiser's step count went on


def test_while_loop_and_stepwise_fits_are_identical():
    f, d, _ = toy_data(3, 100, 100)
    vf, vd, _ = toy_data(4, 100, 100)
    runs = []
    for loop in ("step", "while_loop"):
        imnn = im.NumericalGradientIMNN(
            **kwargs(n_s=100, n_d=100, hidden=(16,)),
            fiducial=f,
            derivative=d,
            δθ=DELTA_THETA,
            validation_fiducial=vf,
            validation_derivative=vd,
        )
        imnn.loop = loop
        imnn.fit(10.0, 0.1, min_iterations=0, patience=5, max_iterations=40)
        runs.append(imnn)
    a, b = runs
    np.testing.assert_allclose(a.history["val_detF"], b.history["val_detF"], rtol=1e-5)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda x, y: np.allclose(x, y, rtol=1e-5, atol=1e-7), a.w, b.w)
    )


@pytest.mark.parametrize("loop", ["step", "while_loop"])
def test_non_finite_summaries_stop_with_the_iteration(loop):
    f, d, _ = toy_data(3, 100, 100)
    f = f.copy()
    f[17, 3] = np.nan
    imnn = im.NumericalGradientIMNN(
        **kwargs(n_s=100, n_d=100, hidden=(8,)), fiducial=f, derivative=d, δθ=DELTA_THETA
    )
    imnn.loop = loop
    with pytest.raises(im.NonFiniteError, match="iteration 0"):
        imnn.fit(10.0, 0.1, max_iterations=10)


def test_stax_style_model_and_optimiser_triple_work():
    from jax.example_libraries import optimizers, stax

    model = stax.serial(stax.Dense(16), stax.LeakyRelu, stax.Dense(2))
    opt = optimizers.adam(1e-3)
    f, d, _ = toy_data(3, 100, 100)
    imnn = im.NumericalGradientIMNN(
        **dict(kwargs(n_s=100, n_d=100), model=model, optimiser=opt),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
    )
    imnn.fit(10.0, 0.1, min_iterations=0, max_iterations=5)
    assert len(imnn.history["detF"]) == 5
    # continue from the optimiser state
    again = im.NumericalGradientIMNN(
        **dict(kwargs(n_s=100, n_d=100), model=model, optimiser=opt, key_or_state=imnn.state),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
    )
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b), again.w, imnn.final_w)
    )


def test_flax_style_dict_parameters_work():
    def init(rng, input_shape):
        k1, k2 = jax.random.split(rng)
        return (2,), {
            "dense": {"kernel": jax.random.normal(k1, (10, 2)) * 0.3, "bias": jnp.zeros(2)},
            "scale": {"value": jnp.ones(2)},
        }

    def apply(w, x):
        return (x @ w["dense"]["kernel"] + w["dense"]["bias"]) * w["scale"]["value"] + 0.1 * (
            x**2
        ) @ w["dense"]["kernel"]

    f, d, _ = toy_data(3, 100, 100)
    imnn = im.NumericalGradientIMNN(
        **dict(kwargs(n_s=100, n_d=100), model=(init, apply)),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
    )
    imnn.fit(10.0, 0.1, min_iterations=0, max_iterations=5)
    assert set(imnn.w) == {"dense", "scale"}
