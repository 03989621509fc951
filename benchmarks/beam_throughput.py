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


def checksums(root: str) -> dict:
    """{shard path: sha256} from an archive's manifest."""
    from writers.manifest import read_manifest

    return {f["path"]: f["sha256"] for f in read_manifest(root).all_files()}


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
    args = p.parse_args(argv)
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # worker start-up chatter

    from beam_jobs import run_generation
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
        loop_root = os.path.join(scratch, "loop")
        loop_s = plain_loop(loop_root, job)
        loop_files = checksums(loop_root)
        if not args.keep:  # the same free disk and page cache for both
            shutil.rmtree(loop_root)
        beam_root = os.path.join(scratch, "beam")
        clock = ShardClock(beam_root, {sp.path: sp.n_records for sp in job.plan()})
        start = time.perf_counter()  # end to end, Beam's import and start-up included
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
        beam_s = time.perf_counter() - start
        steady = clock.stop()
        if clock.seen:
            steady["first_shard_after_s"] = round(min(clock.seen.values()) - start, 2)
            steady["last_shard_to_return_s"] = round(start + beam_s - max(clock.seen.values()), 2)
        identical = checksums(beam_root) == loop_files
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
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
        "loop": {"seconds": round(loop_s, 2), "simulations_per_s": round(n_records / loop_s, 1)},
        "pipeline": {
            "seconds": round(beam_s, 2),
            "simulations_per_s": round(n_records / beam_s, 1),
            "runner": "FnApiRunner multi_processing",
            **steady,
        },
        "ratio": round(loop_s / beam_s, 3),
        "byte_identical_shards": identical,
        "jax_compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
