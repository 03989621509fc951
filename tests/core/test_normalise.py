"""Input normalisation inside the network (issue 12 item 1): derivatives stay exact,
the archive's statistics are those of its fiducial inputs, and a saved run
estimates identically after load."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import imnn_stream as im
from beam_jobs.simulators import LOGNORMAL_THETA_FID, lognormal
from imnn_stream import normalise
from imnn_stream.app.fitting import FitConfig, fit_archive
from imnn_stream.app.runs import FittedIMNN
from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, toy_data

Θ = np.asarray(LOGNORMAL_THETA_FID, np.float32)


@pytest.mark.parametrize("transform", ["none", "log1p", "asinh"])
def test_normalisation_keeps_derivatives_exact(transform):
    jax.config.update("jax_enable_x64", True)
    try:
        θ = jnp.asarray(Θ, jnp.float64)
        keys = jax.random.split(jax.random.PRNGKey(0), 50)

        def sim(k, t):  # the log-normal simulator in float64
            return jnp.exp(t[0] + t[1] * jax.random.normal(k, (10,), jnp.float64))

        fid = jax.vmap(lambda k: sim(k, θ))(keys)
        norm = normalise.from_arrays(np.asarray(fid), transform)
        init, apply = normalise.wrap(im.models.mlp((16,), 2), norm)
        _, w = init(jax.random.PRNGKey(1), (10,))
        w = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), w)
        for k in keys[:5]:
            x = sim(k, θ)
            dsim = jax.jacfwd(sim, argnums=1)(k, θ)  # gradient records: dsim/dθ (10, 2)
            # the gradient mode's chain rule: one JVP of the normalised network per parameter
            chain = jnp.stack(
                [jax.jvp(lambda d: apply(w, d), (x,), (dsim[:, a],))[1] for a in range(2)], -1
            )
            h = 1e-6  # the numerical mode: seed-matched differences through the same function
            numerical = jnp.stack(
                [
                    (apply(w, sim(k, θ.at[a].add(h / 2))) - apply(w, sim(k, θ.at[a].add(-h / 2))))
                    / h
                    for a in range(2)
                ],
                -1,
            )
            np.testing.assert_allclose(chain, numerical, rtol=1e-5, atol=1e-8)
            # and the normalisation's own derivative is T'(x)/s
            v = jnp.ones_like(x)
            _, dn = jax.jvp(norm, (x,), (v,))
            dT = {"none": 1.0, "log1p": 1 / (1 + x), "asinh": 1 / jnp.sqrt(1 + x**2)}[transform]
            np.testing.assert_allclose(dn, dT / norm.std, rtol=1e-5)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_statistics_per_element_and_per_channel():
    x = np.random.default_rng(0).lognormal(size=(200, 4, 4, 3)).astype(np.float32)
    n = normalise.from_arrays(x, "log1p")
    assert n.mean.shape == n.std.shape == (3,)
    np.testing.assert_allclose(n.mean, np.log1p(x).mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(n.std, np.log1p(x).reshape(-1, 3).std(0, ddof=1), rtol=1e-4)
    assert normalise.from_arrays(x[:, :, :, 0]).mean.shape == ()
    assert normalise.from_arrays(x[:, 0, 0, :]).mean.shape == (3,)
    with pytest.raises(ValueError, match="log1p"):
        normalise.from_arrays(-2.0 * np.ones((3, 2)), "log1p")


def test_saved_run_estimates_identically_after_load(tmp_path):
    (f, d, _), (vf, vd, _) = (toy_data(s, 100, 100, lognormal, Θ, DELTA_THETA) for s in (0, 1))
    archive = str(tmp_path / "archive")
    write_arrays(
        archive,
        "numerical",
        Θ,
        DELTA_THETA,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
        n_devices=2,
        records_per_shard=30,
    )
    config = FitConfig(
        model="mlp:16",
        devices=1,
        n_per_device=50,
        max_iterations=5,
        min_iterations=0,
        input_transform="log1p",
    )
    out = str(tmp_path / "run")
    imnn, _ = fit_archive(archive, config, out, progress=False)
    expected = normalise.from_arrays(f, "log1p")  # the archive's fiducial training inputs
    np.testing.assert_allclose(imnn.normalisation.mean, expected.mean, rtol=1e-5)
    np.testing.assert_allclose(imnn.normalisation.std, expected.std, rtol=1e-4)
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["normalisation"]["transform"] == "log1p"
    target = vf[:7]
    fitted = FittedIMNN(out)
    np.testing.assert_array_equal(fitted.get_estimate(target), imnn.get_estimate(target))
    np.testing.assert_array_equal(fitted.get_estimate(target[0]), imnn.get_estimate(target[0]))
    # the network really sees normalised inputs: raw weights on raw inputs differ
    raw = im.models.mlp((16,), 2)[1](imnn.w, jnp.asarray(target))
    assert not np.allclose(raw, fitted.model(fitted.w, jnp.asarray(target)))
