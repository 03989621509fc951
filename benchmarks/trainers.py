"""Seconds per fit iteration, compilation time and the cost of a second `fit` call
for every trainer class on the toy problem. Prints JSON.

    python benchmarks/trainers.py [--n-s 1000] [--iterations 50] [--devices 2] [--n-per-device 100]

Configuration as the reference numbers quoted in the core issue: MLP 10→128→128→2,
adam(1e-3), λ = 10, ϵ = 0.1, n_s = n_d = 1000 with a validation set of the same
size, 2 CPU devices, 100 samples per device per batch.
"""

import argparse
import json
import os
import sys
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("--n-s", type=int, default=1000)
parser.add_argument("--iterations", type=int, default=50)
parser.add_argument("--devices", type=int, default=2)
parser.add_argument("--n-per-device", type=int, default=100)
parser.add_argument("--classes", default="all")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(args.devices, 2)}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import imnn_stream as im  # noqa: E402
from beam_jobs.simulators import gaussian_toy  # noqa: E402
from writers.archive import write_arrays  # noqa: E402

θ = np.array([0.0, 1.0], np.float32)
δθ = np.array([0.1, 0.1], np.float32)
n = args.n_s


def data(seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    fid = jax.vmap(lambda k: gaussian_toy(k, θ))(keys)
    pm = [
        jax.vmap(lambda k: jax.vmap(lambda p: gaussian_toy(k, p))(θ + s * jnp.diag(δθ) / 2))(keys)
        for s in (-1, 1)
    ]
    grad = jax.vmap(lambda k: jax.jacfwd(gaussian_toy, argnums=1)(k, θ))(keys)
    return np.asarray(fid), np.asarray(jnp.stack(pm, 1)), np.asarray(grad)


(f, d, g), (vf, vd, vg) = data(0), data(1)
host, devices = jax.devices("cpu")[0], jax.devices("cpu")[: args.devices]
agg = dict(host=host, devices=devices, n_per_device=args.n_per_device)
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
    n_devices=args.devices,
    records_per_shard=n // args.devices,
)
write_arrays(
    os.path.join(tmp, "grad"),
    "gradient",
    θ,
    fiducial=f,
    gradient=g,
    validation_fiducial=vf,
    validation_gradient=vg,
    n_devices=args.devices,
    records_per_shard=n // args.devices,
)


def common():
    return dict(
        n_s=n,
        n_d=n,
        n_params=2,
        n_summaries=2,
        input_shape=(10,),
        θ_fid=θ,
        model=im.models.mlp((128, 128), 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
    )


def archive(cls, path):
    return cls.from_archive(
        path,
        model=im.models.mlp((128, 128), 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
        **agg,
    )


MAKERS = {
    "SimulatorIMNN": lambda: im.SimulatorIMNN(**common(), simulator=gaussian_toy),
    "GradientIMNN": lambda: im.GradientIMNN(
        **common(), fiducial=f, derivative=g, validation_fiducial=vf, validation_derivative=vg
    ),
    "NumericalGradientIMNN": lambda: im.NumericalGradientIMNN(
        **common(),
        fiducial=f,
        derivative=d,
        δθ=δθ,
        validation_fiducial=vf,
        validation_derivative=vd,
    ),
    "AggregatedSimulatorIMNN": lambda: im.AggregatedSimulatorIMNN(
        **common(), simulator=gaussian_toy, **agg
    ),
    "AggregatedGradientIMNN": lambda: im.AggregatedGradientIMNN(
        **common(),
        fiducial=f,
        derivative=g,
        validation_fiducial=vf,
        validation_derivative=vg,
        **agg,
    ),
    "AggregatedNumericalGradientIMNN": lambda: im.AggregatedNumericalGradientIMNN(
        **common(),
        fiducial=f,
        derivative=d,
        δθ=δθ,
        validation_fiducial=vf,
        validation_derivative=vd,
        **agg,
    ),
    "DatasetNumericalGradientIMNN": lambda: archive(
        im.DatasetNumericalGradientIMNN, os.path.join(tmp, "num")
    ),
    "DatasetGradientIMNN": lambda: archive(im.DatasetGradientIMNN, os.path.join(tmp, "grad")),
}


def timed_fit(imnn, iterations):
    t0 = time.perf_counter()
    imnn.fit(
        10.0,
        0.1,
        rng=jax.random.PRNGKey(1),
        min_iterations=iterations,
        patience=iterations,
        max_iterations=iterations,
    )
    jax.block_until_ready(imnn.w)
    return time.perf_counter() - t0


results = {}
names = list(MAKERS) if args.classes == "all" else args.classes.split(",")
for name in names:
    imnn = MAKERS[name]()
    first = timed_fit(imnn, 1)  # compiles everything, one iteration
    steady = timed_fit(imnn, args.iterations) / args.iterations
    second = timed_fit(imnn, 1)  # a further fit call: should compile nothing
    results[name] = dict(
        seconds_per_iteration=steady,
        compile_seconds=max(first - steady, 0.0),
        second_fit_call_seconds=second,
        second_fit_call_overhead_seconds=max(second - steady, 0.0),
    )
    if hasattr(imnn, "close"):
        imnn.close()
    print(name, json.dumps(results[name]), file=sys.stderr, flush=True)

print(
    json.dumps(
        dict(
            config=dict(
                n_s=n,
                n_d=n,
                devices=args.devices,
                n_per_device=args.n_per_device,
                iterations=args.iterations,
                model="mlp 10-128-128-2",
                validation=True,
            ),
            results=results,
        ),
        indent=2,
    )
)
