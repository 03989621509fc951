"""Accelerator check: the two-pass strategies with a CPU host and a GPU device.

Run on a machine with a GPU (jax with CUDA). Checks that the aggregated and
streaming trainers give the in-memory gradient when batches go to the GPU and
the loss is computed on the CPU host, and times seconds per iteration of the
in-memory, aggregated and streaming trainers on the toy problem and the 32×32
field. Prints JSON.
"""

import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import imnn_stream as im  # noqa: E402
from beam_jobs.simulators import gaussian_random_field, gaussian_toy  # noqa: E402
from writers.archive import write_arrays  # noqa: E402


def data(sim, θ, δθ, n, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    f = jax.vmap(lambda k: sim(k, θ))(keys)
    d = jnp.stack(
        [
            jax.vmap(lambda k: jax.vmap(lambda p: sim(k, p))(θ + s * jnp.diag(δθ) / 2))(keys)
            for s in (-1, 1)
        ],
        1,
    )
    g = jax.vmap(lambda k: jax.jacfwd(sim, argnums=1)(k, θ))(keys)
    return [np.asarray(a) for a in (f, d, g)]


def rel(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = sum(
        float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
        for x, y in zip(la, lb)
    )
    return (num / sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in lb)) ** 0.5


def main():
    host = jax.devices("cpu")[0]
    gpus = [d for d in jax.devices() if d.platform != "cpu"]
    out = dict(devices=[str(d) for d in jax.devices()], jax=jax.__version__, problems={})
    if not gpus:
        print(json.dumps(dict(out, error="no accelerator")))
        return
    problems = {
        "toy": (
            gaussian_toy,
            np.array([0.0, 1.0], np.float32),
            1000,
            100,
            lambda: im.models.mlp((128, 128), 2),
        ),
        "field32": (
            gaussian_random_field(32),
            np.array([1.0, 2.0], np.float32),
            500,
            50,
            lambda: im.models.cnn((8, 16), 64, 2),
        ),
    }
    δθ = np.array([0.1, 0.1], np.float32)
    for name, (sim, θ, n, npd, model) in problems.items():
        (f, d, _), (vf, vd, _) = data(sim, θ, δθ, n, 0), data(sim, θ, δθ, n, 1)
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
            n_devices=1,
            records_per_shard=n // 2,
        )

        def kw(f=f, θ=θ, n=n, model=model):
            return dict(
                n_s=n,
                n_d=n,
                n_params=2,
                n_summaries=2,
                input_shape=f.shape[1:],
                θ_fid=θ,
                model=model(),
                optimiser=optax.adam(1e-3),
                key_or_state=jax.random.PRNGKey(0),
            )

        agg = dict(host=host, devices=gpus[:1], n_per_device=npd)
        num = dict(
            fiducial=f, derivative=d, δθ=δθ, validation_fiducial=vf, validation_derivative=vd
        )
        trainers = {
            "in_memory": im.NumericalGradientIMNN(**kw(), **num),
            "aggregated": im.AggregatedNumericalGradientIMNN(**kw(), **num, **agg),
            "streaming": im.DatasetNumericalGradientIMNN.from_archive(
                os.path.join(tmp, "num"),
                model=model(),
                optimiser=optax.adam(1e-3),
                key_or_state=jax.random.PRNGKey(0),
                **agg,
            ),
        }
        ref = trainers["in_memory"].loss_gradient(10.0, 0.1)[0]
        res = {}
        for k, t in trainers.items():
            r = dict(gradient_rel_diff=rel(t.loss_gradient(10.0, 0.1)[0], ref))
            t0 = time.perf_counter()
            t.fit(10.0, 0.1, min_iterations=2, patience=2, max_iterations=2)
            r["first_fit_2_iterations_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            t.fit(10.0, 0.1, min_iterations=20, patience=20, max_iterations=20)
            jax.block_until_ready(t.w)
            r["seconds_per_iteration"] = (time.perf_counter() - t0) / 20
            r["val_detF"] = float(t.history["val_detF"][-1])
            res[k] = r
            if hasattr(t, "close"):
                t.close()
        out["problems"][name] = res
        print(name, json.dumps(res), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
