"""Flax (linen, nnx) and Equinox models through imnn_stream.models.from_flax /
from_equinox: the IMNN loss gradient w.r.t. the weights equals the hand-written
stax equivalent's with the same weights, and a NumericalGradientIMNN trains."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import imnn_stream as im

from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

N_S, N_D, SHAPE = 64, 32, (10,)
STAX = im.models.mlp((16, 16), 2)  # Dense → leaky_relu(0.01) → Dense → leaky_relu → Dense


class Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.leaky_relu(nn.Dense(16)(x))
        x = nn.leaky_relu(nn.Dense(16)(x))
        return nn.Dense(2)(x)


class NNX(nnx.Module):
    def __init__(self, rngs):
        self.l0, self.l1, self.l2 = (
            nnx.Linear(10, 16, rngs=rngs),
            nnx.Linear(16, 16, rngs=rngs),
            nnx.Linear(16, 2, rngs=rngs),
        )

    def __call__(self, x):
        x = nnx.leaky_relu(self.l0(x))
        x = nnx.leaky_relu(self.l1(x))
        return self.l2(x)


def _equinox(key):
    return eqx.nn.MLP(10, 2, 16, 2, activation=jax.nn.leaky_relu, key=key)


# each case: (model, stax weights from the adapter's weights, adapter-shaped from stax-shaped)
def _linen_to_stax(w):
    return [(w[f"Dense_{i}"]["kernel"], w[f"Dense_{i}"]["bias"]) for i in range(3)]


def _nnx_to_stax(w):
    return [(w[f"l{i}"]["kernel"], w[f"l{i}"]["bias"]) for i in range(3)]


def _eqx_to_stax(w):  # eqx Linear: weight (out, in), bias (out,), in layer order
    return [(w[2 * i].T, w[2 * i + 1]) for i in range(3)]


CASES = {
    "linen": (lambda: im.models.from_flax(Linen(), SHAPE), _linen_to_stax),
    "nnx-module": (lambda: im.models.from_flax(NNX(nnx.Rngs(0)), SHAPE), _nnx_to_stax),
    "nnx-factory": (lambda: im.models.from_flax(NNX, SHAPE), _nnx_to_stax),
    "equinox-module": (
        lambda: im.models.from_equinox(_equinox(jax.random.PRNGKey(1)), SHAPE),
        _eqx_to_stax,
    ),
    "equinox-factory": (lambda: im.models.from_equinox(_equinox, SHAPE), _eqx_to_stax),
}


@pytest.fixture(scope="module")
def data():
    return toy_data(5, N_S, N_D)


def _imnn(model, data, key=3):
    f, n, _ = data
    return im.NumericalGradientIMNN(
        n_s=N_S,
        n_d=N_D,
        n_params=2,
        n_summaries=2,
        input_shape=SHAPE,
        θ_fid=THETA_FID,
        model=model,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(key),
        fiducial=f,
        derivative=n,
        δθ=DELTA_THETA,
    )


def _rel(a, b):
    la = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    lb = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(b)])
    return np.linalg.norm(la - lb) / np.linalg.norm(lb)


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_matches_stax_with_the_same_weights(case, data):
    make, to_stax = CASES[case]
    init, apply = make()
    out_shape, w = init(jax.random.PRNGKey(0), SHAPE)
    assert out_shape == (2,)
    x = data[0][:5]
    w_stax = to_stax(w)
    # one input and a batch, as the stax models
    np.testing.assert_allclose(apply(w, x), STAX[1](w_stax, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(apply(w, x[0]), STAX[1](w_stax, x[0]), rtol=1e-5, atol=1e-6)
    ours = _imnn((init, apply), data)
    ref = _imnn(STAX, data)
    g, _ = ours.loss_gradient(10.0, 0.1, w=w)
    g_ref, _ = ref.loss_gradient(10.0, 0.1, w=w_stax)
    assert _rel(to_stax(g), g_ref) < 1e-5


def test_factories_take_the_trainers_key():
    for make in (
        lambda: im.models.from_flax(NNX, SHAPE),
        lambda: im.models.from_equinox(_equinox, SHAPE),
    ):
        init, _ = make()
        a, b, c = (init(jax.random.PRNGKey(k), SHAPE)[1] for k in (0, 0, 1))
        assert _rel(a, b) == 0 and _rel(a, c) > 0.1


def test_linen_module_for_batches():
    class Flatten(nn.Module):  # written for a batch: (n, 4, 4) -> (n, 2)
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x.reshape((x.shape[0], -1)))

    init, apply = im.models.from_flax(Flatten(), (4, 4), batched=True)
    shape, w = init(jax.random.PRNGKey(0), (4, 4))
    x = jnp.ones((3, 4, 4))
    assert shape == (2,) and apply(w, x).shape == (3, 2) and apply(w, x[0]).shape == (2,)


@pytest.mark.parametrize("case", ["linen", "nnx-factory", "equinox-factory"])
def test_numerical_gradient_imnn_trains(case, data):
    imnn = _imnn(CASES[case][0](), data)
    imnn.fit(10.0, 0.1, patience=100, min_iterations=40, max_iterations=40)
    h = imnn.history
    assert len(h["detF"]) == 40 and all(np.all(np.isfinite(v)) for v in h.values())
    # the first iterations bring the covariance towards the identity (the regulariser
    # Λ2 falls), as for the stax model; the weights move
    assert h["Λ2"][-1] < 0.5 * h["Λ2"][0]
    assert abs(np.log(h["detC"][-1])) < 0.8 * abs(np.log(h["detC"][0]))
    assert _rel(imnn.final_w, imnn.initial_w) > 1e-3
