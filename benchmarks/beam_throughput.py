"""Throughput of the Beam generation pipeline against a plain single-process loop.

Both write the same archive (2-D Gaussian random field, default 64×64) with the
same code for the science: ``beam_jobs.simulate`` (fixed-size vmapped batches,
jitted once) and ``writers.shard.write_shard`` (the same TFRecord shards), and
the loop also writes the manifest. The only difference is who runs the shards:
one Python process in order, or the Beam pipeline (default: FnApiRunner, one
worker process per core). Timings are end to end and include everything each
pays for: imports already done, but Beam start-up, worker start-up and one
compilation per worker for the pipeline; one compilation for the loop.

Prints one JSON object: simulations per second of each and their ratio, and
whether the two archives have byte-identical shards (SHA-256 of every file, from
the manifests; the loop's archive is deleted before the pipeline runs, so both
start with the same free disk).

The pipeline starts with an empty JAX compilation cache of its own (in the
scratch directory; the driver fills it while the workers start, see
``beam_jobs.simulate.compilation_cache_dir``), so its numbers include one
compilation; ``--warm-cache`` keeps a cache from an earlier run instead.

``--manifest-records N`` also times, in a child process, what the manifest step
does for an archive of N records (synthetic shard metadata: gathering, the
Parquet index, the manifest) and its peak RSS.

    python benchmarks/beam_throughput.py [--size 64] [--n-s 262144] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def plain_loop(root: str, job) -> float:
    """Simulate and write every shard of ``job`` in one process; returns seconds."""
    from beam_jobs.simulate import BatchSimulator, SimulatorSpec, load_simulator, shard_records
    from writers.manifest import write_manifest
    from writers.schema import encode_example
    from writers.shard import write_shard

    start = time.perf_counter()
    spec = SimulatorSpec(job.simulator, job.simulator_config)
    batcher = BatchSimulator(
        load_simulator(spec),
        spec.describe(),
        job.mode,
        job.theta_fid,
        job.delta_theta,
        job.batch_size,
        input_shape=job.input_shape,
    )
    manifest = job.new_manifest()
    for shard in job.plan():
        records = shard_records(
            batcher,
            shard.kind,
            job.base_seeds[shard.split],
            shard.first_seed,
            shard.last_seed,
            encode_example,
        )
        manifest.add_file(shard, write_shard(root, shard, records))
    write_manifest(root, manifest)
    return time.perf_counter() - start


class ShardClock:
    """Polls the archive for shard files appearing under their final names, to
    separate the pipeline's steady rate from its fixed start-up and shut-down."""

    def __init__(self, root: str, sizes: dict, interval: float = 0.2):
        import threading

        self.root, self.sizes, self.interval = root, sizes, interval
        self.seen: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            for d, _, files in os.walk(self.root):
                for f in files:
                    rel = os.path.relpath(os.path.join(d, f), self.root).replace(os.sep, "/")
                    if rel in self.sizes and rel not in self.seen:
                        self.seen[rel] = time.perf_counter()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        times = sorted(self.seen.values())
        if len(times) < 4:
            return {}
        # records finished after the first quarter of the shards, over the time they took
        k = len(times) // 4
        later = sorted(self.seen, key=self.seen.get)[k:]
        rate = sum(self.sizes[p] for p in later) / max(times[-1] - times[k - 1], 1e-9)
        return {"steady_simulations_per_s": round(rate, 1), "first_shard_after_s": None}


def manifest_step(n_records: int, records_per_shard: int = 4096) -> dict:
    """Seconds and peak RSS of the pipeline's manifest step (``WriteManifest``: add
    every shard's FileMeta with its (count, 5) record index, TFDS metadata, Parquet
    index, manifest) for a numerical archive of ``n_records`` 64×64 records on 2
    devices, from synthetic metadata. Run in a child process for a clean peak."""
    import subprocess

    code = f"""
import json, tempfile, time, shutil, numpy as np
from beam_jobs.job import make_job
from writers.shard import FileMeta
import writers.shard
ARRAYS = hasattr(writers.shard, "records_array")  # before 1796e9c: a tuple per record
from writers.manifest import write_manifest
from writers.tfds_meta import write_tfds_metadata
n = {n_records} // 5 // 2 * 2
job = make_job("numerical", "beam_jobs.simulators:gaussian_random_field", {{"size": 64}},
               [1.0, 2.0], [0.1, 0.1], n, n, 2, {records_per_shard}, {{"train": 0}},
               (64, 64), 256, 0)
plan = job.plan()
metas = []
for sp in plan:
    k = sp.n_records
    rec = np.zeros((k, 5), np.int64)
    rec[:, 0] = np.repeat(np.arange(sp.first_seed, sp.last_seed + 1), k // (sp.last_seed - sp.first_seed + 1))
    rec[:, 4] = 16412
    rec[:, 3] = np.arange(k) * 16412
    metas.append((sp.to_json(), dict(path=sp.path, count=k, first_seed=sp.first_seed,
                  last_seed=sp.last_seed, bytes=k * 16412, sha256="0" * 64,
                  records=rec if ARRAYS else list(map(tuple, rec.tolist())))))
def rss_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024
rss0 = rss_mib("VmRSS:")
try:  # reset the peak (VmHWM) to the current RSS: the step's own peak
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
root = tempfile.mkdtemp(prefix="manifest-step-")
t = time.perf_counter()
from writers.layout import ShardSpec
m = job.new_manifest()
for spec, meta in sorted(metas, key=lambda x: x[0]["path"]):
    m.add_file(ShardSpec.from_json(spec), FileMeta.from_json(meta))
write_tfds_metadata(root, m)
write_manifest(root, m)
dt = time.perf_counter() - t
shutil.rmtree(root)
print(json.dumps({{"records": sum(sp.n_records for sp in plan), "shards": len(plan),
                  "seconds": round(dt, 2),
                  "peak_rss_mib": rss_mib("VmHWM:"), "rss_before_step_mib": rss0,
                  "record_index": "int64 arrays" if ARRAYS else "tuples"}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def checksums(root: str) -> dict:
    """{shard path: sha256} from an archive's manifest."""
    from writers.manifest import read_manifest

    return {f["path"]: f["sha256"] for f in read_manifest(root).all_files()}


def timed_pipeline(beam_root, scratch, job, args, theta, delta, n_d):
    """Run the Beam pipeline into ``beam_root``, end to end (Beam's import and
    start-up included); returns (seconds, the ShardClock's steady-state figures with
    the times to the first shard and after the last)."""
    from beam_jobs import run_generation

    if not args.warm_cache:  # a cold cache: the pipeline pays for one compilation
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(scratch, "jax-cache")
    clock = ShardClock(beam_root, {sp.path: sp.n_records for sp in job.plan()})
    start = time.perf_counter()
    run_generation(
        beam_root,
        "grf",
        theta,
        delta if args.mode == "numerical" else None,
        args.n_s,
        n_d,
        1,
        args.mode,
        records_per_shard=args.records_per_shard,
        seeds={"train": 0},
        simulator_config={"size": args.size},
        batch_size=args.batch_size,
        progress=False,
        beam_args=[f"--direct_num_workers={args.workers}"],
    )
    seconds = time.perf_counter() - start
    steady = clock.stop()
    if clock.seen:
        steady["first_shard_after_s"] = round(min(clock.seen.values()) - start, 2)
        steady["last_shard_to_return_s"] = round(start + seconds - max(clock.seen.values()), 2)
    return seconds, steady


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="field side (size × size)")
    p.add_argument("--n-s", type=int, default=262144, help="fiducial simulations")
    p.add_argument("--mode", default="fiducial", choices=("fiducial", "numerical"))
    p.add_argument("--records-per-shard", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the archives")
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="let the pipeline use the user's compilation cache (default: a cold one)",
    )
    p.add_argument("--manifest-records", type=int, default=0, help="also time the manifest step")
    p.add_argument(
        "--only",
        choices=("loop", "pipeline"),
        default=None,
        help="run one side (e.g. the loop again on a quiet machine); no ratio",
    )
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # worker start-up chatter

    from beam_jobs.job import make_job

    scratch = tempfile.mkdtemp(prefix="beam-throughput-", dir=args.dir)
    theta, delta = [1.0, 2.0], [0.1, 0.1]
    n_d = args.n_s if args.mode == "numerical" else 0
    job = make_job(
        args.mode,
        "beam_jobs.simulators:gaussian_random_field",
        {"size": args.size},
        theta,
        delta,
        args.n_s,
        n_d,
        1,
        args.records_per_shard,
        {"train": 0},
        (args.size, args.size),
        args.batch_size,
    )
    n_records = job.n_records()
    load_before = os.getloadavg()
    try:
        loop_s = loop_files = beam_s = None
        steady = {}
        if args.only != "pipeline":
            loop_root = os.path.join(scratch, "loop")
            loop_s = plain_loop(loop_root, job)
            loop_files = checksums(loop_root)
            if not args.keep:  # the same free disk and page cache for both
                shutil.rmtree(loop_root)
        identical = None
        if args.only != "loop":
            beam_root = os.path.join(scratch, "beam")
            beam_s, steady = timed_pipeline(beam_root, scratch, job, args, theta, delta, n_d)
            if loop_files is not None:
                identical = checksums(beam_root) == loop_files
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    mb = n_records * 4 * args.size * args.size / 1e6
    fixed = None
    if steady.get("first_shard_after_s") is not None:
        fixed = steady["first_shard_after_s"] + steady["last_shard_to_return_s"]
    out = {
        "benchmark": "beam_throughput",
        "simulator": f"gaussian_random_field({args.size})",
        "mode": args.mode,
        "simulations": n_records,
        "records_per_shard": args.records_per_shard,
        "batch_size": args.batch_size,
        "shards": len(job.plan()),
        "bytes_per_simulation": 4 * args.size * args.size,
        "cpu_count": os.cpu_count(),
        "beam_workers": args.workers,
        "loop": None
        if loop_s is None
        else {"seconds": round(loop_s, 2), "simulations_per_s": round(n_records / loop_s, 1)},
        "pipeline": None
        if beam_s is None
        else {
            "seconds": round(beam_s, 2),
            "simulations_per_s": round(n_records / beam_s, 1),
            "runner": "FnApiRunner multi_processing",
            **steady,
        },
        "ratio": round(loop_s / beam_s, 3) if loop_s and beam_s else None,
        "data_mb": round(mb, 1),
        "loop_mb_per_s": round(mb / loop_s, 1) if loop_s else None,
        "pipeline_mb_per_s": round(mb / beam_s, 1) if beam_s else None,
        "fixed_seconds": None if fixed is None else round(fixed, 2),
        "fixed_fraction": None if fixed is None else round(fixed / beam_s, 3),
        "byte_identical_shards": identical,
        "jax_compilation_cache": "warm (user cache)" if args.warm_cache else "cold (new dir)",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if args.manifest_records:
        out["manifest_step"] = manifest_step(args.manifest_records, args.records_per_shard)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
