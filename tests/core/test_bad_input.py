"""Every constructor and fit argument is checked, and the error names it."""

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from beam_jobs.simulators import gaussian_toy
from ..toy_problem import DELTA_THETA, THETA_FID

N_S, N_D = 16, 8
rng = np.random.default_rng(0)
FID = rng.normal(size=(N_S, 10)).astype(np.float32)
NUM = rng.normal(size=(N_D, 2, 2, 10)).astype(np.float32)
GRAD = rng.normal(size=(N_D, 10, 2)).astype(np.float32)
MODEL = im.models.mlp((8,), 2)


def base(**over):
    kw = dict(
        n_s=N_S,
        n_d=N_D,
        n_params=2,
        n_summaries=2,
        input_shape=(10,),
        θ_fid=THETA_FID,
        model=MODEL,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
    )
    kw.update(over)
    return kw


def numerical(**over):
    kw = base(fiducial=FID, derivative=NUM, δθ=DELTA_THETA)
    kw.update(over)
    return im.NumericalGradientIMNN(**kw)


def gradient(**over):
    kw = base(fiducial=FID, derivative=GRAD)
    kw.update(over)
    return im.GradientIMNN(**kw)


def aggregated(**over):
    d = jax.devices("cpu")
    kw = base(
        fiducial=FID, derivative=NUM, δθ=DELTA_THETA, host=d[0], devices=d[:2], n_per_device=4
    )
    kw.update(over)
    return im.AggregatedNumericalGradientIMNN(**kw)


def factory(**over):
    kw = base(verbose=False)
    kw.update(over)
    return im.IMNN(**kw)


def fit(**over):
    kw = dict(λ=10.0, ϵ=0.1)
    kw.update(over)
    return lambda: numerical().fit(**kw)


CASES = [
    ("n_s float", lambda: numerical(n_s=16.0), TypeError, "n_s"),
    ("n_s too small", lambda: numerical(n_s=1), ValueError, "n_s"),
    ("n_d > n_s", lambda: numerical(n_d=32), ValueError, "n_d"),
    ("n_d zero", lambda: numerical(n_d=0), ValueError, "n_d"),
    ("n_params str", lambda: numerical(n_params="2"), TypeError, "n_params"),
    ("n_summaries bool", lambda: numerical(n_summaries=True), TypeError, "n_summaries"),
    ("input_shape str", lambda: numerical(input_shape="10"), TypeError, "input_shape"),
    ("θ_fid wrong length", lambda: numerical(θ_fid=np.zeros(3)), ValueError, "θ_fid"),
    ("θ_fid nan", lambda: numerical(θ_fid=np.array([np.nan, 1.0])), ValueError, "θ_fid"),
    ("model not a pair", lambda: numerical(model=MODEL[1]), TypeError, "model"),
    ("model wrong output", lambda: numerical(model=im.models.mlp((8,), 3)), ValueError, "model"),
    ("optimiser wrong", lambda: numerical(optimiser="not-an-optax-name"), ValueError, "optimiser"),
    ("optimiser object", lambda: numerical(optimiser=42), TypeError, "optimiser"),
    ("key_or_state junk", lambda: numerical(key_or_state="seed"), TypeError, "key_or_state"),
    ("fiducial wrong shape", lambda: numerical(fiducial=FID[:10]), ValueError, "fiducial"),
    ("fiducial not array", lambda: numerical(fiducial=FID.tolist()), TypeError, "fiducial"),
    ("numerical derivative layout", lambda: numerical(derivative=GRAD), ValueError, "derivative"),
    ("gradient derivative layout", lambda: gradient(derivative=NUM), ValueError, "derivative"),
    ("integer fiducial", lambda: numerical(fiducial=FID.astype(np.int32)), TypeError, "fiducial"),
    ("δθ wrong length", lambda: numerical(δθ=np.ones(3)), ValueError, "δθ"),
    ("δθ negative", lambda: numerical(δθ=np.array([0.1, -0.1])), ValueError, "δθ"),
    (
        "validation half given",
        lambda: numerical(validation_fiducial=FID),
        ValueError,
        "validation_derivative",
    ),
    (
        "validation wrong shape",
        lambda: numerical(validation_fiducial=FID[:4], validation_derivative=NUM),
        ValueError,
        "validation_fiducial",
    ),
    (
        "simulator not callable",
        lambda: im.SimulatorIMNN(**base(simulator=3)),
        TypeError,
        "simulator",
    ),
    (
        "simulator wrong shape",
        lambda: im.SimulatorIMNN(**base(simulator=lambda k, t: t)),
        ValueError,
        "simulator",
    ),
    ("n_per_device not dividing", lambda: aggregated(n_per_device=3), ValueError, "n_per_device"),
    ("devices not a list", lambda: aggregated(devices="cpu"), TypeError, "devices"),
    ("host missing device", lambda: aggregated(host="cpu:0"), TypeError, "host"),
    ("n_per_device zero", lambda: aggregated(n_per_device=0), ValueError, "n_per_device"),
    (
        "factory partial aggregation",
        lambda: factory(fiducial=FID, derivative=NUM, δθ=DELTA_THETA, host=jax.devices()[0]),
        ValueError,
        "devices",
    ),
    ("factory nothing", lambda: factory(), ValueError, "simulator"),
    (
        "factory simulator and fiducial",
        lambda: factory(simulator=gaussian_toy, fiducial=FID),
        ValueError,
        "fiducial",
    ),
    (
        "factory mixed list/array",
        lambda: factory(fiducial=[iter([])], derivative=NUM, δθ=DELTA_THETA),
        TypeError,
        "fiducial",
    ),
    ("factory main without remaining", lambda: factory(main=[iter([])]), ValueError, "remaining"),
    ("fit λ ϵ switch regulariser off", fit(λ=10.0, ϵ=0.12), ValueError, "ϵ=0.12"),
    ("fit patience negative", fit(patience=-1), ValueError, "patience"),
    ("fit max_iterations float", fit(max_iterations=10.5), TypeError, "max_iterations"),
    ("fit print_rate zero", fit(print_rate=0), ValueError, "print_rate"),
    ("fit best not bool", fit(best="yes"), TypeError, "best"),
    ("fit rng not a key", fit(rng=5), TypeError, "rng"),
    (
        "simulator fit without rng",
        lambda: im.SimulatorIMNN(**base(simulator=gaussian_toy)).fit(10.0, 0.1),
        ValueError,
        "rng",
    ),
]


@pytest.mark.parametrize("name, make, error, word", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named(name, make, error, word):
    with pytest.raises(error) as e:
        make()
    assert word in str(e.value), str(e.value)


def test_estimate_rejects_wrong_shapes():
    imnn = numerical()
    imnn.fit(10.0, 0.1, min_iterations=0, max_iterations=2)
    with pytest.raises(ValueError, match="`d` must have shape"):
        imnn.get_estimate(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="`d` must have shape"):
        imnn.get_estimate(np.zeros((4, 5, 10)))
    assert imnn.get_estimate(np.zeros(10)).shape == (2,)


def test_factory_picks_the_right_classes():
    d = jax.devices("cpu")
    agg = dict(host=d[0], devices=d[:2], n_per_device=4)
    assert type(factory(simulator=gaussian_toy)) is im.SimulatorIMNN
    assert type(factory(simulator=gaussian_toy, **agg)) is im.AggregatedSimulatorIMNN
    assert type(factory(fiducial=FID, derivative=GRAD)) is im.GradientIMNN
    assert type(factory(fiducial=FID, derivative=GRAD, **agg)) is im.AggregatedGradientIMNN
    assert type(factory(fiducial=FID, derivative=NUM, δθ=DELTA_THETA)) is im.NumericalGradientIMNN
    assert (
        type(factory(fiducial=FID, derivative=NUM, δθ=DELTA_THETA, **agg))
        is im.AggregatedNumericalGradientIMNN
    )
