"""The examples/ scripts run at their --small size and produce their plots."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # real Beam pipelines and fits, about a minute each

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


@pytest.mark.parametrize("script", ["toy_end_to_end.py", "grf_field_inference.py"])
def test_example_runs_small_and_writes_its_plots(script, tmp_path):
    r = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), "--small", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.path.abspath(os.path.join(EXAMPLES, ".."))),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(result["theta_hat"]) == 2
    for plot in result["plots"]:
        assert os.path.getsize(plot) > 10000, plot
