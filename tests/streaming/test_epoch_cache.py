"""The decoded-epoch cache (``cache=`` / ``--cache-mib``): cached and streamed fits
give identical gradients, only what fits the budget is cached, and the two-pass
order check still fires on a cached epoch."""

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from imnn_stream.streaming import cache_budget, default_cache_bytes
from ..toy_problem import toy_data, write_toy_archives

N_S, N_D = 96, 48
MODEL = im.models.mlp((16, 16), 2)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return write_toy_archives(
        tmp_path_factory.mktemp("cache"), toy_data(5, N_S, N_D), toy_data(6, N_S, N_D)
    )


CLASSES = {"numerical": im.DatasetNumericalGradientIMNN, "gradient": im.DatasetGradientIMNN}


def trainer(archives, mode, devices, cache):
    return CLASSES[mode].from_archive(
        str(archives / mode),
        model=MODEL,
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(3),
        host=devices[0],
        devices=devices,
        n_per_device=9 if mode == "numerical" else 8,
        cache=cache,
    )


def sources(imnn, split="train"):
    data = getattr(imnn._strategy, split)
    return [s for per in data.values() for s in per]


def assert_same_tree(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", ["numerical", "gradient"])
def test_cached_and_streamed_gradients_are_identical(archives, cpu_devices, mode):
    devices = cpu_devices[:2]
    streamed, cached = (trainer(archives, mode, devices, c) for c in (0, True))
    try:
        for call in range(3):  # 1st call reads and fills the cache, the others replay it
            g_s, st_s = streamed.loss_gradient(10.0, 0.1)
            g_c, st_c = cached.loss_gradient(10.0, 0.1)
            assert_same_tree(g_c, g_s)
            assert_same_tree(st_c, st_s)
            assert all(s.cached is not None for s in sources(cached))
            assert all(s.cached is None for s in sources(streamed))
        # one fit iteration (train and validation passes) from the cache
        for imnn in (streamed, cached):
            imnn.fit(10.0, 0.1, min_iterations=1, patience=1, max_iterations=1)
        assert_same_tree(cached.w, streamed.w)
        assert all(s.cached is not None for s in sources(cached, "validation"))
        np.testing.assert_array_equal(cached.history["detF"], streamed.history["detF"])
    finally:
        streamed.close()
        cached.close()


def test_only_streams_that_fit_the_budget_are_cached(archives, cpu_devices):
    devices = cpu_devices[:2]
    probe = trainer(archives, "numerical", devices, 0)
    fid0 = probe._streams[0]["fiducial"][0]
    budget = fid0.epoch_bytes + fid0.epoch_bytes // 2  # one fiducial stream, not two
    probe.close()
    part = trainer(archives, "numerical", devices, budget)
    ref = trainer(archives, "numerical", devices, 0)
    try:
        for _ in range(2):
            assert_same_tree(part.loss_gradient(10.0, 0.1)[0], ref.loss_gradient(10.0, 0.1)[0])
        flags = [s.cache for s in sources(part)] + [s.cache for s in sources(part, "validation")]
        assert flags.count(True) == 1 and flags[0] is True
    finally:
        part.close()
        ref.close()


def test_order_check_fires_on_a_cached_epoch(archives, cpu_devices, monkeypatch):
    # batches of n_per_device records (not the default whole multiples of it within
    # sources.BATCH_BYTES, one per epoch here), so that there are batches to reorder
    monkeypatch.setattr("imnn_stream.streaming.BATCH_BYTES", None)
    s = trainer(archives, "numerical", cpu_devices[:2], True)
    try:
        s.loss_gradient(10.0, 0.1)
        src = s._strategy.train["derivative"][1]
        assert src.cached is not None and len(src.cached) > 2
        src.cached[0], src.cached[1] = src.cached[1], src.cached[0]  # a reordered cache
        with pytest.raises(im.OrderError, match=r"kind 'derivative', device 1, batch 0"):
            s.loss_gradient(10.0, 0.1)
    finally:
        s.close()


def test_cache_budget_values(monkeypatch):
    assert cache_budget(0) == 0 and cache_budget(False) == 0
    assert cache_budget(True) == float("inf")
    assert cache_budget(123) == 123
    assert cache_budget(None) == default_cache_bytes() > 0
    with pytest.raises(ValueError, match="cache"):
        cache_budget(-1)


def test_cache_mib_option():
    import argparse

    from imnn_stream.app.fitting import add_fit_options, fit_config_from_args

    p = add_fit_options(argparse.ArgumentParser())
    assert fit_config_from_args(p.parse_args(["--cache-mib", "0"])).cache_mib == 0
    assert fit_config_from_args(p.parse_args([])).cache_mib is None
    with pytest.raises(SystemExit):
        p.parse_args(["--cache-mib", "-1"])


@pytest.mark.parametrize("residual_bytes", [0, 16 << 10, 1 << 30])
def test_resident_epochs_in_chunks_match_the_streamed_gradient(
    archives, cpu_devices, monkeypatch, residual_bytes
):
    """Cached epochs kept on the CPU devices go through joint calls of at most
    MAX_JOINT groups, with pass-1 residuals kept (budget) or pass 2 recomputing the
    forward (no budget), or both (the residuals of the leading chunks within a budget
    that does not hold them all): the same gradient as reading every pass."""
    import imnn_stream.resident as resident
    import imnn_stream.twopass as twopass

    monkeypatch.setattr("imnn_stream.streaming.BATCH_BYTES", None)  # many small groups
    monkeypatch.setattr(resident, "MAX_JOINT", 2)
    calls = []
    original = twopass.resident_iteration
    monkeypatch.setattr(
        twopass,
        "resident_iteration",
        lambda *a: calls.append(len(resident._chunks(a[0], "probe", a[2]))) or original(*a),
    )
    kept = []  # per first pass: which chunks kept their residuals
    first_pass = resident._first_pass

    def recording(*a):
        outs, vjps = first_pass(*a)
        kept.append([v is not None for v in vjps])
        return outs, vjps

    monkeypatch.setattr(resident, "_first_pass", recording)
    devices = cpu_devices[:2]
    streamed, cached = (trainer(archives, "numerical", devices, c) for c in (0, True))
    cached._strategy.engine.residual_bytes = residual_bytes
    try:
        for _ in range(3):
            g_s, st_s = streamed.loss_gradient(10.0, 0.1)
            g_c, st_c = cached.loss_gradient(10.0, 0.1)
            # float32 sums in another order: to 1e-6 of the gradient's scale (the
            # output bias's gradient is zero up to cancellation noise)
            scale = max(np.abs(y).max() for y in jax.tree_util.tree_leaves(g_s))
            for x, y in zip(jax.tree_util.tree_leaves(g_c), jax.tree_util.tree_leaves(g_s)):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * scale)
            np.testing.assert_allclose(st_c["detF"], st_s["detF"], rtol=1e-5)
        assert len(calls) == 2 and calls[0] > 2 * len(devices)  # chunks of ≤ 2 groups
        expected = {0: {False}, 16 << 10: {True, False}, 1 << 30: {True}}[residual_bytes]
        assert kept and all(set(k) == expected for k in kept), kept
        # the chunks that keep their residuals are the leading ones (pass-1 order)
        assert all(k == sorted(k, reverse=True) for k in kept)
    finally:
        streamed.close()
        cached.close()
