"""The reference side of benchmarks/information.py: imnn 0.3.2's in-memory
NumericalGradientIMNN on the same arrays, network and iteration budget.

Runs in the reference's venv (Python 3.9; see ../shared/reference/README.md):

    REFVENV/bin/python -m benchmarks.information_reference TASK.json

TASK.json: {"npz": path with fiducial, derivative, validation_fiducial,
validation_derivative; "theta_fid", "delta_theta", "network" ("mlp" or "cnn"),
"max_iterations", "patience", "min_iterations", "lr", "seed"}. Prints one JSON line:
best validation det F, iterations, seconds. Imports nothing of ours but the
benchmark package's reference shim (Python 3.9 compatible).
"""

import json
import sys
import time

from .versus_reference.reference import Reference


def main(path):
    task = json.load(open(path))
    side = Reference()  # installs the shim that makes imnn 0.3.2 import on its stack
    import jax
    import numpy as np
    from jax.example_libraries import optimizers

    init, apply = side.model(task["network"])

    def init_one(rng, input_shape):  # its CNN's init gives the batched shape (-1, 2)
        shape, w = init(rng, input_shape)
        return tuple(shape)[-1:], w

    data = np.load(task["npz"])
    f, d = data["fiducial"], data["derivative"]
    imnn = side.module.NumericalGradientIMNN(
        n_s=len(f),
        n_d=len(d),
        n_params=len(task["theta_fid"]),
        n_summaries=len(task["theta_fid"]),
        input_shape=tuple(f.shape[1:]),
        θ_fid=np.asarray(task["theta_fid"], np.float32),
        model=(init_one, apply),
        optimiser=optimizers.adam(step_size=task["lr"]),
        key_or_state=jax.random.PRNGKey(task["seed"]),
        fiducial=f,
        derivative=d,
        δθ=np.asarray(task["delta_theta"], np.float32),
        validation_fiducial=data["validation_fiducial"],
        validation_derivative=data["validation_derivative"],
    )
    t0 = time.perf_counter()
    imnn.fit(
        10.0,
        0.1,
        rng=None,
        patience=task["patience"],
        min_iterations=task["min_iterations"],
        max_iterations=task["max_iterations"],
        print_rate=None,
    )
    val = np.asarray(imnn.history["val_detF"], float)
    print(
        json.dumps(
            dict(
                best_val_detF=float(np.nanmax(val)) if len(val) else None,
                iterations=int(len(val)),
                seconds=round(time.perf_counter() - t0, 1),
            )
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
