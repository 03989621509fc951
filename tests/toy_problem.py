"""The toy Gaussian problem's data for tests: 10 draws from N(μ, Σ) at θ = (0, 1)."""

import jax
import jax.numpy as jnp
import numpy as np

from beam_jobs.simulators import gaussian_toy

THETA_FID = np.array([0.0, 1.0], np.float32)
DELTA_THETA = np.array([0.1, 0.1], np.float32)


def toy_data(seed, n_s, n_d, simulator=gaussian_toy, θ=THETA_FID, δθ=DELTA_THETA):
    """Fiducial, seed-matched finite-difference and exact-gradient arrays:
    float(n_s, *shape), float(n_d, 2, n_params, *shape), float(n_d, *shape, n_params)."""
    θ = jnp.asarray(θ)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_s)
    fiducial = jax.vmap(lambda k: simulator(k, θ))(keys)
    below = θ - jnp.diag(jnp.asarray(δθ)) / 2
    above = θ + jnp.diag(jnp.asarray(δθ)) / 2
    varied = [
        jax.vmap(lambda k: jax.vmap(lambda p: simulator(k, p))(ps))(keys[:n_d])
        for ps in (below, above)
    ]
    numerical = jnp.stack(varied, 1)
    gradient = jax.vmap(lambda k: jax.jacfwd(simulator, argnums=1)(k, θ))(keys[:n_d])
    return np.asarray(fiducial), np.asarray(numerical), np.asarray(gradient)


def write_toy_archives(root, train, validation, records_per_shard=40, n_devices=2):
    """Numerical and gradient archives of the same draws under ``root/numerical`` and
    ``root/gradient`` (train and validation splits); ``train``/``validation`` are
    :func:`toy_data` triples. Returns ``root``."""
    from writers.archive import write_arrays

    (f, n, g), (vf, vn, vg) = train, validation
    common = dict(n_devices=n_devices, records_per_shard=records_per_shard)
    write_arrays(
        str(root / "numerical"),
        "numerical",
        THETA_FID,
        DELTA_THETA,
        fiducial=f,
        derivative=n,
        validation_fiducial=vf,
        validation_derivative=vn,
        **common,
    )
    write_arrays(
        str(root / "gradient"),
        "gradient",
        THETA_FID,
        fiducial=f,
        gradient=g,
        validation_fiducial=vf,
        validation_gradient=vg,
        **common,
    )
    return root
