"""ASCII keyword aliases of the seed's Greek names (issue 15 item 3): theta_fid,
delta_theta, lam, eps work wherever θ_fid, δθ, λ, ϵ do — IMNN(...), every class's
constructor, fit, loss_gradient, fisher.alpha — and both spellings at once are refused."""

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from imnn_stream import fisher
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data


def kwargs(greek=True):
    f, d, _ = toy_data(0, 100, 100)
    names = ("θ_fid", "δθ") if greek else ("theta_fid", "delta_theta")
    return {
        "n_s": 100,
        "n_d": 100,
        "n_params": 2,
        "n_summaries": 2,
        "input_shape": (10,),
        names[0]: THETA_FID,
        "model": im.models.mlp((8,), 2),
        "optimiser": optax.adam(1e-3),
        "key_or_state": jax.random.PRNGKey(0),
        "fiducial": f,
        "derivative": d,
        names[1]: DELTA_THETA,
    }


def test_ascii_names_give_the_same_fit_as_the_greek_ones():
    greek = im.IMNN(**kwargs(True), verbose=False).fit(λ=10.0, ϵ=0.1, max_iterations=5)
    ascii_ = im.IMNN(**kwargs(False), verbose=False).fit(lam=10.0, eps=0.1, max_iterations=5)
    direct = im.NumericalGradientIMNN(**kwargs(False)).fit(10.0, eps=0.1, max_iterations=5)
    for other in (ascii_, direct):
        np.testing.assert_array_equal(np.asarray(greek.F), np.asarray(other.F))
    g1, _ = greek.loss_gradient(lam=10.0, eps=0.1)
    g2, _ = greek.loss_gradient(10.0, 0.1)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, g1, g2))
    assert fisher.alpha(lam=10.0, eps=0.1) == fisher.alpha(10.0, 0.1)


def test_both_spellings_are_refused():
    with pytest.raises(TypeError, match="`θ_fid` and `theta_fid`"):
        im.IMNN(**kwargs(True), theta_fid=THETA_FID, verbose=False)
    with pytest.raises(TypeError, match="`δθ` and `delta_theta`"):
        im.NumericalGradientIMNN(**kwargs(True), delta_theta=DELTA_THETA)
    imnn = im.NumericalGradientIMNN(**kwargs(True))
    with pytest.raises(TypeError, match="`λ` and `lam`"):
        imnn.fit(10.0, 0.1, lam=10.0)
    with pytest.raises(TypeError, match="`ϵ` and `eps`"):
        imnn.fit(λ=10.0, ϵ=0.1, eps=0.1)
    with pytest.raises(TypeError, match="`λ` and `lam`"):
        fisher.alpha(10.0, lam=10.0)


def test_every_trainer_class_takes_the_ascii_names():
    import inspect

    from imnn_stream import classes, streaming

    for cls in [getattr(classes, n) for n in classes.__all__] + [
        streaming.DatasetNumericalGradientIMNN,
        streaming.DatasetGradientIMNN,
    ]:
        for name in ("__init__", "fit", "loss_gradient"):
            assert getattr(getattr(cls, name), "__ascii_aliases__", False), (cls, name)
        # the signature shown to users stays the seed's
        assert "θ_fid" in inspect.signature(cls.__init__).parameters
