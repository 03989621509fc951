"""The README's command-line examples run as written: every ```bash block of its
"Command line" section, in an empty folder holding ``legacy/`` (reference-imnn
TFRecords for ``adopt``), with ``imnn-stream`` being ``python -m imnn_stream``
(the README says they are the same command; an installed console script may be
stale in a development tree)."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # real processes, about a minute

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def command_line_blocks():
    text = open(README, encoding="utf-8").read()
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_readme_command_line_examples_run(tmp_path):
    pytest.importorskip("tensorflow")
    from ..toy_problem import toy_data
    from ..writers.test_writers_legacy import write_reference

    blocks = command_line_blocks()
    script = "\n".join(blocks)
    for command in ("generate", "validate", "fit", "estimate", "adopt", "infer"):
        assert f"imnn-stream {command} " in script, command
    (tmp_path / "legacy").mkdir()
    f, d, _ = toy_data(5, 40, 40)
    write_reference(str(tmp_path / "legacy"), f, der=d)
    prelude = f'set -euo pipefail\nimnn-stream() {{ "{sys.executable}" -m imnn_stream "$@"; }}\n'
    env = dict(os.environ, PYTHONPATH=os.path.abspath(os.path.join(os.path.dirname(README))))
    r = subprocess.run(
        ["bash", "-c", prelude + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "run" / "imnn.npz").exists()
    assert (tmp_path / "legacy" / "manifest.json").exists()
    assert "INFER_RESULT" in r.stdout and '"estimate"' in r.stdout
