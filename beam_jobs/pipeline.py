"""The Apache Beam pipeline that writes an archive, one shard file per work item.

Graph::

    Create(plan: one dict per shard file)          # writers.layout.plan_shards
      | Reshuffle                                  # spread the files over workers
      | ParDo(WriteShard)                          # keep a valid file, or simulate + write it
      | ToList | ParDo(WriteManifest)             # manifest last: the commit marker

``WriteShard`` builds the simulator once per worker (``DoFn.setup``) and runs
it in fixed-size vmapped batches (``beam_jobs.simulate``), so each kind is
compiled once per worker; records stream into ``writers.shard.write_shard``,
which publishes the file only when it is complete. The content of a file
depends only on its plan entry and the job, never on which worker, in which
order or on which runner it was written.

Every transform used here runs on the portable runners (FnApiRunner, Dataflow,
Flink, Spark) and on Beam's Dask runner, which translates only Create, ParDo,
GroupByKey and Flatten (Reshuffle is a no-op there, combiners expand to
GroupByKey + ParDo): the Dask runner spreads work by the partitions of the
``Create``, so :func:`pipeline_options` gives it one partition per shard file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from writers import fs
from writers.check import check_shard
from writers.errors import ArchiveError
from writers.layout import ShardSpec, kind_features, kinds
from writers.schema import RecordSpec, encode_example
from writers.shard import FileMeta, gathers_input_stats, pack_records, write_shard

from .job import JOB_NAME, Job
from .simulate import (
    BatchSimulator,
    SimulatorSpec,
    compilation_cache_dir,
    load_simulator,
    shard_records,
    simulator_file,
    use_compilation_cache,
)

__all__ = [
    "pipeline_options",
    "make_pipeline",
    "build",
    "run_pipeline",
    "check_existing",
    "is_dask",
    "DASK_RUNNER",
]

_LOG = logging.getLogger(__name__)
NAMESPACE = "beam_jobs"


# --------------------------------------------------------------------------- options
def _given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_DASK_NAMES = {"daskrunner", "dask", DASK_RUNNER.lower()}


def is_dask(opts: PipelineOptions) -> bool:
    """Whether ``--runner`` names Beam's Dask runner (``DaskRunner``, ``dask`` or
    its full class path, any case): Beam's runner registry lacks the short name."""
    runner = opts.view_as(StandardOptions).runner
    return isinstance(runner, str) and runner.lower() in _DASK_NAMES


def _dask_runner():
    try:
        from apache_beam.runners.dask.dask_runner import DaskRunner
        import dask.distributed  # noqa: F401  (the runner's client)
    except ImportError as err:
        raise ImportError(
            f"--runner=DaskRunner needs dask[distributed] ({err}); pip install 'imnn-stream[dask]'"
        ) from err
    return DaskRunner()


def pipeline_options(
    beam_argv: Optional[Sequence[str]] = None, n_work: Optional[int] = None
) -> PipelineOptions:
    """PipelineOptions from command-line style flags, passed to Beam unchanged.

    Without ``--runner`` the pipeline runs on Beam's portable FnApiRunner; then,
    unless the flags say otherwise, in multi-process mode with one worker per
    core (``--direct_running_mode=multi_processing --direct_num_workers=0``,
    0 meaning "all cores"). The plain DirectRunner of recent Beam first tries to
    download the Prism runner binary, which fails (or hangs) offline.

    With ``--runner=DaskRunner`` and ``n_work`` (the number of shard files),
    unless ``--dask_npartitions`` or ``--dask_partition_size`` is given, the
    Create is cut into ``n_work`` partitions, one per shard: the Dask runner
    runs one task per partition (and treats Reshuffle as a no-op), and its
    default of 128 elements per partition would put a whole small job on one
    worker. Every other flag reaches Beam as given.
    """
    argv = list(beam_argv or [])
    opts = PipelineOptions(argv)
    if opts.view_as(StandardOptions).runner is None:
        direct = opts.view_as(DirectOptions)
        if not _given(argv, "--direct_running_mode"):
            direct.direct_running_mode = "multi_processing"
        if not _given(argv, "--direct_num_workers"):
            direct.direct_num_workers = os.cpu_count() or 1
    elif is_dask(opts) and n_work:
        if not (_given(argv, "--dask_npartitions") or _given(argv, "--dask_partition_size")):
            from apache_beam.runners.dask.dask_runner import DaskOptions

            opts.view_as(DaskOptions).npartitions = int(n_work)
    return opts


def make_pipeline(opts: PipelineOptions) -> beam.Pipeline:
    """A Pipeline on the runner the options name, or on the FnApiRunner by default.

    ``--runner=DaskRunner`` (not in Beam's registry of short names) becomes an
    instance of ``apache_beam.runners.dask.dask_runner.DaskRunner``; it connects
    to ``--dask_client_address`` (else it starts a local Dask cluster)."""
    if opts.view_as(StandardOptions).runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=opts)
    if is_dask(opts):
        return beam.Pipeline(runner=_dask_runner(), options=opts)
    return beam.Pipeline(options=opts)


# --------------------------------------------------------------------------- checks
def record_spec(job: Job, kind: str) -> RecordSpec:
    finite_difference, gradient = kind_features(job.mode, kind)
    return RecordSpec(
        tuple(job.input_shape),
        job.dtype,
        job.n_params,
        finite_difference=finite_difference,
        gradient=gradient,
    )


def check_existing(root: str, job: Job, spec: ShardSpec) -> Optional[FileMeta]:
    """FileMeta of the shard already at ``spec.path`` if it is complete and valid.

    Valid means: the checks the validator makes of a file
    (:func:`writers.check.check_shard`): every record's CRC checks, decodes
    with the job's shapes and dtype, and the records are exactly the shard's
    seeds (and signs and parameters) in order. Returns None when the file is
    missing or invalid (it will be rewritten).
    """
    if not fs.exists(fs.join(root, spec.path)):
        return None
    info = {k.kind: k for k in kinds(job.mode, job.n_s, job.n_d, job.n_params)}[spec.kind]
    check = check_shard(
        root,
        spec.path,
        info,
        record_spec(job, spec.kind),
        spec.first_seed,
        job.n_params,
        count=spec.n_records,
        n_s=job.n_s,
        first_error_only=True,
        source="plan",
        # only training shards' statistics reach the manifest: a kept validation
        # shard need not gather them
        input_stats=gathers_input_stats(spec),
    )
    if not check.ok:
        msg, record = check.errors[0]
        _LOG.warning(
            "rewriting invalid shard %s: %s", spec.path, ArchiveError(msg, spec.path, record)
        )
        return None
    return check.file_meta()


# --------------------------------------------------------------------------- DoFns
_BATCHERS: dict = {}
_BATCHERS_LOCK = threading.Lock()


def worker_simulator(name: str) -> str:
    """The simulator name the workers load: a relative file path made absolute
    in the driver's working directory (a ``dask worker`` or remote worker runs
    elsewhere). The job, and so the manifest, keep the name as given."""
    path = simulator_file(name)
    if path is None or os.path.isabs(path):
        return name
    return f"{os.path.abspath(path)}:{name.rpartition(':')[2]}"


def _batcher(job: Job, simulator: Optional[str] = None) -> BatchSimulator:
    """The job's simulator, imported and jitted once per worker process.

    Runners may create several DoFn instances per process (one per thread in
    multi-threaded mode, or after a DoFn is discarded); sharing the batcher
    means each kind is still compiled only once per process. ``simulator``: the
    name to load (:func:`worker_simulator`; default the job's). Long-lived
    workers (Dask) serve several jobs: the key holds the job, the name loaded
    and, for a simulator file, its size and modification time, so an edited
    file is loaded again."""
    simulator = simulator or job.simulator
    path = simulator_file(simulator)
    stamp = None
    if path:
        try:
            st = os.stat(path)
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:  # load_simulator reports it
            pass
    key = json.dumps([job.to_json()["job"], simulator, stamp], sort_keys=True)
    with _BATCHERS_LOCK:
        if key not in _BATCHERS:
            spec = SimulatorSpec(simulator, job.simulator_config)
            _BATCHERS[key] = BatchSimulator(
                load_simulator(spec),
                spec.describe(),
                job.mode,
                job.theta_fid,
                job.delta_theta,
                job.batch_size,
                input_shape=job.input_shape,
                check=False,
            )
        return _BATCHERS[key]


_FS_FLAGS: list = []  # the flags fs.configure last had in this process


def _configure_fs(flags: Sequence[str]) -> None:
    """``fs.configure(flags)`` once per process and set of flags: the Dask runner
    calls ``DoFn.setup`` once per partition, i.e. once per shard file."""
    flags = list(flags)
    with _BATCHERS_LOCK:
        if _FS_FLAGS != [flags]:
            fs.configure(flags)
            _FS_FLAGS[:] = [flags]


def _job_kinds(job: Job) -> list:
    return [k.kind for k in kinds(job.mode, job.n_s, job.n_d, job.n_params)]


class WriteShard(beam.DoFn):
    """ShardSpec dict -> (ShardSpec dict, FileMeta dict with its record index packed).

    A valid file already under the shard's name is kept (resume); anything else
    is simulated and written atomically. ``setup`` starts compiling the job's
    kinds in a background thread (from the persistent cache ``cache_dir`` where
    the driver filled it), overlapping the runner's hand-over of the first work.
    """

    def __init__(
        self,
        root: str,
        job: Job,
        fs_flags: Sequence[str] = (),
        cache_dir: Optional[str] = None,
        simulator: Optional[str] = None,
    ):
        self.root, self.job, self.fs_flags = root, job, list(fs_flags)
        self.cache_dir = cache_dir
        self.simulator = simulator or worker_simulator(job.simulator)
        self.written = Metrics.counter(NAMESPACE, "shards_written")
        self.kept = Metrics.counter(NAMESPACE, "shards_kept")
        self.simulated = Metrics.counter(NAMESPACE, "records_simulated")

    def setup(self):
        _configure_fs(self.fs_flags)
        use_compilation_cache(self.cache_dir)
        self.batcher = _batcher(self.job, self.simulator)
        threading.Thread(
            target=self.batcher.warm, args=(_job_kinds(self.job),), daemon=True
        ).start()

    def process(self, spec_json: dict):
        spec = ShardSpec.from_json(spec_json)
        meta = check_existing(self.root, self.job, spec)
        if meta is not None:
            self.kept.inc()
        else:
            records = shard_records(
                self.batcher,
                spec.kind,
                self.job.base_seeds[spec.split],
                spec.first_seed,
                spec.last_seed,
                encode_example,
            )
            meta = write_shard(self.root, spec, records)
            self.written.inc()
            self.simulated.inc(meta.count)
        # a shallow dict (FileMeta.to_json (dataclasses.asdict) deep-copies the
        # per-record index, ~13 µs per record), the index packed (pack_records: ~30×
        # smaller, Beam's hand-over of the elements to the manifest step was ~1.8 µs
        # a record of the archive's, after the last shard)
        meta = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)}
        if meta["records"] is not None:
            meta["records"] = pack_records(meta["records"])
        yield spec_json, meta


class WriteManifest(beam.DoFn):
    """[(ShardSpec dict, FileMeta dict)] -> manifest path, written after every shard."""

    def __init__(self, root: str, job: Job, fs_flags: Sequence[str] = ()):
        self.root, self.job, self.fs_flags = root, job, list(fs_flags)

    def setup(self):
        _configure_fs(self.fs_flags)

    def process(self, metas):
        from writers.manifest import write_manifest
        from writers.tfds_meta import write_tfds_metadata

        manifest = self.job.new_manifest()
        planned = {s.path for s in self.job.plan()}
        got = {spec["path"] for spec, _ in metas}
        if got != planned:  # never commit an archive with a hole
            raise ArchiveError(f"{len(planned - got)} planned shards were not written")
        for spec, meta in sorted(metas, key=lambda m: m[0]["path"]):
            manifest.add_file(ShardSpec.from_json(spec), FileMeta.from_json(meta))
        # every shard is written, so no write is in flight: a temporary file left
        # here is from a worker killed mid-write whose shard was redone elsewhere
        # (a runner that retries on another worker, e.g. Dask, finishes the job)
        for rel in fs.list_files(self.root):
            if fs.TEMP_MARKER in rel.rsplit("/", 1)[-1]:
                fs.delete(fs.join(self.root, rel))
                _LOG.warning("removed temporary file of an interrupted write: %s", rel)
        # TFDS metadata (tfds.builder_from_directory(ARCHIVE/<split>/<kind>)), then
        # the index and the manifest: the commit marker
        write_tfds_metadata(self.root, manifest)
        path = write_manifest(self.root, manifest)
        # The committed manifest now records the job's parameters; job.json
        # (the marker of an unfinished job) goes, so the archive holds only
        # what the validator expects.
        job_path = fs.join(self.root, JOB_NAME)
        if fs.exists(job_path):
            fs.delete(job_path)
        yield path


def build(
    p: beam.Pipeline,
    root: str,
    job: Job,
    plan: Sequence[ShardSpec],
    fs_flags: Sequence[str] = (),
    cache_dir: Optional[str] = None,
):
    """Add the archive-writing transforms to ``p``; returns the manifest path
    PCollection. ``cache_dir``: the workers' persistent compilation cache (a
    path they can see; None: none)."""
    metas = (
        p
        | "PlanShards" >> beam.Create([s.to_json() for s in plan])
        | "Redistribute" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(WriteShard(root, job, fs_flags, cache_dir))
    )
    return (
        metas
        | "CollectFileMeta" >> beam.combiners.ToList()
        | "WriteManifest" >> beam.ParDo(WriteManifest(root, job, fs_flags))
    )


def run_pipeline(root: str, job: Job, beam_argv: Sequence[str] = ()) -> dict:
    """Build and run the pipeline to completion; returns the Beam counters
    (``shards_written``, ``shards_kept``, ``records_simulated``) where the
    runner reports them."""
    plan = job.plan()
    opts = pipeline_options(beam_argv, n_work=len(plan))
    cache_dir = None
    if opts.view_as(StandardOptions).runner is None and os.environ.get(
        "IMNN_STREAM_JAX_CACHE", "1"
    ) not in ("0", ""):
        # local workers share the driver's disk: the driver compiles each kind once
        # into the cache while Beam starts the workers, which then only load it
        cache_dir = compilation_cache_dir()
        if use_compilation_cache(cache_dir):
            threading.Thread(
                target=lambda: _batcher(job, worker_simulator(job.simulator)).warm(_job_kinds(job)),
                name="warm-compile",
                daemon=True,
            ).start()
    p = make_pipeline(opts)
    build(p, root, job, plan, fs_flags=list(beam_argv), cache_dir=cache_dir)
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the Dask runner's connection
        if client is not None and hasattr(client, "close"):
            client.close()
    counters = {}
    try:
        for c in result.metrics().query()["counters"]:
            if c.key.metric.namespace == NAMESPACE:
                name = c.key.metric.name
                counters[name] = counters.get(name, 0) + (c.committed or c.attempted or 0)
    except Exception:  # some runners do not report metrics (Dask)
        pass
    return counters
