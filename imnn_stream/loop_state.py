"""The state a running fit carries from one iteration to the next, as typed
NamedTuples (pytrees, like optax's optimiser states), and the pure bookkeeping
step that advances it: optimiser update, early-stopping monitor, history row.

Both fitting loops use it: the compiled one carries these tuples through
``lax.while_loop``, the step-wise one through a Python loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .stats import HISTORY_KEYS

__all__ = ["Monitor", "LoopState", "COLUMNS", "bookkeeping", "where_tree"]

#: history columns, in the order of a history row
COLUMNS = HISTORY_KEYS + tuple("val_" + k for k in HISTORY_KEYS) + ("max_detF",)


class Monitor(NamedTuple):
    """Early stopping on the monitored (validation, else training) log det F."""

    best: Any  # float32 (): best monitored log det F so far
    best_detF: Any  # float32 (): det F at ``best`` (NaN before the first finite iteration)
    best_w: Any  # the weights that gave ``best``
    count: Any  # int32 (): iterations in a row without improvement
    stop: Any  # bool (): patience ran out (after min_iterations)
    bad: Any  # int32 (): optimiser step of the first non-finite iteration, −1 if none

    @classmethod
    def new(cls, w) -> "Monitor":
        return cls(
            best=jnp.float32(-jnp.inf),
            best_detF=jnp.float32(jnp.nan),
            best_w=w,
            count=jnp.int32(0),
            stop=jnp.bool_(False),
            bad=jnp.int32(-1),
        )

    def restart(self) -> "Monitor":
        """The same best so far, with patience, stop and non-finite flags reset (a new fit)."""
        return self._replace(count=jnp.int32(0), stop=jnp.bool_(False), bad=jnp.int32(-1))

    # saved as a plain dict (the save and checkpoint format predates this class)
    def to_dict(self) -> dict:
        return dict(self._asdict())

    @classmethod
    def from_dict(cls, d) -> "Monitor | None":
        if d is None or isinstance(d, cls):
            return d
        return cls(**d)


class LoopState(NamedTuple):
    """Everything a fit carries between iterations."""

    state: Any  # optimiser state (weights inside)
    key: Any  # PRNG key of the loop, split every iteration
    step: Any  # int32 (): optimiser step count (goes on across fit calls)
    monitor: Monitor
    done: int  # iterations done in this fit (a Python int)


def where_tree(cond, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


def bookkeeping(
    opt, state, g, step, mon: Monitor, w, st, vst, fit_iteration, patience, min_iterations
):
    """One iteration's bookkeeping (pure): apply the gradient ``g`` unless the training
    (``st``) or validation (``vst``) statistics are non-finite, update the monitor and
    return (state, step, monitor, history row float32(len(COLUMNS),))."""
    finite = st["finite"] & vst["finite"]
    state = where_tree(finite, opt.update(step, g, state), state)
    improved = finite & (vst["logdetF"] > mon.best)
    count = jnp.where(improved, 0, mon.count + 1)
    mon = Monitor(
        best=jnp.where(improved, vst["logdetF"], mon.best),
        best_detF=jnp.where(improved, vst["detF"], mon.best_detF),
        best_w=where_tree(improved, w, mon.best_w),
        count=count,
        # stop after `patience` iterations in a row without improvement
        stop=(count >= patience) & (count > 0) & (fit_iteration + 1 >= min_iterations),
        bad=jnp.where(finite, mon.bad, step),
    )
    row = jnp.stack(
        [st[k] for k in HISTORY_KEYS] + [vst[k] for k in HISTORY_KEYS] + [mon.best_detF]
    ).astype(jnp.float32)
    return state, step + finite.astype(step.dtype), mon, row
