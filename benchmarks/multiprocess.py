"""Multi-process streaming fit (issue 13 item 4): seconds per iteration of
1 process × 2 devices against 2 processes × 1 device (loopback, gloo) on a small
Gaussian-random-field archive, and the bytes each process exchanges per iteration.

Communication of the two-pass algorithm across processes is the pass-1 outputs
(n_s · n_summaries floats for the fiducial kind, n_d · 2 · n_params · n_summaries
for finite differences, training and validation) and one gradient sum per process:
O(n_s · n_summaries + processes · weights), against the O(weights · samples) of
sending per-sample gradients (printed for comparison), and never the data.

    python benchmarks/multiprocess.py [--n-s 1000] [--size 32] [--iterations 10]

Prints JSON and writes benchmarks/results/multiprocess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_archive(path, n_s, size):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from beam_jobs.simulators import gaussian_random_field
    from writers.archive import write_arrays

    sim = jax.jit(jax.vmap(gaussian_random_field(size), in_axes=(0, None)))
    θ, δθ = np.array([1.0, 2.0], np.float32), np.array([0.1, 0.1], np.float32)

    def split(seed):
        keys = jax.random.split(jax.random.PRNGKey(seed), n_s)
        fid = np.asarray(sim(keys, jnp.asarray(θ)))
        der = np.stack(
            [
                np.stack(
                    [np.asarray(sim(keys, θ + s * np.eye(2)[p] * δθ / 2)) for p in range(2)], 1
                )
                for s in (-1, 1)
            ],
            1,
        )
        return fid, der

    (f, d), (vf, vd) = split(0), split(1)
    write_arrays(
        path,
        "numerical",
        θ,
        δθ,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
        n_devices=2,
        records_per_shard=250,
    )


def worker(a):
    """One process of a fit: warm-up iteration, then ``iterations`` timed ones."""
    import jax
    import optax

    from imnn_stream import distributed, models
    from imnn_stream.streaming import DatasetNumericalGradientIMNN

    procs = distributed.initialize(a.coordinator, a.num_processes, a.process_id, a.devices)
    imnn = DatasetNumericalGradientIMNN.from_archive(
        a.archive,
        models.from_spec("cnn:8,16", 2),
        optax.adam(1e-3),
        jax.random.PRNGKey(0),
        host=jax.local_devices(backend="cpu")[0],
        devices=distributed.local_devices(a.devices),
        n_per_device=a.n_per_device,
        cache=True,
    )
    kw = dict(patience=10**6, min_iterations=0)
    imnn.fit(10.0, 0.1, max_iterations=1, **kw)  # compile, fill the cache
    engine = imnn._strategy.engine
    before = dict(getattr(engine, "exchanged", {}))
    t0 = time.perf_counter()
    imnn.fit(10.0, 0.1, max_iterations=a.iterations, **kw)
    seconds = (time.perf_counter() - t0) / a.iterations
    after = getattr(engine, "exchanged", {})
    per_it = {k: (after[k] - before.get(k, 0)) / a.iterations for k in after}
    weights = sum(x.size for x in jax.tree_util.tree_leaves(imnn.w))
    imnn.close()
    print(
        "RESULT "
        + json.dumps(
            dict(process=procs.index, s_per_iteration=seconds, exchanged=per_it, weights=weights)
        ),
        flush=True,
    )


def run(cmd, env):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def results(procs):
    out = []
    for p in procs:
        o, e = p.communicate(timeout=1800)
        if p.returncode:
            raise SystemExit(f"worker failed:\n{e[-3000:]}")
        out.append(json.loads(next(x for x in o.splitlines() if x.startswith("RESULT "))[7:]))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-s", type=int, default=1000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--n-per-device", type=int, default=250)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--archive")
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "multiprocess.json"))
    a = p.parse_args()
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    if a.worker:
        return worker(a)
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--iterations", str(a.iterations)]
    me += ["--n-per-device", str(a.n_per_device)]
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "grf")
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {HERE!r}); "
                f"from multiprocess import make_archive; make_archive({archive!r}, {a.n_s}, {a.size})",
            ],
            check=True,
            env=env,
        )
        one = results([run(me + ["--archive", archive, "--devices", "2"], env)])[0]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        two = results(
            [
                run(
                    me
                    + ["--archive", archive, "--devices", "1", "--num-processes", "2"]
                    + ["--coordinator", f"127.0.0.1:{port}", "--process-id", str(i)],
                    env,
                )
                for i in range(2)
            ]
        )
    n_s = a.n_s
    samples = n_s + n_s * 2 * 2  # fiducial + finite-difference records, one split
    ex = two[0]["exchanged"]
    sent = ex["outputs_sent"] + ex["gradients_sent"]
    received = ex["outputs_received"] + ex["gradients_received"]
    result = dict(
        archive=dict(simulator=f"grf {a.size}×{a.size}", n_s=n_s, n_d=n_s, n_params=2, splits=2),
        model="cnn:8,16",
        n_summaries=2,
        weights=one["weights"],
        iterations_timed=a.iterations,
        n_per_device=a.n_per_device,
        cpu_cores=os.cpu_count(),
        one_process_two_devices_s_per_iteration=one["s_per_iteration"],
        two_processes_one_device_s_per_iteration=max(r["s_per_iteration"] for r in two),
        bytes_per_iteration_per_process=dict(
            outputs_sent=ex["outputs_sent"],
            outputs_received=ex["outputs_received"],
            gradients_sent=ex["gradients_sent"],
            gradients_received=ex["gradients_received"],
            total_sent_and_received=sent + received,
            collective_calls=ex["calls"],
        ),
        per_sample_gradients_would_be_bytes=4 * one["weights"] * samples,
        per_sample_outputs_bytes=dict(
            formula="(train + validation) × (n_s + n_d·2·n_params) × n_summaries × 4 B "
            "outputs + 4 B position, half from each process",
            value=2 * samples * (2 * 4 + 4),
        ),
        data_bytes_per_epoch=2 * samples * a.size * a.size * 4,
    )
    print(json.dumps(result, indent=2, ensure_ascii=False))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
