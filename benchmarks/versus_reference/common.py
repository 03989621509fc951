"""What both sides share: the configurations, the data on disk, the benchmark simulators,
the child entry point and the side-independent part of building and timing a class.

Runs on Python 3.9 with the reference's stack: imports nothing of ours, nothing newer.
"""

import json
import os
import resource
import sys
import time

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "imnn_stream")
WORK = os.path.join(CACHE, "versus_reference")

θ_FID = {"toy": (0.0, 1.0), "field": (1.0, 2.0)}
δθ = (0.1, 0.1)
λ, ϵ = 10.0, 0.1
PROBLEMS = {  # problem -> n (= n_s = n_d), input shape
    "toy": (1000, (10,)),
    "field": (500, (32, 32)),
}
NETWORKS = {  # name -> (kind, arguments)
    "mlp": ("mlp", dict(hidden=(128, 128))),
    "cnn": ("cnn", dict(channels=(8, 16), dense=64)),
    "cnn_large": ("cnn", dict(channels=(32, 64), dense=256)),
}
IN_MEMORY = ("NumericalGradientIMNN", "GradientIMNN", "SimulatorIMNN")
AGGREGATED = (
    "AggregatedNumericalGradientIMNN",
    "AggregatedGradientIMNN",
    "AggregatedSimulatorIMNN",
)
DATASET = ("DatasetNumericalGradientIMNN", "DatasetGradientIMNN")
TWO_PASS = AGGREGATED + DATASET  # gradients by two passes over device-sized batches
ALL_CLASSES = IN_MEMORY + TWO_PASS
#: our simulator classes without their validation pass: the reference's simulator
#: classes do not validate, so these rows are the same work on both sides (the
#: reference's measurements are its own SimulatorIMNN's / AggregatedSimulatorIMNN's)
LIKE_FOR_LIKE = ("SimulatorIMNN(validation=False)", "AggregatedSimulatorIMNN(validation=False)")
CONFIGS = {  # name -> (problem, network, classes, n_per_device)
    "toy": ("toy", "mlp", ALL_CLASSES + LIKE_FOR_LIKE, 250),
    "field": ("field", "cnn", ALL_CLASSES + LIKE_FOR_LIKE, 250),
    "large": ("field", "cnn_large", TWO_PASS + LIKE_FOR_LIKE[1:], 50),  # 1.07 M parameters
}


def base_class(cls):
    """A table row's class -> (the class's name, our keyword arguments for the row):
    ``"X(validation=False)"`` -> ``("X", {"validation": False})``."""
    name, _, args = cls.partition("(")
    if not args:
        return cls, {}
    if args != "validation=False)":
        raise ValueError(f"unknown class variant {cls!r}")
    return name, {"validation": False}


# case -> (class, problem, network, n_per_device, n_s, n_d, input shape, note[, in-memory twin])
AGREEMENT_CASES = {
    "toy NumericalGradientIMNN": (
        "NumericalGradientIMNN",
        "toy",
        "mlp",
        250,
        1000,
        1000,
        None,
        "in memory, finite differences",
    ),
    "toy GradientIMNN": (
        "GradientIMNN",
        "toy",
        "mlp",
        250,
        1000,
        1000,
        None,
        "in memory, chain rule",
    ),
    "toy AggregatedNumericalGradientIMNN": (
        "AggregatedNumericalGradientIMNN",
        "toy",
        "mlp",
        250,
        1000,
        1000,
        None,
        "2 devices × 250, two passes",
        "NumericalGradientIMNN",
    ),
    "toy AggregatedGradientIMNN n_s=1000 n_d=500": (
        "AggregatedGradientIMNN",
        "toy",
        "mlp",
        125,
        1000,
        500,
        None,
        "2 devices × 125, n_s > n_d: the reference pairs pass-2 cotangents with the wrong devices' samples",
        "GradientIMNN",
    ),
    "field 32×32 GradientIMNN": (
        "GradientIMNN",
        "field",
        "cnn",
        250,
        500,
        500,
        None,
        "square 2-D input: the reference transposes dsim/dθ's input axes (silently wrong)",
    ),
    "field 32×16 GradientIMNN": (
        "GradientIMNN",
        "field",
        "cnn",
        250,
        500,
        500,
        (32, 16),
        "non-square 2-D input: the reference's transposition fails",
    ),
}


# -- benchmark simulators (copies of our gaussian_toy / gaussian_random_field, which the
#    reference's process may not import; `ours.prepare` checks that they agree) ------------


def toy_simulator(key, θ):
    """10 draws of N(μ, Σ), θ = (μ, Σ)."""
    import jax
    import jax.numpy as jnp

    return (θ[0] + jnp.sqrt(θ[1]) * jax.random.normal(key, (10,))).astype(jnp.float32)


def field_simulator(size=32):
    """2-D Gaussian random field with P(k) = A k^−B, θ = (A, B)."""
    import jax
    import jax.numpy as jnp

    kx = jnp.fft.fftfreq(size) * size
    k = jnp.sqrt(kx[:, None] ** 2 + kx[None, :] ** 2)
    k_safe = jnp.where(k > 0, k, 1.0)

    def simulator(key, θ):
        amplitude = jnp.where(k > 0, jnp.sqrt(θ[0] * k_safe ** (-θ[1])), 0.0)
        noise = jax.random.normal(key, (size, size))
        return jnp.fft.ifft2(jnp.fft.fft2(noise) * amplitude).real.astype(jnp.float32)

    return simulator


def simulator(problem):
    return toy_simulator if problem == "toy" else field_simulator(PROBLEMS[problem][1][0])


# -- data on disk (written once by ours.prepare / reference.prepare) -------------------------


def data_path(name):
    return os.path.join(WORK, name)


def load_problem(problem, validation=False):
    import numpy as np

    pre = f"{problem}_{'val_' if validation else ''}"
    return tuple(np.load(data_path(pre + k + ".npy")) for k in ("fid", "num", "grad"))


def load_weights(network, problem):
    """Initial weights (our layout: list of (W, b)) from the .npz written by `ours.prepare`."""
    import numpy as np

    z = np.load(data_path(f"weights_{network}_{problem}.npz"))
    n = len(z.files) // 2
    return [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)]


def case_data(problem, shape):
    """((f, nu, g), (vf, vn, vg)) for an agreement case; None: the configuration's own data."""
    if shape != (32, 16):
        return None
    (f, nu, g), (vf, vn, vg) = load_problem(problem), load_problem(problem, True)
    return (
        (f[:, :, :16], nu[..., :16], g[:, :, :16]),
        (vf[:, :, :16], vn[..., :16], vg[:, :, :16]),
    )


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def error_line(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def tree_rel(a, b):
    import jax
    import numpy as np

    la = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    lb = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(b)])
    return float(np.max(np.abs(la - lb)) / max(np.max(np.abs(lb)), 1e-30))


# -- one side, whichever it is -----------------------------------------------------------------


class Side:
    """Building, timing and checking one class; `ours.Ours` and `reference.Reference` fill in
    the module, the model, the weight layout, the dataset classes and the loss gradient."""

    module = None  # imnn_stream or imnn

    def model(self, network):
        raise NotImplementedError

    def weights(self, network, w):
        """Our weight layout -> this side's."""
        return w

    def dataset(self, Class, cls, problem, npd, common, agg):
        raise NotImplementedError

    def loss_and_gradient(self, imnn, w):
        """(loss, F, gradient in our layout) at this side's weights w."""
        raise NotImplementedError

    def build(self, cls, problem, network, npd, w, n_s=None, n_d=None, data=None, shape=None):
        import jax
        import numpy as np
        from jax.example_libraries import optimizers

        n, input_shape = PROBLEMS[problem]
        n_s, n_d = n_s or n, n_d or n
        opt = optimizers.adam(1e-3)
        state = opt[0](self.weights(network, jax.tree_util.tree_map(np.asarray, w)))
        cpu = jax.devices("cpu")
        agg = dict(host=cpu[0], devices=cpu[:2], n_per_device=npd)
        common = dict(
            n_s=n_s,
            n_d=n_d,
            n_params=2,
            n_summaries=2,
            input_shape=shape or input_shape,
            θ_fid=np.asarray(θ_FID[problem], np.float32),
            model=self.model(network),
            optimiser=opt,
            key_or_state=state,
        )
        cls, variant = base_class(cls)
        Class = getattr(self.module, cls)
        if cls.startswith("Dataset"):
            return self.dataset(Class, cls, problem, npd, common, agg)
        if "Simulator" in cls:
            kw = dict(simulator=simulator(problem))
        else:
            (f, nu, g), (vf, vn, vg) = data or (load_problem(problem), load_problem(problem, True))
            kw = dict(fiducial=f[:n_s], validation_fiducial=vf[:n_s])
            if "Numerical" in cls:
                kw.update(
                    derivative=nu[:n_d],
                    validation_derivative=vn[:n_d],
                    δθ=np.asarray(δθ, np.float32),
                )
            else:
                kw.update(derivative=g[:n_d], validation_derivative=vg[:n_d])
        if cls.startswith("Aggregated"):
            kw.update(agg)
        return Class(**common, **kw, **variant)

    def bench(self, task):
        """fit 1 iteration (compiles), fit 1 again (a repeated fit call, timed on its own),
        fit N; see run.py for what is derived from the three times."""
        import jax

        w = load_weights(task["network"], task["problem"])
        imnn = self.build(task["cls"], task["problem"], task["network"], task["n_per_device"], w)
        kw = dict(patience=1000, min_iterations=1000, print_rate=None)
        keys = iter(jax.random.split(jax.random.PRNGKey(1), 3))

        def fit(n):
            if "Simulator" in task["cls"]:
                kw["rng"] = next(keys)
            t0 = time.perf_counter()
            imnn.fit(λ, ϵ, max_iterations=n, **kw)
            return time.perf_counter() - t0

        n_it = task["iterations"]
        t1, t2, t3 = fit(1), fit(1), fit(n_it)
        val = imnn.history.get("val_detF")  # the reference's simulator classes do not validate
        return dict(
            first_fit_s=t1,
            refit_s=t2,
            n_fit_s=t3,
            s_per_it=(t3 - t2) / max(n_it - 1, 1),
            peak_rss_mib=peak_rss_mib(),
            detF=float(imnn.history["detF"][-1]),
            val_detF=float(val[-1]) if val is not None and len(val) else None,
        )

    def agree(self, task):
        """Loss, F and gradient at identical weights and data, for each AGREEMENT_CASES case."""
        import numpy as np

        cases = {}
        for case, spec in AGREEMENT_CASES.items():
            cls, problem, network, npd, n_s, n_d, shape = spec[:7]
            entry = {"note": spec[7]}
            try:
                w = load_weights(network, "field_wide" if shape == (32, 16) else problem)
                data = case_data(problem, shape)
                imnn = self.build(cls, problem, network, npd, w, n_s, n_d, data, shape)
                loss, F, grad = self.loss_and_gradient(imnn, self.weights(network, w))
                F = np.asarray(F, float)
                entry.update(
                    loss=float(loss),
                    F=F.tolist(),
                    detF=float(np.linalg.det(F)),
                    grad=[np.asarray(a).ravel().tolist() for a in grad_leaves(grad)],
                )
                if len(spec) > 8:  # the same problem in memory, for the two-pass gradient check
                    twin = self.build(spec[8], problem, network, npd, w, n_s, n_d, data, shape)
                    entry["grad_vs_in_memory_rel"] = tree_rel(
                        grad, self.loss_and_gradient(twin, self.weights(network, w))[2]
                    )
            except Exception as e:
                entry["error"] = error_line(e)
            cases[case] = entry
        return {"cases": cases}


def grad_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def child_main(make_side):
    """The one child entry point of both sides: ``--task JSON``; run ``make_side().<task>``;
    the result as JSON on the last stdout line (or ``{"error": ...}`` and exit status 1)."""
    import warnings

    warnings.filterwarnings("ignore")
    task = json.loads(sys.argv[sys.argv.index("--task") + 1])
    try:
        out = getattr(make_side(), task["task"])(task)
    except Exception as e:  # one line for the parent's table; the traceback on stderr
        import traceback

        traceback.print_exc()
        print(json.dumps({"error": error_line(e)}))
        sys.exit(1)
    sys.stdout.flush()
    print(json.dumps(out, default=float))
