"""The reference side, a child process in the reference's venv (Python 3.9, imnn 0.3.2):
``REFVENV/bin/python -m benchmarks.versus_reference.reference --task JSON``.

Stays Python 3.9 compatible and imports nothing of ours: only ``common`` of this package.
"""

import glob
import os
import sys

from .common import NETWORKS, PROBLEMS, Side, child_main, data_path, load_problem, δθ, λ, ϵ


def install_jac_shim():
    """Make imnn 0.3.2 importable on its pinned stack (jax 0.4.13).

    `imnn.utils.jac` (0.3.2) imports private helpers that jax 0.4.13 no longer has
    (``jax._src.api._check_callable`` …), so ``import imnn`` fails on the pinned stack.
    Register, before importing imnn, a module with the same four functions and the same
    semantics (one forward pass, vmapped pullbacks / pushforwards) built on public jax."""
    import types
    import jax

    def value_and_jacrev(fun, argnums=0, has_aux=False, holomorphic=False, allow_int=False):
        def f(*args, **kwargs):
            def g(*a):
                out = fun(*a, **kwargs)
                return (out[0], out) if has_aux else (out, out)

            jac, val = jax.jacrev(
                g, argnums, has_aux=True, holomorphic=holomorphic, allow_int=allow_int
            )(*args)
            return val, jac

        return f

    def jacrev(fun, argnums=0, has_aux=False, holomorphic=False, allow_int=False):
        return jax.jacrev(
            fun, argnums, has_aux=has_aux, holomorphic=holomorphic, allow_int=allow_int
        )

    def value_and_jacfwd(fun, argnums=0, holomorphic=False):
        def f(*args, **kwargs):
            def g(*a):
                out = fun(*a, **kwargs)
                return out, out

            jac, val = jax.jacfwd(g, argnums, has_aux=True, holomorphic=holomorphic)(*args)
            return val, jac

        return f

    def jacfwd(fun, argnums=0, holomorphic=False):
        return jax.jacfwd(fun, argnums, holomorphic=holomorphic)

    shim = types.ModuleType("imnn.utils.jac")
    shim.value_and_jacrev, shim.jacrev = value_and_jacrev, jacrev
    shim.value_and_jacfwd, shim.jacfwd = value_and_jacfwd, jacfwd
    sys.modules["imnn.utils.jac"] = shim
    # its argument checks test isinstance(x, jax.interpreters.xla.device_array), a type
    # jax 0.4.13 no longer has: give it the current array type
    import jax.interpreters.xla

    if not hasattr(jax.interpreters.xla, "device_array"):
        jax.interpreters.xla.device_array = jax.Array
    # …and it reads jax.experimental.optimizers (moved to jax.example_libraries in 0.2.25)
    import jax.experimental
    from jax.example_libraries import optimizers, stax

    for name, mod in (("optimizers", optimizers), ("stax", stax)):
        if not hasattr(jax.experimental, name):
            setattr(jax.experimental, name, mod)
            sys.modules["jax.experimental." + name] = mod
    # …and jax.ops.index_update / jax.ops.index (removed in jax 0.3.2): the `.at[]` forms
    import jax.ops
    import numpy

    if not hasattr(jax.ops, "index_update"):
        jax.ops.index = numpy.index_exp
        jax.ops.index_update = lambda x, idx, y: jax.numpy.asarray(x).at[idx].set(y)


class Reference(Side):
    """The reference venv (Python 3.9, imnn 0.3.2)."""

    def __init__(self):
        install_jac_shim()
        import imnn

        self.module = imnn

    def model(self, network):
        """The same architecture as imnn_stream.models, with jax.example_libraries.stax."""
        from jax.example_libraries import stax

        kind, kw = NETWORKS[network]
        if kind == "mlp":
            layers = []
            for h in kw["hidden"]:
                layers += [stax.Dense(h), stax.LeakyRelu]
            return stax.serial(*(layers + [stax.Dense(2)]))  # 1-D inputs: no Flatten needed
        layers = []
        for c in kw["channels"]:
            layers += [stax.Conv(c, (3, 3), (2, 2), "SAME"), stax.LeakyRelu]
        init_inner, apply_inner = stax.serial(
            *layers, stax.Flatten, stax.Dense(kw["dense"]), stax.LeakyRelu, stax.Dense(2)
        )

        def init(rng, input_shape):  # one-channel field float(H, W) (or a batch of them)
            return init_inner(rng, (-1,) + tuple(input_shape) + (1,))

        def apply(w, x, **kw_):
            single = x.ndim == 2
            h = (x[None] if single else x)[..., None]
            out = apply_inner(w, h, **kw_)
            return out[0] if single else out

        return init, apply

    def weights(self, network, w):
        """Our layout (list of (W, b)) -> the stax.serial parameter list of `model`."""
        kind, kw = NETWORKS[network]
        if kind == "mlp":
            return [x for (W, b) in w[:-1] for x in ((W, b), ())] + [tuple(w[-1])]
        n_conv = len(kw["channels"])
        out = []
        for W, b in w[:n_conv]:
            out += [(W, b.reshape(1, 1, 1, -1)), ()]
        out += [(), tuple(w[n_conv]), (), tuple(w[n_conv + 1])]
        return out

    @staticmethod
    def ours_layout(tree):
        """stax parameter list -> our layout (for comparing gradients)."""
        import numpy as np

        return [
            (np.asarray(W), np.asarray(b).reshape(-1))
            for layer in tree
            if len(layer)
            for (W, b) in [layer]
        ]

    @staticmethod
    def writer_dir(problem):
        return data_path(f"ref_tfrecords_{problem}")

    def prepare(self, task):
        """Write the TFRecords with the reference's own writer (imnn.TFRecords), once."""
        from imnn import TFRecords

        done = []
        for problem in PROBLEMS:
            d = self.writer_dir(problem)
            if os.path.exists(os.path.join(d, "done")):
                continue
            os.makedirs(d, exist_ok=True)
            for val in (False, True):
                f, nu, g = load_problem(problem, val)
                pre = "validation_" if val else ""
                writer = TFRecords(record_size=150.0)
                devnull = open(os.devnull, "w")
                stdout, sys.stdout = sys.stdout, devnull  # the writer prints a line per record
                try:
                    writer.write_record(
                        n_sims=len(f),
                        get_simulation=lambda seed: f[seed],
                        fiducial=True,
                        directory=d,
                        filename=pre + "fiducial",
                    )
                    writer.write_record(
                        n_sims=len(nu),
                        get_simulation=lambda s, dd, p: nu[s, dd, p],
                        fiducial=False,
                        n_params=2,
                        directory=d,
                        filename=pre + "derivative",
                    )
                    # dsim/dθ records, one per seed, read with writer.derivative_parser
                    writer.write_record(
                        n_sims=len(g),
                        get_simulation=lambda seed: g[seed],
                        fiducial=True,
                        directory=d,
                        filename=pre + "dsimdθ",
                    )
                finally:
                    sys.stdout = stdout
                    devnull.close()
            open(os.path.join(d, "done"), "w").write("ok\n")
            done.append(problem)
        return {"written": done}

    def datasets(self, cls, problem, npd, n_devices=2, n_params=2):
        """Per-device numpy iterators exactly as the reference's documentation builds them."""
        import tensorflow as tf
        from imnn import TFRecords

        n = PROBLEMS[problem][0]
        writer = TFRecords()
        writer.input_shape = PROBLEMS[problem][1]  # the parser's hidden state, set by a write
        d = self.writer_dir(problem)

        def records(name, parser):
            files = sorted(glob.glob(os.path.join(d, name + "_*.tfrecords")))
            return tf.data.TFRecordDataset(files, num_parallel_reads=1).map(parser)

        def split(ds, m):  # device i's 1/n_devices of m records
            return [ds.skip(i * m // n_devices).take(m // n_devices) for i in range(n_devices)]

        def iterators(parts):
            return [p.batch(npd).repeat().as_numpy_iterator() for p in parts]

        out = {}
        for pre in ("", "validation_"):
            if "Numerical" in cls:
                out[pre + "fiducial"] = iterators(
                    split(records(pre + "fiducial", writer.parser), n)
                )
                out[pre + "derivative"] = iterators(
                    split(records(pre + "derivative", writer.parser), 2 * n_params * n)
                )
            else:
                fid = split(records(pre + "fiducial", writer.parser), n)
                der = split(
                    records(
                        pre + "dsimdθ", lambda e: writer.derivative_parser(e, n_params=n_params)
                    ),
                    n,
                )
                out[pre + "main"] = iterators(
                    [
                        tf.data.Dataset.zip((fid[i], der[i])).take(n // n_devices)
                        for i in range(n_devices)
                    ]
                )
                out[pre + "remaining"] = iterators([f.skip(n // n_devices).take(0) for f in fid])
        return out

    def dataset(self, Class, cls, problem, npd, common, agg):
        import numpy as np

        ds = self.datasets(cls, problem, npd)
        if "Numerical" in cls:
            return Class(
                **common,
                fiducial=ds["fiducial"],
                derivative=ds["derivative"],
                δθ=np.asarray(δθ, np.float32),
                validation_fiducial=ds["validation_fiducial"],
                validation_derivative=ds["validation_derivative"],
                **agg,
            )
        return Class(
            **common,
            main=ds["main"],
            remaining=ds["remaining"],
            validation_main=ds["validation_main"],
            validation_remaining=ds["validation_remaining"],
            **agg,
        )

    def loss_and_gradient(self, imnn, w):
        """The reference's loss, F and gradient at w, through the class's own code path."""
        import jax

        α = imnn.get_α(λ, ϵ)
        x, dx = imnn.get_summaries(w=w)
        loss, (F, *_) = imnn._calculate_loss(x, dx, λ, α)
        if hasattr(imnn, "get_gradient"):  # two-pass (aggregated / dataset)
            dΛ_dx, _ = jax.grad(imnn._calculate_loss, argnums=(0, 1), has_aux=True)(x, dx, λ, α)
            grad = imnn.get_gradient(dΛ_dx, w)
        else:
            grad = jax.grad(imnn._get_loss, has_aux=True)(w, λ, α)[0]
        return loss, F, self.ours_layout(grad)


if __name__ == "__main__":
    child_main(Reference)
