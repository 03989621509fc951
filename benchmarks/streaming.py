"""Streaming trainers against the in-memory and aggregated ones on the same data,
peak memory against archive size, and the time spent waiting for input. Prints JSON.

    python benchmarks/streaming.py speed  [--problem toy|field] [--iterations 20]
    python benchmarks/streaming.py toy-numerical      # speed, toy problem, numerical only
    python benchmarks/streaming.py memory [--scales 1,4,16]
    python benchmarks/streaming.py growth             # host bytes per record that grow with n_s
    python benchmarks/streaming.py all

speed: seconds per iteration (after compilation, page-cached archive; the median of
``--rounds`` blocks of ``--iterations``, interleaved over the trainers) of the
in-memory, aggregated and streaming trainers, numerical and gradient modes, and
the fraction of streaming iterations spent blocked on the readers; streaming
three times: every pass read from the archive (``cache=0``) with the default
``decode="auto"`` (small records decoded in a reader process), the same with
reader threads (``streaming_threads``, ``decode="thread"``), and with the
decoded-epoch cache (``cache=True``: the first epoch is read, the next ones
replayed from memory).
  toy:   10-draw Gaussian, n_s = n_d = 1000, MLP 128-128, 2 devices × 100
  field: 32×32 Gaussian random field, θ = (A, B) = (1, 2), n_s = n_d = 500,
         small CNN, 2 devices × 50
memory: peak resident memory (ru_maxrss of a fresh process) of a streaming fit
on field archives of 1×, 4× and 16× the size (n_s = n_d = 250·scale), same
network and batch size.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def setup(devices):
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={devices}")


def problem_data(problem, n, seed):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from beam_jobs.simulators import gaussian_random_field, gaussian_toy

    if problem == "toy":
        sim, θ, δθ = (
            gaussian_toy,
            np.array([0.0, 1.0], np.float32),
            np.array([0.1, 0.1], np.float32),
        )
    else:
        sim, θ, δθ = (
            gaussian_random_field(32),
            np.array([1.0, 2.0], np.float32),
            np.array([0.1, 0.1], np.float32),
        )
    out_f, out_d, out_g = [], [], []
    for start in range(0, n, 1000):  # in chunks: bounded memory while generating
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
            jnp.arange(start, min(n, start + 1000))
        )
        out_f.append(np.asarray(jax.vmap(lambda k: sim(k, θ))(keys)))
        out_d.append(
            np.asarray(
                jnp.stack(
                    [
                        jax.vmap(lambda k: jax.vmap(lambda p: sim(k, p))(θ + s * jnp.diag(δθ) / 2))(
                            keys
                        )
                        for s in (-1, 1)
                    ],
                    1,
                )
            )
        )
        out_g.append(np.asarray(jax.vmap(lambda k: jax.jacfwd(sim, argnums=1)(k, θ))(keys)))
    return θ, δθ, np.concatenate(out_f), np.concatenate(out_d), np.concatenate(out_g)


def model_for(problem):
    import imnn_stream as im

    return im.models.mlp((128, 128), 2) if problem == "toy" else im.models.cnn((8, 16), 64, 2)


def speed(problem, iterations, modes=("numerical", "gradient"), n_devices=2, rounds=3, scale=1):
    import jax
    import numpy as np
    import optax
    import imnn_stream as im
    from writers.archive import write_arrays

    n, npd = (1000, 100) if problem == "toy" else (500, 50)
    # --n-scale: n_s = n_d and the device batch ``scale`` times larger (the same number
    # of batches an iteration): per-iteration fixed costs against per-record ones
    n, npd = n * scale, npd * scale
    npd = npd * 2 // n_devices  # the same samples per device call over both devices
    θ, δθ, f, d, g = problem_data(problem, n, 0)
    _, _, vf, vd, vg = problem_data(problem, n, 1)
    shape = f.shape[1:]
    devices = jax.devices("cpu")[:n_devices]
    agg = dict(host=devices[0], devices=devices, n_per_device=npd)
    tmp = tempfile.mkdtemp()
    write_arrays(
        os.path.join(tmp, "num"),
        "numerical",
        θ,
        δθ,
        fiducial=f,
        derivative=d,
        validation_fiducial=vf,
        validation_derivative=vd,
        n_devices=2,
        records_per_shard=n // 4,
    )
    write_arrays(
        os.path.join(tmp, "grad"),
        "gradient",
        θ,
        fiducial=f,
        gradient=g,
        validation_fiducial=vf,
        validation_gradient=vg,
        n_devices=2,
        records_per_shard=n // 4,
    )

    def kw():
        return dict(
            n_s=n,
            n_d=n,
            n_params=2,
            n_summaries=2,
            input_shape=shape,
            θ_fid=θ,
            model=model_for(problem),
            optimiser=optax.adam(1e-3),
            key_or_state=jax.random.PRNGKey(0),
        )

    def archive(cls, name, cache, decode="auto"):
        return cls.from_archive(
            os.path.join(tmp, name),
            model=model_for(problem),
            optimiser=optax.adam(1e-3),
            key_or_state=jax.random.PRNGKey(0),
            cache=cache,
            decode=decode,
            **agg,
        )

    num = dict(fiducial=f, derivative=d, δθ=δθ, validation_fiducial=vf, validation_derivative=vd)
    grad = dict(fiducial=f, derivative=g, validation_fiducial=vf, validation_derivative=vg)
    makers = {
        "numerical": {
            "in_memory": lambda: im.NumericalGradientIMNN(**kw(), **num),
            "aggregated": lambda: im.AggregatedNumericalGradientIMNN(**kw(), **num, **agg),
            "streaming": lambda: archive(im.DatasetNumericalGradientIMNN, "num", 0),
            "streaming_threads": lambda: archive(
                im.DatasetNumericalGradientIMNN, "num", 0, "thread"
            ),
            "streaming_cached": lambda: archive(im.DatasetNumericalGradientIMNN, "num", True),
        },
        "gradient": {
            "in_memory": lambda: im.GradientIMNN(**kw(), **grad),
            "aggregated": lambda: im.AggregatedGradientIMNN(**kw(), **grad, **agg),
            "streaming": lambda: archive(im.DatasetGradientIMNN, "grad", 0),
            "streaming_threads": lambda: archive(im.DatasetGradientIMNN, "grad", 0, "thread"),
            "streaming_cached": lambda: archive(im.DatasetGradientIMNN, "grad", True),
        },
    }
    out = {}
    for mode, classes in makers.items():
        if mode not in modes:
            continue
        trainers = {strategy: make() for strategy, make in classes.items()}
        for imnn in trainers.values():  # compile, fill the cache
            imnn.fit(10.0, 0.1, min_iterations=2, patience=2, max_iterations=2)
        # the streaming trainers' time blocked on their readers, from here on
        waited = {
            strategy: imnn.input_wait_seconds
            for strategy, imnn in trainers.items()
            if hasattr(imnn, "input_wait_seconds")
        }
        times = {strategy: [] for strategy in trainers}
        # rounds interleaved over the trainers, the median reported: a shared 2-core
        # machine drifts by ±15 % between back-to-back blocks (measured, issue 10)
        for _ in range(rounds):
            for strategy, imnn in trainers.items():
                t0 = time.perf_counter()
                imnn.fit(
                    10.0,
                    0.1,
                    min_iterations=iterations,
                    patience=iterations,
                    max_iterations=iterations,
                )
                jax.block_until_ready(imnn.w)
                times[strategy].append((time.perf_counter() - t0) / iterations)
        res = {}
        for strategy, imnn in trainers.items():
            seconds = float(np.median(times[strategy]))
            res[strategy] = dict(seconds_per_iteration=seconds, rounds=times[strategy])
            if strategy in waited:
                wait = (imnn.input_wait_seconds - waited[strategy]) / (iterations * rounds)
                res[strategy]["input_wait_fraction"] = wait / seconds
            if hasattr(imnn, "close"):
                imnn.close()
        res["streaming_over_in_memory"] = (
            res["streaming"]["seconds_per_iteration"] / res["in_memory"]["seconds_per_iteration"]
        )
        res["streaming_over_aggregated"] = (
            res["streaming"]["seconds_per_iteration"] / res["aggregated"]["seconds_per_iteration"]
        )
        res["streaming_threads_over_in_memory"] = (
            res["streaming_threads"]["seconds_per_iteration"]
            / res["in_memory"]["seconds_per_iteration"]
        )
        res["streaming_cached_over_in_memory"] = (
            res["streaming_cached"]["seconds_per_iteration"]
            / res["in_memory"]["seconds_per_iteration"]
        )
        out[mode] = res
        print(problem, mode, json.dumps(res), file=sys.stderr, flush=True)
    return dict(
        problem=problem,
        n_s=n,
        n_d=n,
        n_per_device=npd,
        devices=n_devices,
        iterations=iterations,
        rounds=rounds,
        results=out,
    )


def memory_child(path, iterations):
    """Run in a fresh process: a streaming fit, then report peak RSS."""
    import jax
    import optax
    import imnn_stream as im

    devices = jax.devices("cpu")[:2]
    imnn = im.DatasetNumericalGradientIMNN.from_archive(
        path,
        model=model_for("field"),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
        host=devices[0],
        devices=devices,
        n_per_device=50,
        cache=0,  # streaming memory: every pass read (the cache would grow with the archive)
    )
    t0 = time.perf_counter()
    imnn.fit(10.0, 0.1, min_iterations=iterations, patience=iterations, max_iterations=iterations)
    imnn.close()
    return dict(
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        seconds_per_iteration=(time.perf_counter() - t0) / iterations,
    )


def growth(sizes):
    """What grows with n_s in a streaming (cache off) numerical fit, measured with
    tracemalloc (host allocations: NumPy arrays and Python objects) on the toy problem:
    bytes held between iterations (the order check's record of the first pass) and
    the peak within one ``loss_gradient`` call (pass-1 outputs, positions,
    cotangents), per record read (n_s fiducial + 2·n_params·n_d derivative)."""
    import tracemalloc

    import jax
    import optax
    import imnn_stream as im
    from writers.archive import write_arrays

    devices = jax.devices("cpu")[:2]
    tmp = tempfile.mkdtemp()
    rows = {}
    for n in sizes:
        θ, δθ, f, d, _ = problem_data("toy", n, 0)
        path = os.path.join(tmp, f"n{n}")
        write_arrays(path, "numerical", θ, δθ, fiducial=f, derivative=d, n_devices=2)
        imnn = im.DatasetNumericalGradientIMNN.from_archive(
            path,
            model=model_for("toy"),
            optimiser=optax.adam(1e-3),
            key_or_state=jax.random.PRNGKey(0),
            host=devices[0],
            devices=devices,
            n_per_device=100,
            cache=0,
        )
        imnn.loss_gradient(10.0, 0.1)  # compile
        imnn._strategy.engine.forget("train")
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        imnn.loss_gradient(10.0, 0.1)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        imnn.close()
        records = n + 2 * 2 * n
        rows[n] = dict(records=records, held_bytes=held - base, peak_bytes=peak - base)
    a, b = rows[min(rows)], rows[max(rows)]
    dr = b["records"] - a["records"]
    return dict(
        problem="toy (10 floats per record), numerical, n_summaries = n_params = 2",
        sizes=rows,
        held_bytes_per_record=(b["held_bytes"] - a["held_bytes"]) / dr,
        peak_bytes_per_record=(b["peak_bytes"] - a["peak_bytes"]) / dr,
    )


def memory(scales, iterations):
    from writers.archive import write_arrays

    tmp = tempfile.mkdtemp()
    out = {}
    for scale in scales:
        n = 250 * scale
        θ, δθ, f, d, _ = problem_data("field", n, 0)
        path = os.path.join(tmp, f"x{scale}")
        write_arrays(
            path, "numerical", θ, δθ, fiducial=f, derivative=d, n_devices=2, records_per_shard=250
        )
        archive_mib = (f.nbytes + d.nbytes) / 2**20
        del f, d
        r = subprocess.run(
            [sys.executable, __file__, "_memory_child", path, str(iterations)],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res.update(scale=scale, n_s=n, archive_mib=archive_mib)
        out[f"x{scale}"] = res
        print("memory", json.dumps(res), file=sys.stderr, flush=True)
    peaks = [v["peak_rss_mib"] for v in out.values()]
    return dict(results=out, peak_rss_spread=(max(peaks) - min(peaks)) / min(peaks))


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "what", choices=["speed", "toy-numerical", "memory", "growth", "all", "_memory_child"]
    )
    p.add_argument("rest", nargs="*")
    p.add_argument("--problem", default="both")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument(
        "--rounds", type=int, default=3, help="timed blocks per trainer (speed): the median"
    )
    p.add_argument("--scales", default="1,4,16")
    p.add_argument(
        "--n-scale",
        type=int,
        default=1,
        help="speed: n_s = n_d and the device batch this many times the problem's",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=2,
        help="XLA CPU devices of the two-pass trainers (speed; 1: what a CPU user gets)",
    )
    a = p.parse_args()
    setup(2)
    if a.what == "_memory_child":
        print(json.dumps(memory_child(a.rest[0], int(a.rest[1]))))
        return
    result = {}
    if a.what == "toy-numerical":
        result["speed"] = [
            speed("toy", a.iterations, ("numerical",), a.devices, a.rounds, a.n_scale)
        ]
    if a.what in ("speed", "all"):
        problems = ["toy", "field"] if a.problem == "both" else [a.problem]
        result["speed"] = [
            speed(pr, a.iterations, n_devices=a.devices, rounds=a.rounds, scale=a.n_scale)
            for pr in problems
        ]
    if a.what == "growth":
        result["growth"] = growth([2000, 8000])
    if a.what in ("memory", "all"):
        result["memory"] = memory([int(s) for s in a.scales.split(",")], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
