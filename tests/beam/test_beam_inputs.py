"""Bad input and command-line plumbing: refused early where possible, otherwise a
failed job naming the simulator, the seed and θ, with written shards intact."""

from __future__ import annotations

import argparse
import os

import pytest
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from beam_jobs import JobError, JobFailed, SimulationError, generate
from beam_jobs import cli
from beam_jobs.job import JOB_NAME
from beam_jobs.pipeline import check_existing, pipeline_options
from writers.layout import plan_shards

from .beam_helpers import multi, sim


def test_indivisible_counts_refused_before_any_work(tmp_path):
    out = tmp_path / "a"
    with pytest.raises(JobError, match=r"n_s=10 .*not divisible by n_devices=4"):
        generate(str(out), "toy", [0, 1], [0.1, 0.1], 10, 8, 4, "numerical")
    with pytest.raises(JobError, match=r"n_d=6 not divisible by n_devices=4"):
        generate(str(out), "toy", [0, 1], [0.1, 0.1], 8, 6, 4, "gradient")
    with pytest.raises(JobError, match="delta_theta"):
        generate(str(out), "toy", [0, 1], None, 8, 8, 2, "numerical")
    assert not out.exists()
    # the command line says so with exit status 2
    rc = cli.main(
        [
            "generate",
            "--theta-fid",
            "0,1",
            "--delta-theta",
            "0.1,0.1",
            "--n-s",
            "10",
            "--n-devices",
            "4",
            "--mode",
            "numerical",
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and not out.exists()


@pytest.mark.parametrize(
    "simulator, config, shape, message",
    [
        ("no_such_module_xyz:simulate", None, None, "cannot be imported: ModuleNotFoundError"),
        ("beam_jobs.simulators:no_such_function", None, None, "cannot be imported"),
        ("grf", {"size": 8}, [10], r"returned shape \(8, 8\) .* expected input_shape \(10,\)"),
        ("grf", {"sise": 8}, None, "factory failed"),
        (sim("two_outputs"), None, None, "must return one array"),
        (sim("integer_toy"), None, None, "dtype int32"),
    ],
)
def test_bad_simulators_refused_before_any_work(tmp_path, simulator, config, shape, message):
    out = tmp_path / "a"
    with pytest.raises(SimulationError, match=message) as err:
        generate(
            str(out),
            simulator,
            [1.0, 2.0],
            [0.1, 0.1],
            4,
            4,
            2,
            "numerical",
            simulator_config=config,
            input_shape=shape,
        )
    assert (
        simulator.split(":")[0] in str(err.value)
        or "grf" in str(err.value)
        or "gaussian_random_field" in str(err.value)
    )
    assert not out.exists()


def test_nan_fails_naming_simulator_seed_and_theta(tmp_path, capsys):
    """Σ_fid − δΣ/2 < 0: the toy's sqrt gives NaN for the 'below' variance records.
    The fiducial shards are fine and stay; no manifest is written."""
    out = tmp_path / "nan"
    rc = cli.main(
        [
            "generate",
            "--simulator",
            "toy",
            "--theta-fid",
            "0,0.02",
            "--delta-theta",
            "0.1,0.1",
            "--n-s",
            "4",
            "--n-d",
            "2",
            "--n-devices",
            "2",
            "--mode",
            "numerical",
            "--records-per-shard",
            "2",
            "--no-validation",
            "--no-progress",
            "--out",
            str(out),
            *multi(2),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    line = [l for l in err.splitlines() if "non-finite" in l][0]
    assert "beam_jobs.simulators:gaussian_toy" in line
    assert "seed " in line and "θ = [0.0, -0.03]" in line, line
    assert not (out / "manifest.json").exists() and (out / JOB_NAME).exists()
    # whatever was written before the failure is complete and valid
    from beam_jobs.job import load_job

    job = load_job(str(out))
    present = [s for s in job.plan() if (out / s.path).exists()]
    assert all(s.kind == "fiducial" for s in present)
    assert all(check_existing(str(out), job, s) is not None for s in present)


def test_worker_exception_names_simulator_seed_and_theta(tmp_path):
    """A simulator that traces fine but raises while running on a worker."""
    out = tmp_path / "raise"
    with pytest.raises(
        JobFailed,
        match=r"^SimulationError: simulator .*failing_toy raised "
        r"for seed 0 .*θ = \[0.0, 1.0\].*detector offline",
    ):
        generate(
            str(out),
            sim("failing_toy"),
            [0.0, 1.0],
            None,
            2,
            0,
            1,
            "fiducial",
            seeds={"train": 0},
            beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
        )
    assert not (out / "manifest.json").exists()


def test_default_runner_is_multiprocess_fnapi():
    opts = pipeline_options([])
    assert opts.view_as(StandardOptions).runner is None  # -> FnApiRunner instance
    direct = opts.view_as(DirectOptions)
    assert direct.direct_running_mode == "multi_processing"
    assert direct.direct_num_workers == os.cpu_count()
    # explicit choices win
    opts = pipeline_options(["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    assert opts.view_as(DirectOptions).direct_num_workers == 1
    assert opts.view_as(DirectOptions).direct_running_mode == "in_memory"


def test_beam_options_pass_through_unchanged():
    argv = [
        "--runner=DataflowRunner",
        "--project",
        "my-project",
        "--region=europe-west1",
        "--temp_location=gs://bucket/tmp",
        "--my_custom_flag=7",
        "--flink_master=host:8081",
    ]
    parser = argparse.ArgumentParser(prog="imnn-stream")
    cli.register(parser.add_subparsers(dest="command"))
    args, extra = parser.parse_known_args(
        [
            "generate",
            "--theta-fid",
            "0,1",
            "--n-s",
            "8",
            "--mode",
            "fiducial",
            "--out",
            "gs://bucket/archive",
            *argv,
        ]
    )
    assert extra == argv and args.func is cli.run
    assert args.theta_fid == [0.0, 1.0] and args.out == "gs://bucket/archive"
    opts = pipeline_options(extra)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = opts.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == (
        "my-project",
        "europe-west1",
        "gs://bucket/tmp",
    )
    every = opts.get_all_options(retain_unknown_options=True)
    assert every["my_custom_flag"] == "7" and every["flink_master"] == "host:8081"
    # with a runner named, the local defaults are not imposed
    assert opts.view_as(DirectOptions).direct_running_mode != "multi_processing"
    assert isinstance(opts, PipelineOptions)


def test_cli_parses_shortcuts_and_config():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args, extra = parser.parse_known_args(
        [
            "generate",
            "--simulator",
            "grf",
            "--simulator-config",
            '{"size": 32}',
            "--theta-fid",
            "1,2",
            "--delta-theta",
            "0.1,0.1",
            "--n-s",
            "4",
            "--n-d",
            "2",
            "--n-devices",
            "2",
            "--mode",
            "numerical",
            "--out",
            "x",
            "--no_auth",
        ]
    )
    assert args.simulator_config == {"size": 32} and args.n_d == 2 and extra == ["--no_auth"]
    with pytest.raises(SystemExit):
        parser.parse_args(
            [
                "generate",
                "--simulator-config",
                "[1]",
                "--theta-fid",
                "1",
                "--n-s",
                "1",
                "--mode",
                "fiducial",
                "--out",
                "x",
            ]
        )


def test_plan_is_the_writers_plan():
    from beam_jobs.job import make_job

    job = make_job(
        "numerical",
        "toy",
        None,
        [0, 1],
        [0.1, 0.1],
        8,
        4,
        2,
        4,
        {"train": 0, "validation": 1},
        (10,),
        16,
    )
    assert job.plan() == plan_shards("numerical", 8, 4, 2, 2, 4)
