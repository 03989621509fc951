"""Issue 15 item 4: a conventional command line. Every option and positional of
every subcommand has help text (defaults shown), the help is plain text, and every
subcommand's --json output is exactly one JSON object on stdout (logs and progress
on stderr); --quiet leaves only the result."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imnn_stream.app.cli import build_parser, main
from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

COMMANDS = ("fit", "estimate", "demo", "infer", "generate", "validate", "adopt")


def subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, sub.choices


def test_every_option_and_positional_has_help_and_every_command_quiet_and_json():
    parser, commands = subparsers()
    assert set(commands) == set(COMMANDS)
    for name, p in [("imnn-stream", parser), *commands.items()]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            what = f"{name} {action.option_strings or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, f"{what}: no help"
        if p is not parser:
            flags = {f for a in p._actions for f in a.option_strings}
            assert {"--quiet", "--json"} <= flags, name


def test_help_is_plain_text_with_defaults(capsys):
    _, commands = subparsers()
    for name in ("", *COMMANDS):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"] if name else ["--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for markup in ("``", ":class:", ":func:", ":mod:", ":meth:"):
            assert markup not in text, (name, markup)
    fit_help = commands["fit"].format_help()
    assert "(default 2000)" in " ".join(fit_help.split())  # --max-iterations
    assert "(default: 1000)" in " ".join(commands["generate"].format_help().split())


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_json")
    (f, d, _), (vf, vd, _) = toy_data(0, 100, 100), toy_data(1, 100, 100)
    path = str(root / "archive")
    write_arrays(
        path,
        "numerical",
        THETA_FID,
        DELTA_THETA,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
        n_devices=2,
        records_per_shard=50,
    )
    np.save(root / "target.npy", toy_data(9, 8, 1)[0])
    return path, str(root / "target.npy")


def run_json(capsys, argv):
    """(exit status, the one JSON object on stdout, stderr)."""
    capsys.readouterr()
    code = main(argv + ["--json"])
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1, out
    return code, json.loads(out), err


def test_json_of_validate_fit_estimate_adopt_in_process(archives, tmp_path, capsys):
    archive, target = archives
    code, report, _ = run_json(capsys, ["validate", archive])
    assert code == 0 and report["ok"] and report["summary"]["records"] > 0
    run = str(tmp_path / "run")
    fit = ["fit", archive, "--model", "mlp:4", "--n-per-device", "50", "--max-iterations", "3"]
    code, result, err = run_json(capsys, fit + ["--min-iterations", "0", "--out", run])
    assert code == 0 and result["ok"] and result["iterations"] == 3 and result["out"] == run
    assert not os.path.exists(os.path.join(run, "checkpoint"))  # none unless asked
    code, result, _ = run_json(capsys, ["estimate", run, target])
    assert code == 0 and np.asarray(result["estimate"]).shape == (8, 2)
    code, result, _ = run_json(
        capsys,
        ["adopt", str(tmp_path), "--mode", "fiducial", "--theta-fid", "0,1", "--input-shape", "10"],
    )
    assert code == 1 and result["ok"] is False and result["errors"]
    # a failure is a JSON object too (and one line on stderr)
    code, result, err = run_json(capsys, ["estimate", str(tmp_path / "nope"), target])
    assert code == 1 and result["ok"] is False and "nope" in result["error"]
    assert err.strip().splitlines()[-1].startswith("imnn-stream estimate: error:")
    # --quiet: the result line only, nothing on stderr
    capsys.readouterr()
    assert main(fit + ["--min-iterations", "0", "--out", run, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("fitted 3 iterations") and err == ""


def test_streaming_trainer_is_a_context_manager(archives):
    import jax
    import optax

    import imnn_stream as im

    with im.DatasetNumericalGradientIMNN.from_archive(
        archives[0],
        model=im.models.mlp((4,), 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
        host=jax.devices("cpu")[0],
        devices=jax.devices("cpu")[:2],
        n_per_device=50,
    ) as imnn:
        imnn.fit(lam=10.0, eps=0.1, max_iterations=2)
        closed = []
        imnn.close = lambda: closed.append(True)
    assert closed == [True]


@pytest.mark.e2e
def test_json_of_generate_infer_demo_as_processes(tmp_path):
    """Beam's and the workers' output must not reach stdout: one JSON object there."""
    cli = [sys.executable, "-m", "imnn_stream"]
    beam = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    fit = ["--model", "mlp:8", "--n-per-device", "50", "--max-iterations", "5"]
    fit += ["--min-iterations", "0"]
    runs = {
        "generate": [
            "generate",
            "--theta-fid",
            "0,1",
            "--n-s",
            "40",
            "--n-devices",
            "1",
            "--mode",
            "fiducial",
            "--no-validation",
            "--out",
            str(tmp_path / "target"),
            *beam,
        ],
        "infer": [
            "infer",
            "--target",
            str(tmp_path / "target"),
            "--theta-start",
            "0,1",
            "--delta-theta",
            "0.1,0.1",
            "--prior-low=-2,0.2",
            "--prior-high=2,4",
            "--n-s",
            "100",
            "--max-rounds",
            "1",
            "--abc",
            "500",
            "--abc-accept",
            "0.1",
            "--out",
            str(tmp_path / "inference"),
            *fit,
            *beam,
        ],
        "demo": ["demo", "--n-s", "100", "--out", str(tmp_path / "demo"), *fit],
    }
    for name, argv in runs.items():
        r = subprocess.run(cli + argv + ["--json"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (name, r.stderr[-3000:])
        assert len(r.stdout.strip().splitlines()) == 1, (name, r.stdout[-3000:])
        result = json.loads(r.stdout)
        assert result["ok"] is True, (name, result)
    assert result["detF"] > 0 and len(result["estimate"]) == 2  # demo
    posterior = tmp_path / "inference" / "posterior.png"
    assert posterior.stat().st_size > 10000
