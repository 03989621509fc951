"""``generate``: check a job, settle what the archive already holds, run the pipeline.

Order of events (each step refuses before touching anything when it can):

1. check the arguments (divisibility by n_devices, δθ, seeds) — no work yet;
2. import the simulator and trace it abstractly for its output shape;
3. compare with what ``out`` holds: a committed manifest of the same job that
   validates means "nothing to do"; a different job means refuse; otherwise
   ``job.json`` is written (before any shard) and the pipeline runs, keeping
   every valid shard and writing the others;
4. the pipeline writes the manifest last and removes ``job.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from writers import durable, fs
from writers.layout import GENERATE_LOCK
from writers.manifest import INDEX_NAME, MANIFEST_NAME, Manifest, read_manifest

from .job import JOB_NAME, Job, JobError, load_job, make_job, store_or_check_job
from .simulate import BatchSimulator, SimulatorSpec, load_simulator

__all__ = ["generate", "run_generation", "GenerationResult", "JobFailed"]


@dataclasses.dataclass
class GenerationResult:
    """What a run did. ``manifest`` is the committed archive's manifest."""

    manifest: Manifest
    n_shards: int
    written: int
    kept: int
    records_written: int
    seconds: float
    nothing_to_do: bool = False

    @property
    def records_per_second(self) -> float:
        return self.records_written / self.seconds if self.seconds > 0 else 0.0

    def summary(self, root: str) -> str:
        if self.nothing_to_do:
            return (
                f"{root}: archive already complete and valid ({self.n_shards} shards); "
                "nothing written"
            )
        return (
            f"{root}: {self.n_shards} shards ({self.written} written, {self.kept} kept), "
            f"{self.records_written} simulations in {self.seconds:.1f} s "
            f"({self.records_per_second:.0f} simulations/s); manifest written"
        )


def generate(
    out: str,
    simulator: str,
    theta_fid,
    delta_theta,
    n_s: int,
    n_d: int,
    n_devices: int,
    mode: str,
    records_per_shard: int = 1000,
    seeds: Optional[dict] = None,
    simulator_config: Optional[dict] = None,
    batch_size: int = 64,
    beam_args: Optional[Sequence[str]] = None,
    n_validation: Optional[int] = None,
    input_shape=None,
    progress: Optional[bool] = None,
) -> Manifest:
    """Write (or complete) a simulation archive at ``out`` and return its manifest.

    Parameters
    ----------
    out : local directory or URL (gs://, s3://) of the archive
    simulator : ``"module:function"``, ``"path/file.py:function"``, or the
        shortcuts ``"toy"`` / ``"grf"``; ``simulator(key, θ) -> float(input_shape)``
    theta_fid : float(n_params,); delta_theta : float(n_params,) (numerical mode)
    n_s, n_d : fiducial seeds and derivative seeds per split (n_d ignored in
        fiducial mode); both must divide by ``n_devices``
    mode : "numerical" | "gradient" | "fiducial"
    seeds : {split: base seed}; default ``{"train": 0, "validation": 1}``; seed i
        of split s uses ``fold_in(PRNGKey(seeds[s]), i)``
    simulator_config : JSON-able kwargs of a simulator factory, e.g. {"size": 32}
    batch_size : simulations per vmapped call on a worker
    beam_args : Beam pipeline flags, passed unchanged (``--runner``, ...)
    n_validation : None (validation as large as train) or 0 (no validation split)
    input_shape : expected shape of one simulation (checked), or None
    progress : show a progress bar (default: when stderr is a terminal)
    """
    return run_generation(
        out,
        simulator,
        theta_fid,
        delta_theta,
        n_s,
        n_d,
        n_devices,
        mode,
        records_per_shard,
        seeds,
        simulator_config,
        batch_size,
        beam_args,
        n_validation,
        input_shape,
        progress,
    ).manifest


def run_generation(
    out,
    simulator,
    theta_fid,
    delta_theta,
    n_s,
    n_d,
    n_devices,
    mode,
    records_per_shard=1000,
    seeds=None,
    simulator_config=None,
    batch_size=64,
    beam_args=None,
    n_validation=None,
    input_shape=None,
    progress=None,
    log: Callable[[str], None] = None,
) -> GenerationResult:
    """:func:`generate`, returning a :class:`GenerationResult`."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = str(out) if fs.is_url(str(out)) else os.path.abspath(out)  # workers' cwd may differ
    beam_args = list(beam_args or [])
    sim_spec = SimulatorSpec(simulator, simulator_config)
    # 1. arguments, before anything is imported or touched
    job = make_job(
        mode,
        sim_spec.resolved,
        simulator_config,
        theta_fid,
        delta_theta,
        n_s,
        n_d,
        n_devices,
        records_per_shard,
        seeds,
        (),
        batch_size,
        n_validation,
    )
    # 2. the simulator: importable, one floating array of a fixed shape
    batcher = BatchSimulator(
        load_simulator(sim_spec),
        sim_spec.describe(),
        job.mode,
        job.theta_fid,
        job.delta_theta,
        job.batch_size,
        input_shape,
    )
    job = dataclasses.replace(job, input_shape=batcher.input_shape)
    plan = job.plan()
    # 3. what is there already, under the archive's lock for the rest of the run
    fs.configure(beam_args)
    # local archives only: an object store has no exclusive create (durable.Lock)
    lock = durable.Lock(
        fs.join(out, GENERATE_LOCK), what=f"archive {out}", clear_stale=True, warn=log
    )
    try:
        lock.acquire()
    except durable.LockedError as err:
        raise JobError(str(err)) from None
    try:
        return _generate_locked(out, job, plan, batcher, beam_args, progress, log)
    finally:
        lock.release()


def _generate_locked(out, job, plan, batcher, beam_args, progress, log) -> GenerationResult:
    if fs.exists(fs.join(out, MANIFEST_NAME)):
        result = _settle_committed(out, job, plan, log)
        if result is not None:
            return result
    else:
        store_or_check_job(out, job)
    _remove_temporaries(out, log)
    # 4. the pipeline
    from .pipeline import run_pipeline  # Beam only from here on

    before = _local_files(out, plan)
    start = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    watcher = _Progress(out, plan, start) if show else None
    try:
        counters = run_pipeline(out, job, beam_args)
    except Exception as err:
        raise JobFailed(worker_error(err), out) from err
    finally:
        if watcher:
            watcher.stop()
    seconds = time.perf_counter() - start
    manifest = read_manifest(out)
    if counters:  # a counter never incremented is not reported: it is 0
        written, kept = counters.get("shards_written", 0), counters.get("shards_kept", 0)
        records = counters.get("records_simulated", 0)
    else:  # a runner without metrics (Dask): what the files say, or the plan
        after = _local_files(out, plan)
        rewritten = [
            s for s in plan if before.get(s.path) is None or before[s.path] != after.get(s.path)
        ]
        written, kept = len(rewritten), len(plan) - len(rewritten)
        records = sum(s.n_records for s in rewritten)
    return GenerationResult(manifest, len(plan), int(written), int(kept), int(records), seconds)


def _local_files(out, plan) -> dict:
    """{shard path: (inode, mtime, size)} of the plan's files under their final
    names in a local archive ({} for a URL). A shard kept by the pipeline is the
    same file afterwards; a written one is a new file (published by rename)."""
    if fs.is_url(out):
        return {}
    found = {}
    for spec in plan:
        try:
            st = os.stat(fs.join(out, spec.path))
        except OSError:
            continue
        found[spec.path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


class JobFailed(RuntimeError):
    """The pipeline failed on a worker. Shards written before the failure are
    complete and stay; re-running the same job resumes. ``str()`` is the
    worker's error in one line (e.g. the SimulationError naming the seed and θ)."""

    def __init__(self, message: str, root: str):
        super().__init__(message)
        self.root = root


def worker_error(err: BaseException) -> str:
    """The useful line of an error raised on a Beam worker.

    Runners wrap worker exceptions in their own, with the remote traceback in
    the text; dig out our SimulationError / ArchiveError message when present.
    """
    text = str(err)
    for name in ("SimulationError", "ArchiveError", "WriteError", "JobError"):
        found = re.findall(rf"{name}: (.+)", text)
        if found:
            return f"{name}: {found[-1].strip()}"
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return f"{type(err).__name__}: {lines[-1].strip() if lines else ''}"


def _settle_committed(out, job, plan, log) -> Optional[GenerationResult]:
    """Archive with a manifest: same job and valid -> nothing to do; same job but
    invalid -> un-commit it for repair (returns None); other job -> refuse."""
    import writers

    try:
        committed = Job.from_manifest(
            Manifest.from_json(json.loads(fs.read_bytes(fs.join(out, MANIFEST_NAME))))
        )
    except Exception as err:
        raise JobError(
            f"{out} has a manifest this tool cannot read ({err}); refusing to touch it"
        ) from err
    diff = job.differences(committed)
    if diff:
        raise JobError(
            f"{out} holds an archive generated with different parameters; "
            "refusing to mix data (use another --out, or delete it first):\n  " + "\n  ".join(diff)
        )
    stored = load_job(out)
    if stored is not None:
        if job.differences(stored):
            raise JobError(f"{out}: {JOB_NAME} disagrees with the manifest; refusing")
        fs.delete(fs.join(out, JOB_NAME))  # left by a run stopped right after committing
    report = writers.validate(out)
    if report.ok:
        return GenerationResult(
            read_manifest(out), len(plan), 0, len(plan), 0, 0.0, nothing_to_do=True
        )
    log(
        f"{out}: committed archive does not validate ({len(report.errors)} errors, e.g. "
        f"{report.errors[0]}); repairing"
    )
    # job.json first, then drop the commit marker: the archive is "unfinished"
    # again until the pipeline writes a new manifest.
    _write_job(out, job)
    for name in (MANIFEST_NAME, INDEX_NAME):
        if fs.exists(fs.join(out, name)):
            fs.delete(fs.join(out, name))
    return None


def _write_job(out, job):
    durable.write_atomic(fs.join(out, JOB_NAME), json.dumps(job.to_json(), indent=1).encode())


def _remove_temporaries(out, log):
    """Delete temporary files of interrupted shard writes (never under a final name).

    Safe because one archive is written by one job at a time."""
    for rel in fs.list_files(out):
        if fs.TEMP_MARKER in rel.rsplit("/", 1)[-1]:
            fs.delete(fs.join(out, rel))
            log(f"removed unfinished temporary file {rel}")


class _Progress:
    """A tqdm bar driven by shard files appearing under their final names
    (works for any runner and any file system, without touching the workers)."""

    def __init__(self, root: str, plan, start: float, interval: float = 1.0):
        from writers.progress import bar, interactive

        self.root, self.start, self.interval = root, start, interval
        self.live = interactive()  # in a log: redraw only as writers.progress allows
        self.sizes = {s.path: s.n_records for s in plan}
        self.seen = set(self._present())
        self.bar = bar(
            total=len(plan),
            initial=len(self.seen),
            unit="shard",
            desc="shards",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _present(self):
        try:
            return [p for p in fs.list_files(self.root) if p in self.sizes]
        except Exception:
            return []

    def _poll(self):
        new = set(self._present()) - self.seen
        if new:
            self.seen |= new
            self.records += sum(self.sizes[p] for p in new)
            self.bar.update(len(new))
        rate = self.records / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:.0f} sims/s", refresh=self.live)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._poll()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._poll()
        self.bar.close()
