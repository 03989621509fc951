"""Warm starts keep what was learnt (issue 12 item 2): a fit warm-started from a
trained network on the same archive, with the same budget, never ends below the
cold start's best validation det F, and the learning-rate ramp keeps the first
iterations from throwing the network off."""

import jax
import numpy as np
import pytest

from beam_jobs.simulators import LOGNORMAL_THETA_FID, gaussian_toy, lognormal
from imnn_stream.app.fitting import FitConfig, fit_archive
from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

CASES = {
    "toy": (gaussian_toy, THETA_FID),
    "lognormal": (lognormal, np.asarray(LOGNORMAL_THETA_FID, np.float32)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_warm_start_keeps_the_cold_start_information(name, tmp_path):
    simulator, θ = CASES[name]
    (f, d, _), (vf, vd, _) = (toy_data(s, 200, 200, simulator, θ, DELTA_THETA) for s in (0, 1))
    archive = str(tmp_path / "archive")
    write_arrays(
        archive,
        "numerical",
        θ,
        DELTA_THETA,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
    )
    config = FitConfig(
        model="mlp:32,32",
        devices=1,
        n_per_device=100,
        max_iterations=60,
        patience=20,
        min_iterations=0,
        warm_start_ramp=20,
        expected_detF=float(np.linalg.det(simulator.fisher(θ))),
    )
    cold, _ = fit_archive(archive, config, str(tmp_path / "cold"), progress=False)
    best = float(cold.history["max_detF"][-1])
    warm, summary = fit_archive(
        archive,
        config,
        str(tmp_path / "warm"),
        weights=cold.best_w,
        rng=jax.random.PRNGKey(7),
        progress=False,
    )
    h = warm.history
    # the warm start is judged from its own level: its first value is the cold best
    assert h["val_detF"][0] == pytest.approx(best, rel=1e-4)
    assert h["max_detF"][-1] >= best * (1 - 1e-5)
    assert (
        summary["best_detF_fraction"] >= cold.history["max_detF"][-1] / config.expected_detF - 1e-5
    )
    # the ramp: no collapse in the first iterations (a fresh Adam state moves every
    # weight by about the learning rate at once)
    assert h["val_detF"][:20].min() >= 0.8 * best
    # ramp + patience iterations at least, unless the budget ends first
    assert len(h["detF"]) >= min(config.max_iterations, 40)
