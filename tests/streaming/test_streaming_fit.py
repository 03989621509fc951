"""Streaming fits follow the in-memory fits on the same data: the toy problem and
the 2-D Gaussian random field; the full toy fit reaches the exact information."""

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from beam_jobs.simulators import gaussian_random_field
from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data


def fit_both(in_memory, streaming, iterations):
    for imnn in (in_memory, streaming):
        imnn.fit(
            10.0, 0.1, min_iterations=iterations, patience=iterations, max_iterations=iterations
        )
    return in_memory.history, streaming.history


def archive_trainer(cls, path, model, devices, n_per_device):
    return cls.from_archive(
        path,
        model=model,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
        host=devices[0],
        devices=devices,
        n_per_device=n_per_device,
    )


@pytest.mark.parametrize("mode", ["numerical", "gradient"])
def test_toy_streaming_fit_follows_in_memory_fit(mode, tmp_path, cpu_devices):
    n = 200
    (f, d, g), (vf, vd, vg) = toy_data(0, n, n), toy_data(1, n, n)
    model = im.models.mlp((32, 32), 2)
    kw = dict(
        n_s=n,
        n_d=n,
        n_params=2,
        n_summaries=2,
        input_shape=(10,),
        θ_fid=THETA_FID,
        model=model,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
    )
    path = str(tmp_path / mode)
    if mode == "numerical":
        write_arrays(
            path,
            mode,
            THETA_FID,
            DELTA_THETA,
            fiducial=f,
            derivative=d,
            validation_fiducial=vf,
            validation_derivative=vd,
            n_devices=2,
            records_per_shard=64,
        )
        ref = im.NumericalGradientIMNN(
            **kw,
            fiducial=f,
            derivative=d,
            δθ=DELTA_THETA,
            validation_fiducial=vf,
            validation_derivative=vd,
        )
        cls = im.DatasetNumericalGradientIMNN
    else:
        write_arrays(
            path,
            mode,
            THETA_FID,
            fiducial=f,
            gradient=g,
            validation_fiducial=vf,
            validation_gradient=vg,
            n_devices=2,
            records_per_shard=64,
        )
        ref = im.GradientIMNN(
            **kw, fiducial=f, derivative=g, validation_fiducial=vf, validation_derivative=vg
        )
        cls = im.DatasetGradientIMNN
    s = archive_trainer(cls, path, model, cpu_devices[:2], 50)
    try:
        a, b = fit_both(ref, s, 20)
    finally:
        s.close()
    for key in ("detF", "val_detF", "Λ2"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-3)
    np.testing.assert_allclose(
        s.get_estimate(vf[:20]), ref.get_estimate(vf[:20]), rtol=1e-3, atol=1e-4
    )


def test_field_streaming_trainers_agree_with_in_memory_ones(tmp_path, cpu_devices):
    """2-D Gaussian random field (16×16, θ = (A, B) = (1, 2)), small CNN: the streaming
    trainers' gradients and summaries equal the in-memory ones; numerical and
    gradient modes agree with each other within the finite-difference error."""
    θ = np.array([1.0, 2.0], np.float32)
    δθ = np.array([0.05, 0.05], np.float32)
    n = 64
    sim = gaussian_random_field(16)
    (f, d, g), (vf, vd, vg) = (toy_data(s, n, n, simulator=sim, θ=θ, δθ=δθ) for s in (3, 4))
    model = im.models.cnn((4, 8), 16, 2)
    kw = dict(
        n_s=n,
        n_d=n,
        n_params=2,
        n_summaries=2,
        input_shape=(16, 16),
        θ_fid=θ,
        model=model,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
    )
    write_arrays(
        str(tmp_path / "num"),
        "numerical",
        θ,
        δθ,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
        n_devices=2,
        records_per_shard=32,
    )
    write_arrays(
        str(tmp_path / "grad"),
        "gradient",
        θ,
        fiducial=f,
        gradient=g,
        validation_fiducial=vf,
        validation_gradient=vg,
        n_devices=2,
        records_per_shard=32,
    )
    pairs = [
        (
            im.NumericalGradientIMNN(
                **kw,
                fiducial=f,
                derivative=d,
                δθ=δθ,
                validation_fiducial=vf,
                validation_derivative=vd,
            ),
            archive_trainer(
                im.DatasetNumericalGradientIMNN, str(tmp_path / "num"), model, cpu_devices[:2], 16
            ),
        ),
        (
            im.GradientIMNN(
                **kw, fiducial=f, derivative=g, validation_fiducial=vf, validation_derivative=vg
            ),
            archive_trainer(
                im.DatasetGradientIMNN, str(tmp_path / "grad"), model, cpu_devices[:2], 16
            ),
        ),
    ]
    dx = []
    for ref, s in pairs:
        try:
            ga, sa = ref.loss_gradient(10.0, 0.1)
            gb, sb = s.loss_gradient(10.0, 0.1)
            xb, dxb = s.get_summaries(validate=True)
        finally:
            s.close()
        num = sum(
            float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
            for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb))
        )
        den = sum(float(np.sum(np.asarray(a) ** 2)) for a in jax.tree_util.tree_leaves(ga))
        assert (num / den) ** 0.5 < 1e-5
        assert float(sb["detF"]) == pytest.approx(float(sa["detF"]), rel=1e-4)
        xa, dxa = ref.get_summaries(validate=True)
        np.testing.assert_allclose(xb, xa, rtol=1e-5, atol=1e-6)
        dx.append(dxa)
    # finite differences at ∓δθ/2 and the exact chain rule give the same derivatives
    np.testing.assert_allclose(
        dx[0].mean(0), dx[1].mean(0), rtol=0.05, atol=0.05 * np.abs(dx[1].mean(0)).max()
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["numerical", "gradient"])
def test_toy_streaming_reaches_exact_information(mode, tmp_path, cpu_devices, toy_1000):
    (f, d, g), (vf, vd, vg) = toy_1000
    path = str(tmp_path / mode)
    if mode == "numerical":
        write_arrays(
            path,
            mode,
            THETA_FID,
            DELTA_THETA,
            fiducial=f,
            derivative=d,
            validation_fiducial=vf,
            validation_derivative=vd,
            n_devices=2,
            records_per_shard=250,
        )
        cls = im.DatasetNumericalGradientIMNN
    else:
        write_arrays(
            path,
            mode,
            THETA_FID,
            fiducial=f,
            gradient=g,
            validation_fiducial=vf,
            validation_gradient=vg,
            n_devices=2,
            records_per_shard=250,
        )
        cls = im.DatasetGradientIMNN
    s = archive_trainer(cls, path, im.models.mlp((128, 128), 2), cpu_devices[:2], 250)
    try:
        s.fit(10.0, 0.1, patience=100, max_iterations=3000)
    finally:
        s.close()
    assert 40.0 <= s.history["val_detF"].max() <= 52.0
