"""The information fraction (det F / expected) in history, progress bar and run
summary; the Hartlap factor and the end-of-fit warnings."""

import json
import os

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from imnn_stream import information
from imnn_stream.app.runs import save_run
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

EXACT = 50.0


@pytest.fixture(scope="module")
def fitted():
    f, d, _ = toy_data(0, 400, 400)
    vf, vd, _ = toy_data(1, 400, 400)
    imnn = im.NumericalGradientIMNN(
        n_s=400,
        n_d=400,
        n_params=2,
        n_summaries=2,
        input_shape=(10,),
        θ_fid=THETA_FID,
        model=im.models.mlp((32, 32), 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
        fiducial=f,
        derivative=d,
        δθ=DELTA_THETA,
        validation_fiducial=vf,
        validation_derivative=vd,
    )
    imnn.fit(10.0, 0.1, max_iterations=60, expected_detF=EXACT, print_rate=20)
    return imnn


def test_fraction_in_history(fitted):
    h = fitted.history
    n = len(h["detF"])
    assert len(h["detF_fraction"]) == len(h["val_detF_fraction"]) == n == 60
    np.testing.assert_allclose(h["val_detF_fraction"], h["val_detF"] / EXACT, rtol=1e-6)
    # a second fit continues the history and keeps the expected value
    fitted.fit(10.0, 0.1, max_iterations=5)
    assert len(fitted.history["val_detF_fraction"]) == len(fitted.history["detF"]) == 65


def test_fraction_and_hartlap_in_run_summary(fitted, tmp_path):
    out = str(tmp_path / "run")
    summary = save_run(out, fitted, "mlp:32,32")
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == summary
    detF = float(np.linalg.det(fitted.F))
    h = (400 - 2 - 2) / (400 - 1)
    assert summary["hartlap_factor"] == pytest.approx(h)
    assert summary["detF_hartlap"] == pytest.approx(detF * h**2, rel=1e-6)
    assert summary["expected_detF"] == EXACT
    assert summary["detF_fraction"] == pytest.approx(detF / EXACT, rel=1e-6)
    assert summary["best_detF_fraction"] == pytest.approx(
        fitted.history["max_detF"][-1] / EXACT, rel=1e-6
    )
    assert isinstance(summary["warnings"], list)


def test_diagnose_names_causes():
    assert information.diagnose(0.95, 0.1) == []
    low, wide = information.diagnose(0.4, 3.0)
    assert "40%" in low and "normalisation" in low
    assert "Λ2" in wide and "identity" in wide
    assert information.hartlap_factor(1000, 2) == pytest.approx(996 / 999)
