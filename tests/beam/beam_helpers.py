"""Helpers of the beam_jobs tests (a module of its own: ``conftest`` is a name
every test folder uses)."""

from pathlib import Path

SIMS = str(Path(__file__).with_name("beam_sims.py"))


def sim(name: str) -> str:
    """``path/beam_sims.py:name``: a test simulator the workers can import."""
    return f"{SIMS}:{name}"


def multi(workers: int = 2) -> list:
    """Beam flags: the default FnApiRunner in multi-process mode, ``workers`` processes."""
    return [f"--direct_num_workers={workers}"]
