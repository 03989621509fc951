"""Ready for Dataflow (and any remote Beam runner): the workers' environment is
this package, built the way ``--setup_file`` builds it, and the runner flags
reach Beam unchanged. Offline: nothing here contacts a runner or an index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    GoogleCloudOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

import imnn_stream
from beam_jobs.pipeline import is_dask, make_pipeline, pipeline_options

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("imnn_stream", "writers", "beam_jobs")


def _copy_project(dest: Path) -> Path:
    """The files a build reads, without build outputs or caches (other builds
    of the working tree, e.g. ``pip install -e``, are not touched)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for pkg in PACKAGES:
        shutil.copytree(
            ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return dest


def _modules(root: Path) -> set:
    return {str(p.relative_to(root)) for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}


@pytest.mark.e2e
def test_setup_file_sdist_installs_into_a_clean_venv(tmp_path):
    """``--setup_file ./setup.py``: Beam's stager builds the sdist (``python -m
    build --sdist --no-isolation``, else ``python setup.py sdist``), the worker
    pip-installs it. Both steps here, into a fresh venv that sees this venv's
    dependencies but not the editable install of the working tree."""
    from apache_beam.runners.portability.stager import Stager

    src = _copy_project(tmp_path / "src")
    out = tmp_path / "sdist"
    out.mkdir()
    sdist = Path(Stager._build_setup_package(str(src / "setup.py"), str(out)))
    # imnn_stream-0.2.0.tar.gz (imnn-stream-... from setuptools before 69.3)
    stem = sdist.name.removesuffix(".tar.gz")
    assert stem.replace("-", "_") == f"imnn_stream_{imnn_stream.__version__}", sdist.name
    with tarfile.open(sdist) as tar:
        packed = {n.removeprefix(stem + "/") for n in tar.getnames()}
    assert {"pyproject.toml", "setup.py", "README.md"} <= packed
    missing = _modules(src) - packed
    assert not missing, f"modules missing from the sdist: {sorted(missing)}"

    venv = tmp_path / "worker-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies (jax, Beam, ...) from this venv, appended after the new
    # venv's own site-packages: a directory on a .pth line has its own .pth
    # files (the editable install's path hook) ignored
    Path(site, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    subprocess.run(
        [*install, "--no-deps", "--no-index", "--no-build-isolation", "-q", str(sdist)],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    probe = (
        "import importlib.metadata as md, beam_jobs, writers, imnn_stream, "
        "beam_jobs.pipeline, imnn_stream.app.cli\n"
        "print(md.version('imnn-stream'), imnn_stream.__version__)\n"
        "for m in (beam_jobs, writers, imnn_stream): print(m.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    got = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert got.returncode == 0, got.stderr[-3000:]
    lines = got.stdout.split()
    assert lines[0] == lines[1] == imnn_stream.__version__
    for path in lines[2:]:
        assert path.startswith(site), f"imported from {path}, not the installed sdist"
    # the console script a worker image or a launcher would call
    script = subprocess.run(
        [str(venv / "bin" / "imnn-stream"), "generate", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert script.returncode == 0 and "--simulator" in script.stdout, script.stderr[-3000:]


DATAFLOW = [
    "--runner=DataflowRunner",
    "--project=my-project",
    "--region=europe-west1",
    "--temp_location=gs://my-bucket/tmp",
    "--staging_location=gs://my-bucket/staging",
    "--setup_file=./setup.py",
    "--requirements_file=requirements-worker.txt",
    "--extra_package=dist/imnn_stream-0.2.0-py3-none-any.whl",
    "--sdk_container_image=europe-docker.pkg.dev/my-project/beam/imnn-stream:0.2.0",
    "--machine_type=n2-standard-8",
    "--max_num_workers=20",
    "--experiments=use_runner_v2",
]


def test_dataflow_options_pass_through_unchanged():
    opts = pipeline_options(DATAFLOW, n_work=100)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner" and not is_dask(opts)
    gcp = opts.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location, gcp.staging_location) == (
        "my-project",
        "europe-west1",
        "gs://my-bucket/tmp",
        "gs://my-bucket/staging",
    )
    setup = opts.view_as(SetupOptions)
    assert setup.setup_file == "./setup.py"
    assert setup.requirements_file == "requirements-worker.txt"
    assert setup.extra_packages == ["dist/imnn_stream-0.2.0-py3-none-any.whl"]
    worker = opts.view_as(WorkerOptions)
    assert worker.sdk_container_image.endswith("imnn-stream:0.2.0")
    assert (worker.machine_type, worker.max_num_workers) == ("n2-standard-8", 20)
    assert opts.view_as(DebugOptions).experiments == ["use_runner_v2"]
    # every flag given, and only those, as Beam parsed them
    given = {a.split("=", 1)[0].lstrip("-") for a in DATAFLOW}
    parsed = opts.get_all_options(drop_default=True)
    renamed = {"extra_package": "extra_packages", "experiments": "experiments"}
    assert {renamed.get(g, g) for g in given} <= set(parsed)


def test_portable_runner_options_pass_through():
    """Flink and Spark through the portable runner's job server."""
    argv = [
        "--runner=PortableRunner",
        "--job_endpoint=localhost:8099",
        "--artifact_endpoint=localhost:8098",
        "--environment_type=PROCESS",
        '--environment_config={"command": "/opt/apache/beam/boot"}',
        "--parallelism=8",
    ]
    opts = pipeline_options(argv, n_work=10)
    assert opts.view_as(StandardOptions).runner == "PortableRunner"
    portable = opts.view_as(PortableOptions)
    assert (portable.job_endpoint, portable.artifact_endpoint) == (
        "localhost:8099",
        "localhost:8098",
    )
    assert portable.environment_type == "PROCESS"
    assert portable.environment_config == '{"command": "/opt/apache/beam/boot"}'
    assert opts.get_all_options(retain_unknown_options=True)["parallelism"] == 8


def test_dask_runner_name_and_partitions():
    """``--runner=DaskRunner`` (any case, or the class path) becomes Beam's
    DaskRunner; one Create partition per shard unless the flags choose."""
    pytest.importorskip("distributed")
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner

    for name in ("DaskRunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner"):
        argv = [f"--runner={name}", "--dask_client_address=127.0.0.1:8786"]
        opts = pipeline_options(argv, n_work=24)
        assert is_dask(opts) and opts.view_as(StandardOptions).runner == name
        dask = opts.view_as(DaskOptions)
        assert (dask.address, dask.npartitions, dask.partition_size) == ("127.0.0.1:8786", 24, None)
        assert isinstance(make_pipeline(opts).runner, DaskRunner)
    given = pipeline_options(["--runner=DaskRunner", "--dask_partition_size=3"], n_work=24)
    assert (given.view_as(DaskOptions).npartitions, given.view_as(DaskOptions).partition_size) == (
        None,
        3,
    )
    given = pipeline_options(["--runner=DaskRunner", "--dask_npartitions=5"], n_work=24)
    assert given.view_as(DaskOptions).npartitions == 5
