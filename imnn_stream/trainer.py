"""The trainer every public IMNN class is: configuration, fitting loop with
early stopping, history, Fisher statistics, estimates, plots, save/load.

A trainer is a data mode (:mod:`imnn_stream.modes`) run by an execution
strategy (:mod:`imnn_stream.strategies`); this module knows neither which.
"""
from __future__ import annotations

import math
import os
import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import checks, fisher
from .optimisers import as_optimiser
from .stats import HISTORY_KEYS

__all__ = ["Trainer", "NonFiniteError"]

_COLUMNS = HISTORY_KEYS + tuple("val_" + k for k in HISTORY_KEYS) + ("max_detF",)
_CHUNK = 500  # iterations per compiled chunk when no progress bar is asked for
_SAVE_VERSION = 1


class NonFiniteError(FloatingPointError):
    """Summaries, their derivatives or the loss became NaN or infinite."""


def _where_tree(cond, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


class Trainer:
    """Common IMNN machinery. Subclasses call :meth:`_configure` with a mode and
    a strategy at the end of their ``__init__``.

    Parameters (the reference package's): n_s, n_d (n_d ≤ n_s), n_params,
    n_summaries: int; input_shape: tuple; θ_fid: float(n_params,); model:
    ``(init, apply)``; optimiser: optax transformation or ``(init, update,
    get_params)``; key_or_state: a PRNG key to initialise the network, or an
    optimiser state to continue from.
    """

    def __init__(self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model,
                 optimiser, key_or_state):
        self.n_s = checks.positive_int(n_s, "n_s", minimum=2)
        self.n_d = checks.positive_int(n_d, "n_d")
        if self.n_d > self.n_s:
            raise ValueError(f"`n_d` ({self.n_d}) must not exceed `n_s` ({self.n_s})")
        self.n_params = checks.positive_int(n_params, "n_params")
        self.n_summaries = checks.positive_int(n_summaries, "n_summaries")
        self.input_shape = checks.shape_tuple(input_shape, "input_shape")
        self.θ_fid = checks.vector(θ_fid, "θ_fid", self.n_params)
        if not (isinstance(model, (tuple, list)) and len(model) == 2 and all(map(callable, model))):
            raise TypeError(f"`model` must be an (init, apply) pair of callables, got {model!r}")
        self._model_init, self.model = model
        self._opt = as_optimiser(optimiser)
        if checks.is_key(key_or_state):
            output_shape, w = self._model_init(key_or_state, self.input_shape)
            if tuple(output_shape) != (self.n_summaries,):
                raise ValueError(f"`model` output shape must be ({self.n_summaries},) "
                                 f"(n_summaries), got {tuple(output_shape)}")
            self.state = self._opt.init(w)
        else:
            try:
                w = self._opt.params(key_or_state)
            except Exception as e:
                raise TypeError("`key_or_state` must be a PRNG key (jax.random.PRNGKey) or a state "
                                f"of the optimiser; reading parameters from it failed: {e}") from e
            leaves = jax.tree_util.tree_leaves(w)
            if not leaves or not all(hasattr(a, "shape") and hasattr(a, "dtype") for a in leaves):
                raise TypeError("`key_or_state` must be a PRNG key (jax.random.PRNGKey) or a state "
                                f"of the optimiser holding array parameters, got {key_or_state!r:.80}")
            self.state = key_or_state
        out = jax.eval_shape(self.model, w, jax.ShapeDtypeStruct(self.input_shape, jnp.float32))
        if tuple(out.shape) != (self.n_summaries,):
            raise ValueError(f"`model` maps one input of shape {self.input_shape} to shape "
                             f"{tuple(out.shape)}, expected ({self.n_summaries},) (n_summaries)")
        self.initial_w = self.final_w = self.best_w = self.w = w
        self.history = {k: np.zeros(0, np.float32) for k in _COLUMNS}
        self._step = 0
        self._monitor = None
        self._stats_key = jax.random.PRNGKey(0)
        self.F = self.invF = self.C = self.invC = self.dμ_dθ = self.μ = None
        self._apply = jax.jit(self.model)
        self._runners = {}

    # -- set-up by subclasses ----------------------------------------------------

    def _configure(self, mode, strategy):
        self._mode, self._strategy = mode, strategy
        self._book = jax.jit(self._bookkeeping)

    @property
    def validate(self) -> bool:
        return self._strategy.has_validation

    # -- one iteration's bookkeeping (pure, shared by both fitting loops) ---------

    def _bookkeeping(self, state, g, step, mon, w, st, vst, fit_iteration, patience, min_iterations):
        finite = st["finite"] & vst["finite"]
        state = _where_tree(finite, self._opt.update(step, g, state), state)
        improved = finite & (vst["logdetF"] > mon["best"])
        count = jnp.where(improved, 0, mon["count"] + 1)
        mon = dict(best=jnp.where(improved, vst["logdetF"], mon["best"]),
                   best_detF=jnp.where(improved, vst["detF"], mon["best_detF"]),
                   best_w=_where_tree(improved, w, mon["best_w"]),
                   count=count,
                   stop=(count > patience) & (fit_iteration + 1 >= min_iterations),
                   bad=jnp.where(finite, mon["bad"], step))
        row = jnp.stack([st[k] for k in HISTORY_KEYS] + [vst[k] for k in HISTORY_KEYS]
                        + [mon["best_detF"]]).astype(jnp.float32)
        return state, step + finite.astype(step.dtype), mon, row

    def _new_monitor(self, w):
        return dict(best=jnp.float32(-jnp.inf), best_detF=jnp.float32(jnp.nan), best_w=w,
                    count=jnp.int32(0), stop=jnp.bool_(False), bad=jnp.int32(-1))

    # -- fitting -----------------------------------------------------------------------

    def fit(self, λ, ϵ, rng=None, patience=100, min_iterations=100, max_iterations=100000,
            print_rate=None, best=True):
        """Fit the network by maximising log det F with the covariance regulariser.

        λ, ϵ: regulariser strength and closeness of C to identity (α(λ, ϵ) must be
        positive). rng: PRNG key (required for simulator classes; fresh
        simulations each iteration). Stops when the monitored log det F — of the
        validation set when there is one, else of the training set — has not
        improved for ``patience`` iterations (and at least ``min_iterations`` ran),
        or after ``max_iterations``. ``print_rate``: update a progress bar every
        so many iterations. ``best``: leave ``w`` at the best weights (else the
        final ones). Calling ``fit`` again continues: history is appended and the
        optimiser's step count goes on.
        """
        α = fisher.alpha(λ, ϵ)
        λ = float(λ)
        patience = checks.positive_int(patience, "patience", minimum=0)
        min_iterations = checks.positive_int(min_iterations, "min_iterations", minimum=0)
        max_iterations = checks.positive_int(max_iterations, "max_iterations")
        if print_rate is not None:
            print_rate = checks.positive_int(print_rate, "print_rate")
        if not isinstance(best, (bool, np.bool_)):
            raise TypeError(f"`best` must be a bool, got {type(best).__name__}")
        if rng is None:
            if self._needs_rng:
                raise ValueError("`rng` is required: this IMNN simulates new data each iteration "
                                 "(pass e.g. rng=jax.random.PRNGKey(1))")
            rng = jax.random.PRNGKey(0)
        elif not checks.is_key(rng):
            raise TypeError(f"`rng` must be a PRNG key (jax.random.PRNGKey), got {rng!r}")
        key, self._stats_key = jax.random.split(rng)
        w = self._opt.params(self.state)
        mon = self._monitor if self._monitor is not None else self._new_monitor(w)
        mon = dict(mon, count=jnp.int32(0), stop=jnp.bool_(False), bad=jnp.int32(-1))
        step = jnp.int32(self._step)
        bar = tqdm(total=max_iterations, disable=print_rate is None, desc="fit", unit="it")
        args = (λ, α, patience, min_iterations)
        try:
            if self._strategy.compiled:
                state, step, mon = self._fit_compiled(self.state, key, step, mon, max_iterations,
                                                      print_rate, bar, args)
            else:
                state, step, mon = self._fit_stepwise(self.state, key, step, mon, max_iterations,
                                                      print_rate, bar, args)
        finally:
            bar.close()
        self.state, self._step, self._monitor = state, int(step), mon
        if int(mon["bad"]) >= 0:
            raise NonFiniteError(
                f"non-finite summaries, derivatives or loss at iteration {int(mon['bad'])} "
                "(fitting stopped; weights and history kept up to the previous iteration)")
        self.final_w = self._opt.params(state)
        self.best_w = mon["best_w"]
        self.w = self.best_w if best else self.final_w
        self.set_F_statistics(self.w, key=self._stats_key)
        return self

    @property
    def _needs_rng(self):
        return False

    def _record(self, rows, bar, print_rate, seconds=None):
        rows = np.asarray(rows, np.float32).reshape(-1, len(_COLUMNS))
        for c, k in enumerate(_COLUMNS):
            self.history[k] = np.concatenate([self.history[k], rows[:, c]])
        if print_rate is not None and len(rows):
            last = rows[-1]
            post = {"detF": f"{last[0]:.3g}"}
            if self.validate:
                post["val_detF"] = f"{last[len(HISTORY_KEYS)]:.3g}"
            if seconds is not None:
                post["s/it"] = f"{seconds:.3g}"
            bar.set_postfix(post, refresh=False)
            bar.update(len(rows))

    def _chunk_runner(self, chunk):
        if chunk in self._runners:
            return self._runners[chunk]
        strategy, opt, book = self._strategy, self._opt, self._bookkeeping
        validate = self.validate

        def run(state, key, step, mon, n, fit0, λ, α, patience, min_iterations, train, val):
            def cond(c):
                _, _, _, mon, j, _ = c
                return (j < n) & ~mon["stop"] & (mon["bad"] < 0)

            def body(c):
                state, key, step, mon, j, buf = c
                key, kt, kv = jax.random.split(key, 3)
                w = opt.params(state)
                g, st = strategy.value_and_grad(w, kt, λ, α, train)
                vst = strategy.stats(w, kv, λ, α, val) if validate else st
                state, step, mon, row = book(state, g, step, mon, w, st, vst, fit0 + j,
                                             patience, min_iterations)
                return state, key, step, mon, j + 1, buf.at[j].set(row)

            buf = jnp.full((chunk, len(_COLUMNS)), jnp.nan, jnp.float32)
            return jax.lax.while_loop(cond, body, (state, key, step, mon, jnp.int32(0), buf))

        self._runners[chunk] = jax.jit(run)
        return self._runners[chunk]

    def _fit_compiled(self, state, key, step, mon, max_iterations, print_rate, bar, args):
        chunk = print_rate or min(_CHUNK, max_iterations)
        runner = self._chunk_runner(chunk)
        done = 0
        while done < max_iterations:
            n = min(chunk, max_iterations - done)
            t0 = time.perf_counter()
            state, key, step, mon, j, buf = runner(state, key, step, mon, jnp.int32(n),
                                                   jnp.int32(done), *args,
                                                   self._strategy.train, self._strategy.validation)
            j = int(j)
            self._record(np.asarray(buf)[:j], bar, print_rate,
                         seconds=(time.perf_counter() - t0) / max(j, 1))
            done += j
            if bool(mon["stop"]) or int(mon["bad"]) >= 0 or j < n:
                break
        return state, step, mon

    def _fit_stepwise(self, state, key, step, mon, max_iterations, print_rate, bar, args):
        λ, α, patience, min_iterations = args
        strategy = self._strategy
        rows = []
        t0 = time.perf_counter()
        for i in range(max_iterations):
            key, kt, kv = jax.random.split(key, 3)
            w = self._opt.params(state)
            g, st = strategy.value_and_grad(w, kt, λ, α, strategy.train)
            vst = strategy.stats(w, kv, λ, α, strategy.validation) if self.validate else st
            state, step, mon, row = self._book(state, g, step, mon, w, st, vst, i,
                                               patience, min_iterations)
            rows.append(row)
            stop = bool(mon["stop"]) or int(mon["bad"]) >= 0
            if print_rate is not None and (len(rows) >= print_rate or stop):
                self._record(jax.device_get(rows), bar, print_rate,
                             seconds=(time.perf_counter() - t0) / len(rows))
                rows, t0 = [], time.perf_counter()
            if stop:
                break
        self._record(jax.device_get(rows), bar, print_rate)
        return state, step, mon

    def loss_gradient(self, λ, ϵ, w=None, key=None):
        """(d loss / d w, statistics) at weights ``w`` (default ``self.w``) on the
        training data — the quantity every strategy must agree on."""
        α = fisher.alpha(λ, ϵ)
        w = self.w if w is None else w
        key = self._stats_key if key is None else key
        return jax.device_get(self._strategy.value_and_grad(w, key, float(λ), α, self._strategy.train))

    # -- statistics and estimates ----------------------------------------------------

    def get_summaries(self, w=None, key=None, validate=False):
        """(x float(n_s, n_summaries), dx float(n_d, n_summaries, n_params)) for weights
        ``w`` (default: ``self.w``) on the training set or, with ``validate``, the
        validation set (simulator classes: fresh simulations from ``key``)."""
        w = self.w if w is None else w
        key = self._stats_key if key is None else key
        data = self._strategy.validation if validate and self._strategy.validation is not None \
            else self._strategy.train
        if validate and not self.validate:
            raise ValueError("`validate=True` but this IMNN has no validation data")
        return self._strategy.host_summaries(w, key, data)

    def set_F_statistics(self, w=None, key=None, validate=True):
        """Set F, invF, C, invC, dμ_dθ, μ from the validation set when there is one
        (else the training set) at weights ``w`` (default ``self.w``)."""
        x, dx = self.get_summaries(w, key, validate=validate and self.validate)
        F, C, invC, dμ_dθ, μ = jax.device_get(fisher.fisher_statistics(jnp.asarray(x), jnp.asarray(dx)))
        self.F, self.C, self.invC, self.dμ_dθ, self.μ = F, C, invC, dμ_dθ, μ
        self.invF = np.linalg.inv(F)
        return self

    def get_estimate(self, d):
        """Quasi-maximum-likelihood estimate θ̂ = θ_fid + F⁻¹ (∂μ/∂θ)ᵀ C⁻¹ (x(d) − μ).

        d: float(*input_shape) -> float(n_params,), or float(n, *input_shape) ->
        float(n, n_params). Decided by comparing ``d.shape`` with ``input_shape``.
        """
        if self.F is None:
            raise RuntimeError("Fisher statistics are not set: call `fit` or `set_F_statistics` first")
        d = np.asarray(d)
        k = len(self.input_shape)
        if d.shape == self.input_shape:
            x = self._apply(self.w, d)
        elif d.ndim == k + 1 and d.shape[1:] == self.input_shape:
            x = np.concatenate([np.asarray(self._apply(self.w, d[i:i + 4096]))
                                for i in range(0, len(d), 4096)] or [np.zeros((0, self.n_summaries))])
        else:
            raise ValueError(f"`d` must have shape {self.input_shape} (one input) or "
                             f"(n, {', '.join(map(str, self.input_shape))}) (a batch), got {d.shape}")
        return np.asarray(fisher.quasi_ml_estimate(jnp.asarray(x), self.θ_fid, self.invF,
                                                   self.dμ_dθ, self.invC, self.μ))

    # -- plotting, saving ----------------------------------------------------------------

    def plot(self, ax=None, expected_detF=None, colour="C0", figsize=(5, 12), label="",
             filename=None, ncol=2):
        """Training history: det F (with the expected value), det C and det C⁻¹, Λ2
        and r; solid training, dashed validation. Saved to ``filename`` if given.
        Returns the matplotlib axes."""
        from .plots import plot_history
        return plot_history(self.history, self.validate, ax=ax, expected_detF=expected_detF,
                            colour=colour, figsize=figsize, label=label, filename=filename, ncol=ncol)

    def _portable(self):
        return jax.device_get(dict(
            version=_SAVE_VERSION, cls=type(self).__name__,
            config=dict(n_s=self.n_s, n_d=self.n_d, n_params=self.n_params,
                        n_summaries=self.n_summaries, input_shape=self.input_shape,
                        θ_fid=self.θ_fid.tolist()),
            state=self.state, step=self._step, monitor=self._monitor, history=self.history,
            initial_w=self.initial_w, final_w=self.final_w, best_w=self.best_w, w=self.w,
            stats_key=self._stats_key,
            statistics=dict(F=self.F, invF=self.invF, C=self.C, invC=self.invC,
                            dμ_dθ=self.dμ_dθ, μ=self.μ)))

    def save(self, path):
        """Write weights, optimiser state, statistics and history to ``path``
        (atomically: a temporary file, then renamed)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            pickle.dump(self._portable(), f)
        os.replace(tmp, path)
        return path

    def load(self, path):
        """Restore what :meth:`save` wrote into this (identically configured) IMNN."""
        with open(os.fspath(path), "rb") as f:
            saved = pickle.load(f)
        if not isinstance(saved, dict) or saved.get("version") != _SAVE_VERSION:
            raise ValueError(f"{path}: not an imnn_stream save file (version {_SAVE_VERSION})")
        mine = self._portable()["config"]
        for k, v in saved["config"].items():
            if (list(v) if isinstance(v, (tuple, list)) else v) != (list(mine[k]) if isinstance(mine[k], (tuple, list)) else mine[k]):
                raise ValueError(f"{path}: saved `{k}` = {v!r} differs from this IMNN's {mine[k]!r}")
        shapes = jax.tree_util.tree_map(np.shape, self.w)
        if jax.tree_util.tree_map(np.shape, saved["w"]) != shapes:
            raise ValueError(f"{path}: saved weights do not match this model's parameter shapes")
        self.state, self._step, self._monitor = saved["state"], saved["step"], saved["monitor"]
        self.history = saved["history"]
        for k in ("initial_w", "final_w", "best_w", "w"):
            setattr(self, k, saved[k])
        self._stats_key = saved["stats_key"]
        for k, v in saved["statistics"].items():
            setattr(self, k, v)
        return self
