"""Streaming trainers give the in-memory gradient, from archives and user iterators,
and refuse streams whose order changes between passes."""

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data, write_toy_archives

N_S, N_D = 96, 48


def rel_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = np.sqrt(
        sum(
            np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
            for x, y in zip(la, lb)
        )
    )
    return num / np.sqrt(sum(np.sum(np.asarray(y, np.float64) ** 2) for y in lb))


MODEL = im.models.mlp((32, 32), 2)


def common():
    return dict(
        n_s=N_S,
        n_d=N_D,
        n_params=2,
        n_summaries=2,
        input_shape=(10,),
        θ_fid=THETA_FID,
        model=MODEL,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(3),
    )


@pytest.fixture(scope="module")
def data():
    return toy_data(5, N_S, N_D), toy_data(6, N_S, N_D)


@pytest.fixture(scope="module")
def archives(data, tmp_path_factory):
    return write_toy_archives(tmp_path_factory.mktemp("archives"), *data)


@pytest.mark.parametrize("n_devices", [1, 2])
def test_numerical_archive_gradient_equals_in_memory(data, archives, cpu_devices, n_devices):
    (f, n, _), (vf, vn, _) = data
    ref = im.NumericalGradientIMNN(**common(), fiducial=f, derivative=n, δθ=DELTA_THETA)
    s = im.DatasetNumericalGradientIMNN.from_archive(
        str(archives / "numerical"),
        model=MODEL,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(3),
        host=cpu_devices[0],
        devices=cpu_devices[:n_devices],
        n_per_device=10,
    )
    try:
        for _ in range(2):  # the second call re-reads the repeated streams
            assert rel_diff(s.loss_gradient(10.0, 0.1)[0], ref.loss_gradient(10.0, 0.1)[0]) < 1e-5
        np.testing.assert_allclose(
            s.get_summaries(validate=True)[0], ref.model(ref.w, vf), rtol=1e-5, atol=1e-6
        )
    finally:
        s.close()


@pytest.mark.parametrize("n_devices", [1, 2])
def test_gradient_archive_gradient_equals_in_memory(data, archives, cpu_devices, n_devices):
    (f, _, g), _ = data
    ref = im.GradientIMNN(**common(), fiducial=f, derivative=g)
    s = im.DatasetGradientIMNN.from_archive(
        str(archives / "gradient"),
        model=MODEL,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(3),
        host=cpu_devices[0],
        devices=cpu_devices[:n_devices],
        n_per_device=7,
    )
    try:
        assert rel_diff(s.loss_gradient(10.0, 0.1)[0], ref.loss_gradient(10.0, 0.1)[0]) < 1e-5
    finally:
        s.close()


def repeat_batches(array, start, stop, n):
    """An infinite numpy iterator as the seed's tf.data recipes build (unshuffled, repeated)."""
    while True:
        for b in range(start, stop, n):
            yield array[b : min(b + n, stop)]


def iterator_imnn(fid, der, devices):
    """A DatasetNumericalGradientIMNN fed by per-device user iterators (2 devices × 8)."""
    return im.DatasetNumericalGradientIMNN(
        **common(),
        fiducial=fid,
        derivative=der,
        δθ=DELTA_THETA,
        host=devices[0],
        devices=devices[:2],
        n_per_device=8,
    )


def zip_iter(a, b):
    return zip(a, b)


@pytest.mark.parametrize("n_devices", [2])
def test_user_iterators_numerical_gradient_equals_in_memory(data, cpu_devices, n_devices):
    (f, n, _), _ = data
    records = n.reshape((-1, 10))
    D = n_devices
    fid = [repeat_batches(f, d * N_S // D, (d + 1) * N_S // D, 8) for d in range(D)]
    der = [
        repeat_batches(records, d * len(records) // D, (d + 1) * len(records) // D, 8)
        for d in range(D)
    ]
    ref = im.NumericalGradientIMNN(**common(), fiducial=f, derivative=n, δθ=DELTA_THETA)
    s = im.IMNN(
        **common(),
        fiducial=fid,
        derivative=der,
        δθ=DELTA_THETA,
        host=cpu_devices[0],
        devices=cpu_devices[:D],
        n_per_device=8,
        verbose=False,
    )
    assert type(s) is im.DatasetNumericalGradientIMNN
    assert rel_diff(s.loss_gradient(10.0, 0.1)[0], ref.loss_gradient(10.0, 0.1)[0]) < 1e-5


def test_user_iterators_gradient_mode_through_factory(data, cpu_devices):
    (f, _, g), _ = data
    D = 2
    main = [
        zip_iter(
            repeat_batches(f, d * N_D // D, (d + 1) * N_D // D, 8),
            repeat_batches(g, d * N_D // D, (d + 1) * N_D // D, 8),
        )
        for d in range(D)
    ]
    rem = [
        repeat_batches(f, N_D + d * (N_S - N_D) // D, N_D + (d + 1) * (N_S - N_D) // D, 8)
        for d in range(D)
    ]
    ref = im.GradientIMNN(**common(), fiducial=f, derivative=g)
    s = im.IMNN(
        **common(),
        main=main,
        remaining=rem,
        host=cpu_devices[0],
        devices=cpu_devices[:D],
        n_per_device=8,
        verbose=False,
    )
    assert type(s) is im.DatasetGradientIMNN
    assert rel_diff(s.loss_gradient(10.0, 0.1)[0], ref.loss_gradient(10.0, 0.1)[0]) < 1e-5


def test_wrong_epoch_length_is_caught(data, cpu_devices):
    (f, n, _), _ = data
    records = n.reshape((-1, 10))
    # device 0's fiducial stream repeats after 40 instead of 48 samples
    fid = [repeat_batches(f, 0, 40, 8), repeat_batches(f, 48, 96, 8)]
    der = [repeat_batches(records, 0, 96, 8), repeat_batches(records, 96, 192, 8)]
    s = iterator_imnn(fid, der, cpu_devices)
    with pytest.raises(im.OrderError, match=r"kind .fiducial., device 0, batch 0"):
        s.loss_gradient(10.0, 0.1)


def test_shuffled_stream_is_caught(data, cpu_devices):
    (f, n, _), _ = data
    records = n.reshape((-1, 10))

    def shuffled(array, start, stop, seed):
        rng = np.random.default_rng(seed)
        while True:
            idx = rng.permutation(np.arange(start, stop))
            for b in range(0, len(idx), 8):
                yield array[idx[b : b + 8]]

    fid = [repeat_batches(f, 0, 48, 8), repeat_batches(f, 48, 96, 8)]
    der = [repeat_batches(records, 0, 96, 8), shuffled(records, 96, 192, 0)]
    s = iterator_imnn(fid, der, cpu_devices)
    with pytest.raises(im.OrderError, match=r"kind 'derivative', device 1, batch 0"):
        s.loss_gradient(10.0, 0.1)
