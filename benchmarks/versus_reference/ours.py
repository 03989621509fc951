"""Our side, a child process in our venv: ``python -m benchmarks.versus_reference.ours --task JSON``.

Prepares the shared data (simulations as .npy, initial weights as .npz, our archives) and
measures imnn_stream's classes through public names only.
"""

import json
import os

from .common import (
    PROBLEMS,
    WORK,
    Side,
    child_main,
    data_path,
    field_simulator,
    load_problem,
    toy_simulator,
    δθ,
    θ_FID,
    λ,
    ϵ,
)


class Ours(Side):
    """Our venv: data generation, our archives, our trainers."""

    @property
    def module(self):
        import imnn_stream

        return imnn_stream

    def model(self, network):
        from .common import NETWORKS

        kind, kw = NETWORKS[network]
        return getattr(self.module.models, kind)(n_summaries=2, **kw)

    def dataset(self, Class, cls, problem, npd, common, agg):
        mode = "numerical" if "Numerical" in cls else "gradient"
        return Class.from_archive(
            data_path(f"archive_{problem}_{mode}"),
            model=common["model"],
            optimiser=common["optimiser"],
            key_or_state=common["key_or_state"],
            **agg,
        )

    def loss_and_gradient(self, imnn, w):
        import jax.numpy as jnp

        fisher = self.module.fisher
        x, dx = imnn.get_summaries(w=w)
        loss, st = fisher.loss(jnp.asarray(x), jnp.asarray(dx), λ, fisher.alpha(λ, ϵ))
        g, _ = imnn.loss_gradient(λ, ϵ, w=w)
        return loss, st["F"], g

    def prepare(self, task):
        """Simulations, initial weights and our archives, once (cached in WORK)."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        try:
            from beam_jobs.simulators import gaussian_random_field, gaussian_toy
        except ImportError:  # before the simulators moved to beam_jobs
            from imnn_stream.simulators import gaussian_random_field, gaussian_toy
        from writers.archive import write_arrays

        os.makedirs(WORK, exist_ok=True)
        marker = data_path("prepared_ours.json")
        if os.path.exists(marker):
            return json.load(open(marker))
        sims = {"toy": gaussian_toy, "field": gaussian_random_field(32)}
        # the simulator classes run the benchmark's copies (the reference may not import
        # ours): they must be ours, bit for bit
        key, θs = jax.random.PRNGKey(3), {p: jnp.asarray(θ_FID[p], jnp.float32) for p in PROBLEMS}
        for problem, copy in (("toy", toy_simulator), ("field", field_simulator(32))):
            if not np.array_equal(
                np.asarray(copy(key, θs[problem])), np.asarray(sims[problem](key, θs[problem]))
            ):
                raise RuntimeError(f"common.py's {problem} simulator differs from ours")
        for problem, (n, shape) in PROBLEMS.items():
            sim, θ = sims[problem], np.asarray(θ_FID[problem], np.float32)
            d = np.asarray(δθ, np.float32)
            for val, seed in ((False, 0), (True, 1)):
                keys = jax.random.split(jax.random.PRNGKey(seed), n)
                fid = jax.vmap(lambda k: sim(k, θ))(keys)
                pm = [
                    jax.vmap(lambda k: jax.vmap(lambda q: sim(k, q))(θ + s * jnp.diag(d) / 2))(keys)
                    for s in (-1, 1)
                ]
                grad = jax.vmap(lambda k: jax.jacfwd(sim, argnums=1)(k, θ))(keys)
                pre = f"{problem}_{'val_' if val else ''}"
                np.save(data_path(pre + "fid.npy"), np.asarray(fid, np.float32))
                np.save(data_path(pre + "num.npy"), np.asarray(jnp.stack(pm, 1), np.float32))
                np.save(data_path(pre + "grad.npy"), np.asarray(grad, np.float32))
            (f, nu, g), (vf, vn, vg) = load_problem(problem), load_problem(problem, True)
            for mode, kw in (
                ("numerical", dict(derivative=nu, validation_derivative=vn)),
                ("gradient", dict(gradient=g, validation_gradient=vg)),
            ):
                write_arrays(
                    data_path(f"archive_{problem}_{mode}"),
                    mode,
                    θ.tolist(),
                    list(δθ),
                    fiducial=f,
                    validation_fiducial=vf,
                    n_devices=2,
                    records_per_shard=max(n // 2, 1),
                    overwrite=True,
                    **kw,
                )
        shapes = {"mlp": ["toy"], "cnn": ["field", "field_wide"], "cnn_large": ["field"]}
        n_parameters = {}
        for network, problems in shapes.items():
            init, _ = self.model(network)
            for problem in problems:
                shape = (32, 16) if problem == "field_wide" else PROBLEMS[problem][1]
                _, w = init(jax.random.PRNGKey(0), shape)
                np.savez(
                    data_path(f"weights_{network}_{problem}.npz"),
                    **{
                        f"{k}{i}": np.asarray(a)
                        for i, (W, b) in enumerate(w)
                        for k, a in (("W", W), ("b", b))
                    },
                )
                if problem == problems[0]:
                    n_parameters[network] = int(sum(W.size + b.size for W, b in w))
        info = dict(n_parameters=n_parameters)
        json.dump(info, open(marker, "w"))
        return info


if __name__ == "__main__":
    child_main(Ours)
