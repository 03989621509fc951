"""Pass-1 VJPs kept for pass 2 on streamed data (imnn_stream.residuals): the same
gradients as recomputing the forward, archive streams read once an iteration (not
twice), a user's iterator still read and checked twice, nothing kept when the pass's
residuals do not fit the budget."""

import jax
import numpy as np
import pytest

from .test_epoch_cache import archives, assert_same_tree, sources, trainer  # noqa: F401
from .test_streaming_gradients import data, iterator_imnn, repeat_batches  # noqa: F401


def count_epochs(imnn):
    """Wrap every training source's ``epoch`` to count the passes that read it."""
    calls = []
    for s in sources(imnn):
        epoch = s.epoch

        def counted(epoch=epoch):
            calls.append(1)
            return epoch()

        s.epoch = counted
    return calls


def engine(imnn):
    return imnn._strategy.engine


@pytest.mark.parametrize("mode", ["numerical", "gradient"])
def test_kept_residuals_read_once_and_match_recomputing(archives, cpu_devices, mode):  # noqa: F811
    devices = cpu_devices[:2]
    kept, recomputed = (trainer(archives, mode, devices, 0) for _ in range(2))
    engine(recomputed).residual_bytes = 0  # the forward of pass 2 recomputed
    try:
        n_sources = len(sources(kept))
        reads_kept, reads_recomputed = count_epochs(kept), count_epochs(recomputed)
        for call in range(3):
            g_k, st_k = kept.loss_gradient(10.0, 0.1)
            g_r, st_r = recomputed.loss_gradient(10.0, 0.1)
            assert_same_tree(st_k, st_r)
            for x, y in zip(jax.tree_util.tree_leaves(g_k), jax.tree_util.tree_leaves(g_r)):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
            # archive streams carry their seeds: pass 2 does not read them again
            assert len(reads_kept) == (call + 1) * n_sources
            assert len(reads_recomputed) == 2 * (call + 1) * n_sources
        assert engine(kept)._keep_streamed
    finally:
        kept.close()
        recomputed.close()


def test_nothing_kept_when_the_pass_does_not_fit(archives, cpu_devices):  # noqa: F811
    imnn = trainer(archives, "numerical", cpu_devices[:2], 0)
    e = engine(imnn)
    try:
        reads = count_epochs(imnn)
        imnn.loss_gradient(10.0, 0.1)  # learn one group's residual size
        assert len(reads) == len(sources(imnn))
        sizes = list(e.resident._fits.values())
        e.residual_bytes = 2 * max(sizes)  # a couple of groups, not the whole pass
        imnn.loss_gradient(10.0, 0.1)
        assert not e._keep_streamed  # projected from the first group: nothing kept
        assert len(reads) == 3 * len(sources(imnn))  # pass 2 read again
        e.residual_bytes = 1 << 30
        imnn.loss_gradient(10.0, 0.1)  # once a pass has not fit, later ones do not try
        assert len(reads) == 5 * len(sources(imnn))
    finally:
        imnn.close()


def test_user_iterators_are_read_and_checked_again(data, cpu_devices):  # noqa: F811
    (f, n, _), _ = data
    records = n.reshape((-1, 10))
    fid = [repeat_batches(f, 0, 48, 8), repeat_batches(f, 48, 96, 8)]
    der = [repeat_batches(records, 0, 96, 8), repeat_batches(records, 96, 192, 8)]
    s = iterator_imnn(fid, der, cpu_devices)
    reads = count_epochs(s)
    s.loss_gradient(10.0, 0.1)
    # positions are only the iterator's order: pass 2 reads again, so that a shuffled
    # stream fails within the iteration (test_streaming_gradients), with the VJPs kept
    assert engine(s)._keep_streamed
    assert len(reads) == 2 * len(sources(s))
