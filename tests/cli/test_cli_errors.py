"""Issue 11 (command line and run folders): one-line errors and exit codes, no
abbreviations, --version, resume identity, run folders written as a whole and
locked, untrusted run folders refused. In-process (``main``), small fits."""

import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from imnn_stream.app import runs
from imnn_stream.app.cli import main
from writers.archive import write_arrays
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data


def _archive(path, seed):
    (f, d, _), (vf, vd, _) = toy_data(seed, 100, 100), toy_data(seed + 1, 100, 100)
    write_arrays(
        str(path),
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
    return str(path)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    return _archive(root / "a", 0), _archive(root / "b", 10)


def fit(archive, out, *more, model="mlp:4"):
    return [
        "fit",
        archive,
        "--model",
        model,
        "--devices",
        "2",
        "--n-per-device",
        "50",
        "--max-iterations",
        "3",
        "--min-iterations",
        "0",
        "--checkpoint-every",
        "1",
        "--out",
        str(out),
        *more,
    ]


def run_main(capsys, argv):
    """(exit status, stderr) of main(argv), usage errors (SystemExit) included."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    return code, err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) >= 1
    return lines[-1]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--devices", "0"], "--devices"),
        (["--n-per-device", "0"], "--n-per-device"),
        (["--model", "resnet"], "unknown model"),
        (["--model", "mlp:a,b"], "positive integers"),
        (["--optimiser", "nosuch:1e-3"], "optax has no optimiser"),
        (["--optimiser", "adam:fast"], "not a number"),
        (["--mode", "gradient"], "unrecognised arguments: --mode"),  # no abbreviation of --model
    ],
)
def test_usage_errors_exit_2_with_one_line(archives, tmp_path, capsys, args, needle):
    code, err = run_main(capsys, fit(archives[0], tmp_path / "run") + args)
    assert code == 2 and needle in one_line_error(err), err
    assert not (tmp_path / "run").exists()


def test_bad_data_exits_1_with_one_line_and_traceback_only_with_debug(archives, tmp_path, capsys):
    run = tmp_path / "run"
    cases = [
        fit(str(tmp_path / "no-archive"), run),
        ["estimate", str(tmp_path / "no-run"), str(tmp_path / "x.npy")],
    ]
    for argv in cases:
        code, err = run_main(capsys, argv)
        assert code == 1 and one_line_error(err).startswith(f"imnn-stream {argv[0]}: error:"), err
        assert "no-" in err
    assert run_main(capsys, fit(archives[0], run))[0] == 0
    np.save(tmp_path / "wrong.npy", np.zeros((3, 7), np.float32))
    for data, needle in [
        (tmp_path / "wrong.npy", "must have shape"),
        (tmp_path / "nope.npy", "nope"),
    ]:
        code, err = run_main(capsys, ["estimate", str(run), str(data)])
        assert code == 1 and needle in one_line_error(err), err
    with pytest.raises(ValueError, match="must have shape"):
        main(["estimate", str(run), str(tmp_path / "wrong.npy"), "--debug"])


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    from importlib.metadata import version

    import imnn_stream

    installed = version("imnn-stream")
    assert installed == imnn_stream.__version__  # one version, in pyproject and the package
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"imnn-stream {installed}"


def test_resume_refuses_another_archive_or_model(archives, tmp_path, capsys):
    a, b = archives
    run = tmp_path / "run"
    assert run_main(capsys, fit(a, run))[0] == 0
    history = json.loads((run / "summary.json").read_text())["iterations"]
    code, err = run_main(capsys, fit(b, run, "--resume"))
    assert code == 1 and "archive_manifest_sha256" in one_line_error(err), err
    code, err = run_main(capsys, fit(a, run, "--resume", model="mlp:8"))
    line = one_line_error(err)
    assert code == 1 and "model: 'mlp:4' → 'mlp:8'" in line and "archive" not in line.split("):")[1]
    assert json.loads((run / "config.json").read_text())["model"] == "mlp:4"
    # the same fit resumed twice: it had stopped (max iterations), so nothing more runs
    for _ in range(2):
        assert run_main(capsys, fit(a, run, "--resume"))[0] == 0
        assert json.loads((run / "summary.json").read_text())["iterations"] == history


def test_failed_save_leaves_previous_run_loadable_and_no_temporaries(
    archives, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    assert run_main(capsys, fit(archives[0], run))[0] == 0
    before = runs.FittedIMNN(run).get_estimate(np.zeros(10, np.float32))
    write = runs._write_file

    def disk_full(path, data):
        if path.endswith(runs.WEIGHTS):
            write(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        write(path, data)

    monkeypatch.setattr(runs, "_write_file", disk_full)
    code, err = run_main(capsys, fit(archives[0], run, model="mlp:8"))
    assert code == 1 and "No space left" in one_line_error(err), err
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no RUN.tmp-*, RUN.old-*, lock
    assert json.loads((run / "config.json").read_text())["model"] == "mlp:4"
    np.testing.assert_array_equal(
        runs.FittedIMNN(run).get_estimate(np.zeros(10, np.float32)), before
    )
    assert (run / "checkpoint" / "checkpoint.npz").exists()


def test_second_writer_is_refused_and_stale_lock_reported(archives, tmp_path, capsys):
    run = tmp_path / "run"
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=0)))
    code, err = run_main(capsys, fit(archives[0], run))
    assert code == 1 and f"in use by pid {os.getpid()}" in one_line_error(err), err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps(dict(pid=dead.pid, host=socket.gethostname(), started=0)))
    code, err = run_main(capsys, fit(archives[0], run))
    assert code == 1 and f"rm {lock}" in one_line_error(err), err
    assert lock.exists() and not run.exists()  # reported, not silently broken
    # --resume takes over a dead holder's lock on this host, with a one-line warning …
    code, err = run_main(capsys, fit(archives[0], run, "--resume"))
    assert code == 0 and f"warning: removing stale lock {lock}" in err, err
    assert not lock.exists() and run.exists()
    # … but never a live holder's, nor one of another host
    for holder in (dict(pid=os.getpid(), host=socket.gethostname()), dict(pid=1, host="elsewhere")):
        lock.write_text(json.dumps(dict(holder, started=0)))
        code, err = run_main(capsys, fit(archives[0], run, "--resume"))
        assert code == 1 and f"in use by pid {holder['pid']}" in one_line_error(err), err
        assert lock.exists()
    assert f"rm {lock}" in one_line_error(err)  # another host's: how to clear it


def test_untrusted_run_folder_runs_nothing(archives, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert run_main(capsys, fit(archives[0], run))[0] == 0
    marker = tmp_path / "imported"
    (tmp_path / "evil_run_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef factory(n):\n    raise SystemExit(3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    np.save(tmp_path / "d.npy", np.zeros((2, 10), np.float32))
    config = json.loads((run / "config.json").read_text())
    for spec in ("os:system", "evil_run_mod:factory"):
        (run / "config.json").write_text(json.dumps(dict(config, model=spec)))
        code, err = run_main(capsys, ["estimate", str(run), str(tmp_path / "d.npy")])
        assert code == 1 and spec in err and "--trust-code" in one_line_error(err), err
    assert not marker.exists()
    (run / "config.json").write_text(json.dumps(config))
    (run / "imnn.npz").unlink()
    (run / "imnn.pkl").write_bytes(b"\x80\x04K\x01.")  # a (harmless) pickle: 1
    code, err = run_main(capsys, ["estimate", str(run), str(tmp_path / "d.npy")])
    assert code == 1 and "0.1.0" in err and "--trust-pickle" in one_line_error(err), err
