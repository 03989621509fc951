"""The translation-invariant ``field`` network (issue 12: ≥ 90 % of the Gaussian
random field's Fisher information) and the automatic input transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import imnn_stream as im
from beam_jobs.simulators import LOGNORMAL_THETA_FID, gaussian_random_field, lognormal
from imnn_stream import models, normalise
from writers.input_stats import InputStats

from ..toy_problem import toy_data

GRF_Θ, GRF_Δ = np.array([1.0, 2.0], np.float32), np.array([0.1, 0.1], np.float32)


def _grf(size, n, seed):
    """Seed-matched (fiducial float(n, size, size), derivative float(n, 2, 2, size, size))."""
    return toy_data(seed, n, n, gaussian_random_field(size), GRF_Θ, GRF_Δ)[:2]


@pytest.mark.parametrize("shape", [(16, 16), (12, 10, 2)])
def test_field_shapes_and_translation_invariance(shape):
    init, apply = models.field(filters=3, n_summaries=2)
    out_shape, w = init(jax.random.PRNGKey(0), shape)
    assert out_shape == (2,)
    x = jax.random.normal(jax.random.PRNGKey(1), (4,) + shape)
    batch = apply(w, x)
    assert batch.shape == (4, 2)
    np.testing.assert_allclose(apply(w, x[0]), batch[0], rtol=1e-5, atol=1e-6)
    # periodic shifts leave the power spectrum and the mean unchanged; the learnt
    # filters' "SAME" padding makes them only nearly invariant, so test filters=0
    init0, apply0 = models.field(n_summaries=2)
    _, w0 = init0(jax.random.PRNGKey(0), shape)
    shifted = jnp.roll(x, (3, 5), axis=(1, 2))
    np.testing.assert_allclose(apply0(w0, shifted), apply0(w0, x), rtol=1e-4, atol=1e-5)


def test_calibration_standardises_and_the_optimiser_leaves_it_alone():
    fid, der = _grf(16, 200, 0)
    init, apply = models.field(n_summaries=2)
    _, w = init(jax.random.PRNGKey(0), (16, 16))
    w = models.calibrate((init, apply), w, fid)
    scale = np.asarray(w[0])
    # 11 shells of |k| (to 8√2, rounded) and the mean, for one channel
    assert scale.shape == (2, 1, 12)
    assert np.all(scale[1] > 0) and np.all(np.isfinite(scale))
    # a trainer with the field model calibrates itself on its fiducial inputs
    imnn = im.NumericalGradientIMNN(
        n_s=200, n_d=200, n_params=2, n_summaries=2, input_shape=(16, 16), θ_fid=GRF_Θ,
        model=(init, apply), optimiser=optax.adam(1e-2), key_or_state=jax.random.PRNGKey(0),
        fiducial=fid, derivative=der, δθ=GRF_Δ,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(imnn.w[0]), scale, rtol=1e-5)
    imnn.fit(10.0, 0.1, min_iterations=5, max_iterations=5, print_rate=None)
    np.testing.assert_array_equal(np.asarray(imnn.w[0]), scale)  # stop_gradient: never trained
    assert not np.allclose(np.asarray(imnn.w[1][0]), np.asarray(imnn.initial_w[1][0]))


def test_field_network_keeps_the_gaussian_random_fields_information():
    """Against the analytic Fisher: the default field network keeps ≥ 85 % of det F
    (benchmarks/information.py measures ≥ 90 % with n_s = 1000 and 1000 iterations)."""
    fid, der = _grf(16, 1000, 0)
    vfid, vder = _grf(16, 1000, 1)
    exact = np.linalg.det(gaussian_random_field(16).fisher(GRF_Θ))
    model = normalise.wrap(models.from_spec("field", 2), normalise.from_arrays(fid, "auto"))
    imnn = im.NumericalGradientIMNN(
        n_s=1000, n_d=1000, n_params=2, n_summaries=2, input_shape=(16, 16), θ_fid=GRF_Θ,
        model=model, optimiser=optax.adam(3e-3), key_or_state=jax.random.PRNGKey(0),
        fiducial=fid, derivative=der, δθ=GRF_Δ,
        validation_fiducial=vfid, validation_derivative=vder,
    )  # fmt: skip
    imnn.fit(10.0, 0.1, patience=100, max_iterations=800, print_rate=None)
    assert imnn.history["val_detF"].max() / exact > 0.85


def _stats(x):
    return InputStats(x.shape[1:]).update(x)


def test_auto_transform_takes_log_only_for_positive_data_spanning_decades():
    keys = jax.random.split(jax.random.PRNGKey(0), 500)
    heavy = np.asarray(jax.vmap(lambda k: lognormal(k, jnp.asarray(LOGNORMAL_THETA_FID)))(keys))
    assert normalise.choose_transform(_stats(heavy)) == "log"
    rng = np.random.default_rng(0)
    assert normalise.choose_transform(_stats(rng.normal(0, 1, (500, 10)))) == "none"
    narrow = rng.normal(10, 1, (500, 10))  # positive, but a tenth of a decade
    assert normalise.choose_transform(_stats(narrow)) == "none"
    counts = np.where(rng.random((500, 10)) < 0.2, 0.0, heavy[:, :10])  # zeros: no log
    assert normalise.choose_transform(_stats(counts)) == "log1p"
    # auto from arrays resolves to the chosen transform, saved as such
    assert normalise.from_arrays(heavy, "auto").transform == "log"
    assert normalise.from_arrays(rng.normal(0, 1, (50, 3)), "auto").transform == "none"


def test_auto_model_is_an_mlp_for_vectors_and_the_field_network_for_fields():
    from imnn_stream.app.fitting import FitConfig

    assert FitConfig().model == "auto" and FitConfig().input_transform == "auto"
    assert models.resolve_spec("auto", (10,)) == "mlp:128,128"
    assert models.resolve_spec("auto", (16, 16)) == "field"
    assert models.resolve_spec("auto", (16, 16, 3)) == "field"
    assert models.resolve_spec("mlp:4", (16, 16)) == "mlp:4"
    with pytest.raises(ValueError, match="field or field:FILTERS"):
        models.from_spec("field:1,2", 2)


def test_fit_archive_calibrates_the_field_network_and_the_run_carries_it(tmp_path):
    """The command line's path: `auto` picks `field` for a 2-D archive, the fit
    calibrates it on the archive's first fiducial inputs, and the run folder's
    weights carry the constants, so a loaded run estimates identically; a lognormal
    vector archive gets `auto` → log, recorded in the summary."""
    import json
    import os

    from imnn_stream.app.fitting import FitConfig, fit_archive
    from imnn_stream.app.runs import FittedIMNN
    from writers.archive import write_arrays

    fid, der = _grf(8, 64, 0)
    vfid, vder = _grf(8, 64, 1)
    archive = str(tmp_path / "grf")
    write_arrays(
        archive, "numerical", GRF_Θ, GRF_Δ, fiducial=fid, derivative=der,
        validation_fiducial=vfid, validation_derivative=vder, n_devices=2, records_per_shard=16,
    )  # fmt: skip
    config = FitConfig(devices=1, n_per_device=32, max_iterations=3, min_iterations=0)
    out = str(tmp_path / "run")
    imnn, summary = fit_archive(archive, config, out, progress=False)
    with open(os.path.join(out, "config.json")) as fh:
        assert json.load(fh)["model"] == "field"
    assert summary["input_transform"] == "none"  # a zero-mean field: no log
    init, apply = models.field(n_summaries=2)
    expected = apply.calibrate(
        init(jax.random.PRNGKey(0), (8, 8))[1], imnn.normalisation(jnp.asarray(fid))
    )[0]
    np.testing.assert_allclose(np.asarray(imnn.w[0]), np.asarray(expected), rtol=1e-4, atol=1e-5)
    fitted = FittedIMNN(out)
    np.testing.assert_array_equal(fitted.get_estimate(vfid[:5]), imnn.get_estimate(vfid[:5]))

    θ = np.asarray(LOGNORMAL_THETA_FID, np.float32)
    x, d, _ = toy_data(3, 128, 128, lognormal, θ, GRF_Δ)
    archive = str(tmp_path / "lognormal")
    write_arrays(
        archive, "numerical", θ, (0.1, 0.1), fiducial=x[:64], derivative=d[:64],
        validation_fiducial=x[64:], validation_derivative=d[64:], n_devices=2,
        records_per_shard=16,
    )  # fmt: skip
    _, summary = fit_archive(archive, config, str(tmp_path / "run2"), progress=False)
    assert summary["input_transform"] == "log"


@pytest.mark.parametrize(
    "shape, channels, kernel, stride",
    [
        ((32, 32, 1), 8, 3, 2),
        ((16, 16, 8), 16, 3, 2),
        ((33, 17, 3), 4, 3, 2),
        ((15, 15, 2), 3, 5, 1),
        ((8, 9, 2), 2, 4, 2),
        ((7, 7, 1), 2, 2, 3),
    ],
)
def test_im2col_convolution_is_xlas_same_convolution(shape, channels, kernel, stride):
    # models._conv2d uses it for layers of few input channels (faster on XLA:CPU)
    h = jax.random.normal(jax.random.PRNGKey(0), (4,) + shape)
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, shape[-1], channels))

    def xla(x, v):
        return jax.lax.conv_general_dilated(
            x, v, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def ours(x, v):
        return models._im2col(x, v, stride)

    ref, got = xla(h, w), ours(h, w)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=2e-5)
    # its gradients: in the weights (the two-pass VJPs), and the chain rule's, a JVP in
    # the input followed by the gradient in the weights
    dh = jax.random.normal(jax.random.PRNGKey(2), h.shape)
    for grad in (
        lambda conv: jax.grad(lambda v: jnp.sum(jnp.sin(conv(h, v))))(w),
        lambda conv: jax.grad(
            lambda v: jnp.sum(jnp.sin(jax.jvp(lambda x: conv(x, v), (h,), (dh,))[1]))
        )(w),
    ):
        np.testing.assert_allclose(
            np.asarray(grad(ours)), np.asarray(grad(xla)), rtol=1e-4, atol=1e-4
        )
