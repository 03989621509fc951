"""The corner plot's axes stop at the prior box where the Gaussian reaches past it,
but never hide θ̂, the fiducial path or the truth."""

import numpy as np

from imnn_stream.app.posterior_plot import axis_limits, plot_posterior


def test_axes_stop_at_the_prior_box():
    θ_hat, σ = np.array([0.2, 1.0]), np.array([0.5, 0.05])
    box = [np.array([0.0, 0.5]), np.array([1.0, 2.0])]
    lo, hi = axis_limits(θ_hat, σ, box=box)
    # parameter 0: the Gaussian (±4σ = ±2) is wider than the box: cut at its edges;
    # parameter 1: narrower (±0.2): the Gaussian's own range
    np.testing.assert_allclose(lo, [0.0, 0.8])
    np.testing.assert_allclose(hi, [1.0, 1.2])
    np.testing.assert_allclose(axis_limits(θ_hat, σ)[0], [-1.8, 0.8])  # no prior: ±4σ


def test_what_lies_outside_the_box_stays_visible():
    θ_hat, σ = np.array([1.5, 1.0]), np.array([0.5, 0.5])  # θ̂ left the box
    box = [np.array([0.0, 0.0]), np.array([1.0, 2.0])]
    path = np.array([[0.5, 1.0], [1.5, 1.0]])
    truth = np.array([-0.3, 1.0])
    lo, hi = axis_limits(θ_hat, σ, path=path, truth=truth, box=box)
    assert lo[0] <= -0.3 and hi[0] >= 1.5  # the truth and θ̂ are on the axis
    assert lo[1] == 0.0 and hi[1] == 2.0


def test_plot_with_a_prior_box(tmp_path):
    F = np.array([[4.0, 1.0], [1.0, 2.0]])
    rows = [dict(θ_fid=[0.5, 1.0], θ_hat=[0.3, 1.2])]
    abc = np.random.default_rng(0).uniform([0, 0.5], [1, 2], (100, 2))
    out = plot_posterior(
        [0.3, 1.2], F, rows, str(tmp_path / "p.png"), abc=abc, prior=([0, 0.5], [1, 2])
    )
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
