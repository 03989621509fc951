"""Test-wide set-up: 4 XLA host devices (set before jax is first imported), and
the toy Gaussian problem's data."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imnn_stream.simulators import gaussian_toy  # noqa: E402

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
    varied = [jax.vmap(lambda k: jax.vmap(lambda p: simulator(k, p))(ps))(keys[:n_d])
              for ps in (below, above)]
    numerical = jnp.stack(varied, 1)
    gradient = jax.vmap(lambda k: jax.jacfwd(simulator, argnums=1)(k, θ))(keys[:n_d])
    return np.asarray(fiducial), np.asarray(numerical), np.asarray(gradient)


@pytest.fixture(scope="session")
def toy_1000():
    """n_s = n_d = 1000 training and validation sets of the 10-draw Gaussian."""
    return toy_data(0, 1000, 1000), toy_data(1, 1000, 1000)


@pytest.fixture(scope="session")
def cpu_devices():
    devices = jax.devices("cpu")
    assert len(devices) >= 4, "tests expect 4 XLA host devices (XLA_FLAGS set in conftest)"
    return devices
