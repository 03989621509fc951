"""Start a fit with whitened summaries: C = I and mean 0 at the initial weights.

Why. The IMNN loss is −ln det F + r_λ Λ2 with Λ2 = ‖C − I‖² + ‖C⁻¹ − I‖². A freshly
initialised network's summaries have an arbitrary scale (a covariance of 1e-3 or
1e3 is common: normalised 256-pixel fields, log-power features), so Λ2 starts in
the hundreds and, multiplied by λ, dominates the loss. The optimiser then spends
its first hundreds of steps rescaling the outputs, and Adam's per-weight steps
along the way destroy the information the random features had: measured on the
16×16 Gaussian random field, det F fell from 31 to 15 in 60 iterations while Λ2
went from 750 to 14, and on the toy Gaussian an MLP kept 22 % of det F after 300
iterations. det F is invariant under an invertible affine map of the summaries,
so composing the last (linear) layer with x ↦ (x − μ) C^{−1/2} costs nothing in
information and starts the fit at Λ2 ≈ 0: the same runs reached 25 % (the field,
100 iterations, from 0.8 %) and 80 % (the toy, from 22 %).

Why it is not the default. Given the whole budget, the unwhitened fit ends higher
on the toy (93 % vs 80 % of det F with 1000 iterations, n_s = 1000); on the 16×16
field the ``field`` network gets there either way (93.5 %, or 101 % whitened, in 507
iterations instead of 1000; benchmarks/information.py): starting at unit
output scale the network overfits the training set sooner (training det F 340
against 58, validation stalled near 40 from iteration ~200), while the slow growth
of the output scale under the regulariser acts as a regulariser of its own. Use it
(``--whiten``) for short budgets and for networks whose initial outputs are far
from unit scale.

How. One pass of :meth:`get_summaries` over the training set (a streaming
trainer reads it once) gives μ float(n_summaries) and C float(n_summaries,
n_summaries); the last layer's weight matrix and bias (the last 2-D and 1-D
leaves of the weights whose size matches n_summaries, in either the ``x @ W + b``
or ``W @ x + b`` convention) absorb the map. Because not every model ends in a
linear layer, the result is checked on random inputs (``apply(w′, x) ==
(apply(w, x) − μ) C^{−1/2}``) and dropped when it does not hold, so a model of
another form is left as it was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["whitening_map", "whiten_output"]


def whitening_map(x) -> tuple[np.ndarray, np.ndarray] | None:
    """(μ float(n_summaries), A float(n_summaries, n_summaries)) with A = C^{−1/2}
    (symmetric) for summaries ``x`` float(n, n_summaries), or None when C is
    singular or not finite (a dead network: nothing to whiten)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2 or not np.all(np.isfinite(x)):
        return None
    μ = x.mean(0)
    C = np.atleast_2d(np.cov(x, rowvar=False))
    ev, V = np.linalg.eigh(C)
    if not np.all(np.isfinite(ev)) or ev.min() <= 1e-12 * max(ev.max(), 1e-300):
        return None
    return μ, (V / np.sqrt(ev)) @ V.T


def _candidates(w, μ, A, n):
    """Weights with the last layer composed with x ↦ (x − μ) A, one per layout."""
    leaves, treedef = jax.tree_util.tree_flatten(w)
    bias = next((i for i in range(len(leaves) - 1, -1, -1) if leaves[i].shape == (n,)), None)
    kernel = next(
        (
            i
            for i in range(len(leaves) - 1, -1, -1)
            if getattr(leaves[i], "ndim", 0) == 2 and n in leaves[i].shape
        ),
        None,
    )
    if bias is None or kernel is None:
        return
    W = np.asarray(leaves[kernel], np.float64)
    b = np.asarray(leaves[bias], np.float64)
    layouts = []
    if W.shape[-1] == n:  # summaries = h @ W + b (stax, Flax)
        layouts.append(W @ A)
    if W.shape[0] == n:  # summaries = W @ h + b (Equinox)
        layouts.append(A.T @ W)
    for W_new in layouts:
        new = list(leaves)
        new[kernel] = jnp.asarray(W_new, leaves[kernel].dtype)
        new[bias] = jnp.asarray((b - μ) @ A, leaves[bias].dtype)
        yield jax.tree_util.tree_unflatten(treedef, new)


def whiten_output(imnn, key=None, n_check: int = 4) -> bool:
    """Compose the last layer of ``imnn.w`` with the whitening map of its training
    summaries and restart the optimiser state from the new weights; returns
    whether it did (False: C singular, or the model does not end in a linear layer
    that the check on ``n_check`` random inputs confirms). Call before ``fit`` on a
    fresh network; a warm start keeps its trained weights instead."""
    x, _ = imnn.get_summaries(imnn.w, key)
    found = whitening_map(x)
    if found is None:
        return False
    μ, A = found
    # inputs in (0, 1): valid for every input transform (log1p, asinh) in front
    probe = jax.random.uniform(jax.random.PRNGKey(17), (n_check,) + tuple(imnn.input_shape))
    before = np.asarray(imnn.model(imnn.w, probe), np.float64)
    want = (before - μ) @ A
    for w in _candidates(imnn.w, μ, A, imnn.n_summaries):
        got = np.asarray(imnn.model(w, probe), np.float64)
        if np.allclose(got, want, rtol=1e-3, atol=1e-3 * (np.abs(want).max() + 1.0)):
            imnn.w = imnn.initial_w = imnn.best_w = imnn.final_w = w
            imnn.state = imnn._opt.init(w)
            return True
    return False
