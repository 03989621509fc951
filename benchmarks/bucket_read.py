"""Reading an archive from a bucket: gs:// (gcp-storage-emulator) and s3:// (moto
server), both on loopback, against local disk in the same run.

Writes a numerical archive of 64×64 float32 fields (``--gb``, default 1.1 GB)
locally with ``writers.archive.write_arrays``, uploads its files to both
emulators (started with ``tests/servers.py``, as the tests do), then reads one
epoch of every kind of the train split through ``writers.streams.device_streams``
(2 devices, CRC checks on) from local disk, gs:// and s3://: with the read-ahead
reader (``writers.readahead``: concurrent 8 MiB ranged GETs, 3 ahead per file; and
2 threads, 1 ahead) and sequentially (``IMNN_STREAM_READ_AHEAD=0``: Beam's reader
for gs://, one 8 MiB GET at a time for s3://, whose Beam reader is not
thread-safe). To say where the
emulator is the limit it also times, per store, one plain GET of a whole shard
(one request, one connection) and 8 concurrent ranged GETs of the same shard.
``--fit`` adds one ``imnn-stream fit --max-iterations 1 --cache-mib 0`` from each.

Prints one JSON object (MB/s each); ``--out`` also writes it.

    python benchmarks/bucket_read.py [--gb 1.1] [--fit] [--out benchmarks/results/bucket_read.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZE = 64


def write_archive(root: str, gb: float) -> dict:
    """Numerical archive of ~``gb`` GB (n_s = n_d, 2 devices); returns its manifest JSON."""
    import numpy as np

    from writers.archive import write_arrays

    per_seed = 5 * SIZE * SIZE * 4  # one fiducial and four derivative records
    n = int(gb * 1e9 / per_seed) // 2 * 2
    rng = np.random.default_rng(0)
    fid = rng.standard_normal((n, SIZE, SIZE), dtype=np.float32)
    der = rng.standard_normal((n, 2, 2, SIZE, SIZE), dtype=np.float32)
    m = write_arrays(
        root,
        "numerical",
        [1.0, 2.0],
        [0.1, 0.1],
        fiducial=fid,
        derivative=der,
        n_devices=2,
        records_per_shard=2048,
        base_seeds={"train": 0, "validation": 1},
    )
    return m.to_json()


def upload(local: str, gs_url: str, s3_url: str) -> dict:
    """Copy every file of the archive to both emulators with their own clients."""
    import boto3
    from google.cloud import storage

    from tests.servers import BUCKET

    gcs = storage.Client.create_anonymous_client().bucket(BUCKET)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    out = {}
    for name, put in (
        ("gs", lambda p, key: gcs.blob(key).upload_from_filename(p)),
        ("s3", lambda p, key: s3.upload_file(p, BUCKET, key)),
    ):
        t = time.perf_counter()
        n = 0
        for dirpath, _, files in os.walk(local):
            for f in files:
                p = os.path.join(dirpath, f)
                put(p, "archive/" + os.path.relpath(p, local).replace(os.sep, "/"))
                n += os.path.getsize(p)
        out[name] = {"bytes": n, "seconds": round(time.perf_counter() - t, 1)}
    return out


def read_epoch(root: str) -> dict:
    """One epoch of every train kind through device_streams (2 devices × 1000)."""
    from writers.manifest import read_manifest
    from writers.streams import close_all, device_streams, epoch_records, stream_kinds

    m = read_manifest(root)
    t = time.perf_counter()
    streams = device_streams(root, "train", 2, 1000, manifest=m)
    nbytes = 0
    try:
        for kind in stream_kinds(m):
            n_batches = -(-epoch_records(m, "train", kind, 2) // 1000)
            for s in streams[kind]:
                for _ in range(n_batches):
                    nbytes += next(s)["data"].nbytes
    finally:
        close_all(streams)
    dt = time.perf_counter() - t
    return {"seconds": round(dt, 2), "decoded_mb": round(nbytes / 1e6, 1), "mb_per_s": None}


def emulator_limits(url: str, rel: str, nbytes: int) -> dict:
    """One whole-object GET, and 8 concurrent ranged GETs of the same object."""
    from writers import fs

    fetch = fs._range_fetcher(fs._store(url), fs.join(url, rel))
    t = time.perf_counter()
    assert len(fetch(0, nbytes)) == nbytes
    single = nbytes / (time.perf_counter() - t) / 1e6
    step = -(-nbytes // 8)
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        got = sum(
            len(b)
            for b in pool.map(lambda a: fetch(a, min(a + step, nbytes)), range(0, nbytes, step))
        )
    parallel = got / (time.perf_counter() - t) / 1e6
    return {
        "object_mb": round(nbytes / 1e6, 1),
        "one_get_mb_per_s": round(single, 1),
        "eight_ranged_gets_mb_per_s": round(parallel, 1),
    }


def fit_once(root: str, env: dict, out_dir: str) -> dict:
    argv = [
        sys.executable,
        "-m",
        "imnn_stream",
        "fit",
        root,
        "--out",
        out_dir,
        "--model",
        "mlp:4",
        "--devices",
        "2",
        "--n-per-device",
        "1000",
        "--max-iterations",
        "1",
        "--cache-mib",
        "0",
    ]
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    return {
        "seconds": round(time.perf_counter() - t, 1),
        "ok": p.returncode == 0,
        **({} if p.returncode == 0 else {"error": p.stderr.strip().splitlines()[-1:]}),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.1, help="archive size in GB")
    p.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--fit", action="store_true", help="also one fit iteration from each")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    from tests.servers import gcs_emulator, s3_moto
    from writers import fs, readahead

    scratch = tempfile.mkdtemp(prefix="bucket-read-", dir=args.dir)
    load_before = os.getloadavg()
    out = {"benchmark": "bucket_read", "cpu_count": os.cpu_count()}
    try:
        local = os.path.join(scratch, "archive")
        t = time.perf_counter()
        manifest = write_archive(local, args.gb)
        out["write_local_s"] = round(time.perf_counter() - t, 1)
        files = [
            f
            for s in manifest["layout"]
            for k in manifest["layout"][s]
            for f in (f for d in manifest["layout"][s][k]["devices"] for f in d["files"])
        ]
        total = sum(f["bytes"] for f in files)
        out["archive"] = {
            "bytes": total,
            "files": len(files),
            "shard_mb": round(max(f["bytes"] for f in files) / 1e6, 1),
        }
        s3_env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }
        with (
            gcs_emulator(os.path.join(scratch, "gcs.log")) as gcs_url,
            s3_moto(os.path.join(scratch, "s3.log")) as s3_url,
        ):
            os.environ["STORAGE_EMULATOR_HOST"] = gcs_url
            os.environ.update(s3_env)
            out["upload"] = upload(local, gcs_url, s3_url)
            stores = {
                "local": (local, []),
                "gs": ("gs://imnn-test/archive", ["--no_auth"]),
                "s3": (
                    "s3://imnn-test/archive",
                    [
                        f"--s3_endpoint_url={s3_url}",
                        "--s3_region_name=us-east-1",
                        "--s3_access_key_id=test",
                        "--s3_secret_access_key=test",
                    ],
                ),
            }
            train_bytes = sum(
                f["bytes"]
                for k in manifest["layout"]["train"].values()
                for d in k["devices"]
                for f in d["files"]
            )
            reads = {}
            for name, (root, flags) in stores.items():
                fs.configure(flags)
                variants = (
                    [("read_ahead", "1", 8, 3)]
                    if name == "local"
                    else [
                        ("read_ahead_8_threads_3_ahead", "1", 8, 3),
                        ("read_ahead_2_threads_1_ahead", "1", 2, 1),
                        ("sequential", "0", 8, 3),
                    ]
                )
                for variant, flag, threads, ahead in variants:
                    os.environ["IMNN_STREAM_READ_AHEAD"] = flag
                    readahead.THREADS, readahead.AHEAD, readahead._pool = threads, ahead, None
                    r = read_epoch(root)
                    r["mb_per_s"] = round(train_bytes / 1e6 / r["seconds"], 1)
                    reads[name if name == "local" else f"{name}_{variant}"] = r
                readahead.THREADS, readahead.AHEAD, readahead._pool = 8, 3, None
                os.environ["IMNN_STREAM_READ_AHEAD"] = "1"
                if name != "local":
                    big = max(files, key=lambda f: f["bytes"])
                    out.setdefault("emulator_limits", {})[name] = emulator_limits(
                        root, big["path"], big["bytes"]
                    )
            out["epoch_reads"] = {"train_bytes": train_bytes, **reads}
            out["read_ahead"] = {
                "chunk_mib": readahead.CHUNK >> 20,
                "ahead_chunks": readahead.AHEAD,
                "threads": readahead.THREADS,
            }
            if args.fit:
                fits = {}
                for name, (root, flags) in stores.items():
                    env = dict(os.environ, IMNN_STREAM_FS_OPTIONS=shlex.join(flags))
                    fits[name] = fit_once(root, env, os.path.join(scratch, f"run-{name}"))
                out["fit_one_iteration"] = fits
            fs.configure([])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out["note"] = (
        "emulator_limits: one GET of a whole shard vs 8 concurrent ranged GETs of it; "
        "both emulators are single Python processes on the same 2 shared cores as "
        "the reader, so concurrency on loopback measures the emulator, not the network"
    )
    out["load_average_before"] = [round(x, 2) for x in load_before]
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
