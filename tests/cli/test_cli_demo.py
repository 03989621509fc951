"""The README's main job, `imnn-stream demo`, end to end (small)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # end to end: real processes, minutes


def test_demo_runs_end_to_end_and_reports_det_F(tmp_path):
    out = str(tmp_path / "demo")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imnn_stream",
            "demo",
            "--out",
            out,
            "--n-s",
            "200",
            "--max-iterations",
            "150",
            "--min-iterations",
            "150",
            "--n-per-device",
            "100",
            "--optimiser",
            "adam:3e-3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "VALID" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("DEMO_RESULT "))
    result = json.loads(line[len("DEMO_RESULT ") :])
    # the printed det F is the fitted network's on the validation split …
    with open(os.path.join(out, "run", "summary.json")) as f:
        summary = json.load(f)
    assert result["detF"] == summary["detF"]
    # how much of the fit waited for the archive's readers (input not hidden by compute)
    assert summary["fit_seconds"] > 0
    assert 0 <= summary["input_wait_seconds"] <= summary["fit_seconds"]
    assert summary["input_wait_fraction"] == pytest.approx(
        summary["input_wait_seconds"] / summary["fit_seconds"], abs=1e-3
    )
    assert f"det F = {result['detF']:.2f}" in r.stdout and "(exact: 50)" in r.stdout
    # … it learnt (from ≈ 0.2 at initialisation) and never exceeds the exact information by more
    # than the noise of 200 validation simulations
    assert 2.0 < result["detF"] <= 60.0
    assert np.all(np.isfinite(result["estimate"])) and len(result["estimate"]) == 2
    assert os.path.getsize(result["history_plot"]) > 10000
