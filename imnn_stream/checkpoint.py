"""On-disk state of a trainer: the checkpoint a killed fit resumes from, and the
save file of :meth:`Trainer.save` / :meth:`Trainer.load`.

Both are pickles of plain dicts of host arrays, written atomically (a temporary
file, then renamed). The monitor is stored as a dict (see
:meth:`imnn_stream.loop_state.Monitor.to_dict`).
"""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from .loop_state import LoopState, Monitor

__all__ = ["Checkpoint", "SAVE_VERSION", "write_atomic", "portable", "restore_portable"]

SAVE_VERSION = 1


def write_atomic(path, obj):
    """Pickle ``obj`` to ``path`` through a temporary file renamed over it."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
    os.replace(tmp, path)
    return path


class Checkpoint:
    """``checkpoint_dir/checkpoint.pkl``: everything a killed fit needs to go on,
    written atomically. ``run`` (the fit's arguments) must match on resume."""

    def __init__(self, directory, run):
        self.dir, self.run = os.fspath(directory), run
        self.path = os.path.join(self.dir, "checkpoint.pkl")

    def exists(self):
        return os.path.exists(self.path)

    def save(self, trainer, loop: LoopState):
        os.makedirs(self.dir, exist_ok=True)
        write_atomic(
            self.path,
            jax.device_get(
                dict(
                    run=self.run,
                    state=loop.state,
                    key=loop.key,
                    step=loop.step,
                    mon=loop.monitor.to_dict(),
                    done=loop.done,
                    history=trainer.history,
                    stats_key=trainer._stats_key,
                )
            ),
        )

    def restore(self, trainer) -> LoopState:
        with open(self.path, "rb") as f:
            blob = pickle.load(f)
        if blob["run"] != self.run:
            diff = {
                k: (blob["run"].get(k), v) for k, v in self.run.items() if blob["run"].get(k) != v
            }
            raise ValueError(
                f"{self.path}: checkpoint was written by a fit with other arguments "
                f"(saved, now): {diff}; use another checkpoint_dir or resume=False"
            )
        trainer.history, trainer._stats_key = blob["history"], blob["stats_key"]
        return LoopState(
            blob["state"],
            blob["key"],
            jnp.int32(blob["step"]),
            Monitor.from_dict(blob["mon"]),
            blob["done"],
        )


def portable(trainer) -> dict:
    """What :meth:`Trainer.save` writes: configuration, optimiser state, monitor,
    history, weights, statistics."""
    t = trainer
    return jax.device_get(
        dict(
            version=SAVE_VERSION,
            cls=type(t).__name__,
            config=dict(
                n_s=t.n_s,
                n_d=t.n_d,
                n_params=t.n_params,
                n_summaries=t.n_summaries,
                input_shape=t.input_shape,
                θ_fid=t.θ_fid.tolist(),
            ),
            state=t.state,
            step=t._step,
            monitor=None if t._monitor is None else t._monitor.to_dict(),
            history=t.history,
            initial_w=t.initial_w,
            final_w=t.final_w,
            best_w=t.best_w,
            w=t.w,
            stats_key=t._stats_key,
            statistics=dict(F=t.F, invF=t.invF, C=t.C, invC=t.invC, dμ_dθ=t.dμ_dθ, μ=t.μ),
        )
    )


def _same(a, b):
    seq = (tuple, list)
    return (list(a) if isinstance(a, seq) else a) == (list(b) if isinstance(b, seq) else b)


def restore_portable(trainer, path):
    """Load what :func:`portable` saved at ``path`` into ``trainer`` (identically configured)."""
    with open(os.fspath(path), "rb") as f:
        saved = pickle.load(f)
    if not isinstance(saved, dict) or saved.get("version") != SAVE_VERSION:
        raise ValueError(f"{path}: not an imnn_stream save file (version {SAVE_VERSION})")
    mine = portable(trainer)["config"]
    for k, v in saved["config"].items():
        if not _same(v, mine[k]):
            raise ValueError(f"{path}: saved `{k}` = {v!r} differs from this IMNN's {mine[k]!r}")
    shapes = jax.tree_util.tree_map(np.shape, trainer.w)
    if jax.tree_util.tree_map(np.shape, saved["w"]) != shapes:
        raise ValueError(f"{path}: saved weights do not match this model's parameter shapes")
    trainer.state, trainer._step = saved["state"], saved["step"]
    trainer._monitor = Monitor.from_dict(saved["monitor"])
    trainer.history = saved["history"]
    for k in ("initial_w", "final_w", "best_w", "w"):
        setattr(trainer, k, saved[k])
    trainer._stats_key = saved["stats_key"]
    for k, v in saved["statistics"].items():
        setattr(trainer, k, v)
    return trainer
