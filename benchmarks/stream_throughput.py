"""Read throughput of writers.streams.device_streams vs a bare tf.data read.

Writes a fiducial archive of ``--n-s`` simulations of shape ``--size``²
(float32) in a temporary directory (or uses ``--archive``), then times, in
the same run:

* ``streams``: one epoch of every per-device stream (parsed numpy batches of
  ``--n-per-device`` records, CRCs checked), consumed round-robin over the
  devices as a trainer does;
* ``tf_data``: ``tf.data.TFRecordDataset(files).batch(n_per_device)`` over the
  same files, iterated to the end (raw records, no parsing);
* ``tf_data_parsed``: the same with the manifest's parse function mapped.

Prints one JSON object: MB/s of each (file bytes / seconds, best of
``--repeats``; ``streams_mb_s_median`` the median) and ``ratio`` =
streams / tf_data.

``small_records``: the per-record cost on small records, where Python work
per record dominates: a numerical archive of the 10-float toy problem
(n_s = n_d = 1000, 2 parameters, 2 devices) written with
``writers.archive.write_arrays``, one epoch of every kind (fiducial and
derivative: 5000 records) read through ``device_streams`` with
``n_per_device=100`` as a trainer does; µs per record, median (and min) of
``--small-repeats`` runs, each including the streams' start-up, and
``steady_us_per_record``: the same read 10 epochs at a time from streams
kept open (the trainer's steady state).  ``--small-only`` skips the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timings(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def best_of(fn, repeats):
    return min(timings(fn, repeats))


def small_records(repeats: int = 15) -> dict:
    """µs per record of device_streams on the 10-float toy archive (see module doc)."""
    import statistics

    from writers.archive import write_arrays
    from writers.streams import close_all, device_streams, epoch_records, stream_kinds

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "toy")
        m = write_arrays(
            root,
            "numerical",
            [0.0, 1.0],
            [0.1, 0.1],
            fiducial=rng.normal(size=(1000, 10)).astype(np.float32),
            derivative=rng.normal(size=(1000, 2, 2, 10)).astype(np.float32),
            n_devices=2,
        )
        D, n = 2, 100
        kinds = stream_kinds(m)
        n_batches = {k: -(-epoch_records(m, "train", k, D) // n) for k in kinds}
        records = sum(epoch_records(m, "train", k, D) * D for k in kinds)

        def epoch(st):
            for k in kinds:
                for _ in range(n_batches[k]):
                    for s in st[k]:
                        next(s)

        def one_epoch():
            st = device_streams(root, "train", D, n)
            try:
                epoch(st)
            finally:
                close_all(st)

        one_epoch()  # warm the page cache
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            one_epoch()
            times.append(time.perf_counter() - t)
        st = device_streams(root, "train", D, n)
        try:
            epoch(st)
            steady = []
            for _ in range(max(3, repeats // 3)):
                t = time.perf_counter()
                for _ in range(10):
                    epoch(st)
                steady.append((time.perf_counter() - t) / 10)
        finally:
            close_all(st)
    us = 1e6 / records
    return {
        "records": records,
        "record_shape": [10],
        "n_devices": D,
        "n_per_device": n,
        "us_per_record": round(statistics.median(times) * us, 3),
        "us_per_record_min": round(min(times) * us, 3),
        "steady_us_per_record": round(statistics.median(steady) * us, 3),
        "repeats": repeats,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", default=None, help="existing archive (default: write one)")
    p.add_argument("--n-s", type=int, default=8192)
    p.add_argument("--size", type=int, default=32, help="simulations are size×size float32")
    p.add_argument("--n-devices", type=int, default=2)
    p.add_argument("--n-per-device", type=int, default=256)
    p.add_argument("--records-per-shard", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small-repeats", type=int, default=15)
    p.add_argument("--small-only", action="store_true", help="only the small-record measurement")
    args = p.parse_args(argv)
    if args.small_only:
        out = {"small_records": small_records(args.small_repeats), "cpus": os.cpu_count()}
        print(json.dumps(out))
        return out

    from writers.archive import write_arrays
    from writers.manifest import read_manifest
    from writers.streams import close_all, device_streams, epoch_records

    tmp = None
    root = args.archive
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = os.path.join(tmp.name, "archive")
        fid = (
            np.random.default_rng(0)
            .normal(size=(args.n_s, args.size, args.size))
            .astype(np.float32)
        )
        write_arrays(
            root,
            "fiducial",
            [1.0, 2.0],
            fiducial=fid,
            n_devices=args.n_devices,
            records_per_shard=args.records_per_shard,
        )
    m = read_manifest(root)
    kind = m.kinds("train")[0]
    files = [os.path.join(root, f["path"]) for f in m.files("train", kind)]
    total_bytes = sum(f["bytes"] for f in m.files("train", kind))
    n, D = args.n_per_device, args.n_devices
    epoch = epoch_records(m, "train", kind, D)
    n_batches = -(-epoch // n)

    def run_streams():
        st = device_streams(root, "train", D, n, prefetch=2)
        try:
            for _ in range(n_batches):
                for s in st[kind]:
                    next(s)
        finally:
            close_all(st)

    import tensorflow as tf
    from writers.parsers import parse_fn

    def run_tf():
        for _ in tf.data.TFRecordDataset(files, buffer_size=1 << 20).batch(n):
            pass

    parse = parse_fn(m, "train", kind)

    def run_tf_parsed():
        ds = tf.data.TFRecordDataset(files, buffer_size=1 << 20).map(parse).batch(n)
        for _ in ds:
            pass

    run_streams(), run_tf(), run_tf_parsed()  # warm the page cache and tf.function tracing
    streams_times = timings(run_streams, args.repeats)
    t_streams = min(streams_times)
    t_tf = best_of(run_tf, args.repeats)
    t_tfp = best_of(run_tf_parsed, args.repeats)
    mb = total_bytes / 1e6
    out = {
        "archive_mb": round(mb, 2),
        "records": m.n_s if kind == "fiducial" else None,
        "record_shape": m.input_shape,
        "n_devices": D,
        "n_per_device": n,
        "streams_mb_s": round(mb / t_streams, 1),
        "streams_mb_s_median": round(mb / float(np.median(streams_times)), 1),
        "tf_data_mb_s": round(mb / t_tf, 1),
        "tf_data_parsed_mb_s": round(mb / t_tfp, 1),
        "ratio": round(t_tf / t_streams, 3),
        "ratio_vs_parsed": round(t_tfp / t_streams, 3),
        "cpus": os.cpu_count(),
    }
    out["small_records"] = small_records(args.small_repeats)
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
