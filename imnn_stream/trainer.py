"""The trainer every public IMNN class is: configuration, fitting loop with
early stopping, history, Fisher statistics, estimates, plots, save/load.

A trainer is a data mode (:mod:`imnn_stream.modes`) run by an execution
strategy (:mod:`imnn_stream.strategies`); this module knows neither which. The
state carried between iterations is :mod:`imnn_stream.loop_state`; checkpoints
and save files are :mod:`imnn_stream.checkpoint`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from writers import progress

from . import checks, fisher, information
from .checkpoint import Checkpoint, portable, restore_portable, write_file
from .fisher import estimate
from .loop_state import COLUMNS as _COLUMNS
from .loop_state import LoopState, Monitor, bookkeeping
from .models import calibrate_trainer
from .optimisers import as_optimiser
from .stats import HISTORY_KEYS

_split3 = jax.jit(lambda key: jax.random.split(key, 3))  # eager: ~0.4 ms an iteration

__all__ = ["Trainer", "NonFiniteError", "estimate"]

_CHUNK = 500  # iterations per compiled chunk when no progress bar is asked for


class NonFiniteError(FloatingPointError):
    """Summaries, their derivatives or the loss became NaN or infinite."""


class Trainer(checks.AsciiNames):
    """Common IMNN machinery. Subclasses call :meth:`_configure` with a mode and
    a strategy at the end of their ``__init__``.

    Parameters (the reference package's): n_s, n_d (n_d ≤ n_s), n_params,
    n_summaries: int; input_shape: tuple; θ_fid: float(n_params,); model:
    ``(init, apply)``; optimiser: optax transformation or ``(init, update,
    get_params)``; key_or_state: a PRNG key to initialise the network, or an
    optimiser state to continue from.
    """

    def __init__(
        self, n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser, key_or_state
    ):
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
                raise ValueError(
                    f"`model` output shape must be ({self.n_summaries},) "
                    f"(n_summaries), got {tuple(output_shape)}"
                )
            self.state = self._opt.init(w)
        else:
            try:
                w = self._opt.params(key_or_state)
            except Exception as e:
                raise TypeError(
                    "`key_or_state` must be a PRNG key (jax.random.PRNGKey) or a state "
                    f"of the optimiser; reading parameters from it failed: {e}"
                ) from e
            leaves = jax.tree_util.tree_leaves(w)
            if not leaves or not all(hasattr(a, "shape") and hasattr(a, "dtype") for a in leaves):
                raise TypeError(
                    "`key_or_state` must be a PRNG key (jax.random.PRNGKey) or a state "
                    f"of the optimiser holding array parameters, got {key_or_state!r:.80}"
                )
            self.state = key_or_state
        out = jax.eval_shape(self.model, w, jax.ShapeDtypeStruct(self.input_shape, jnp.float32))
        if tuple(out.shape) != (self.n_summaries,):
            raise ValueError(
                f"`model` maps one input of shape {self.input_shape} to shape "
                f"{tuple(out.shape)}, expected ({self.n_summaries},) (n_summaries)"
            )
        self.initial_w = self.final_w = self.best_w = self.w = w
        self._fresh = checks.is_key(key_or_state)  # a new network: calibrate() may set it up
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

    #: fiducial inputs the in-memory classes calibrate a fresh network with
    CALIBRATION_SAMPLE = 1000

    def calibrate(self, fiducial) -> bool:
        """:func:`imnn_stream.models.calibrate_trainer` (a fresh network's data-dependent
        constants from fiducial inputs float(n, *input_shape))."""
        return calibrate_trainer(self, fiducial)

    @property
    def validate(self) -> bool:
        return self._strategy.has_validation

    def _bookkeeping(self, *args):
        return bookkeeping(self._opt, *args)

    # -- fitting -----------------------------------------------------------------------

    def fit(
        self,
        λ,
        ϵ,
        rng=None,
        patience=100,
        min_iterations=100,
        max_iterations=100000,
        print_rate=None,
        best=True,
        checkpoint_dir=None,
        checkpoint_every=None,
        resume=False,
        allow_pickle=False,
        expected_detF=None,
    ):
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

        ``checkpoint_dir`` / ``checkpoint_every``: save weights, optimiser state,
        history, best weights and the random key every so many iterations; with
        ``resume=True`` a killed fit continues from the last checkpoint and ends
        with the same weights as an uninterrupted run. A checkpoint records the
        fit's arguments and :attr:`identity`; resuming with any difference is a
        ValueError listing them, and a checkpoint of a fit that had stopped
        iterates no more. ``allow_pickle``: also resume from a 0.1.0 pickle.
        ``expected_detF``: the exact det F, when known: the history gets
        ``detF_fraction`` / ``val_detF_fraction`` and the bar shows the fraction
        (kept for later fits; see :mod:`imnn_stream.information`).
        """
        if expected_detF is not None:
            self.expected_detF = float(expected_detF)
        α = fisher.alpha(λ, ϵ)
        λ = float(λ)
        patience = checks.positive_int(patience, "patience", minimum=0)
        min_iterations = checks.positive_int(min_iterations, "min_iterations", minimum=0)
        max_iterations = checks.positive_int(max_iterations, "max_iterations")
        if print_rate is not None:
            print_rate = checks.positive_int(print_rate, "print_rate")
        if not isinstance(best, (bool, np.bool_)):
            raise TypeError(f"`best` must be a bool, got {type(best).__name__}")
        if checkpoint_every is not None:
            checkpoint_every = checks.positive_int(checkpoint_every, "checkpoint_every")
            if checkpoint_dir is None:
                raise ValueError("`checkpoint_every` needs `checkpoint_dir`")
        if resume and checkpoint_dir is None:
            raise ValueError("`resume=True` needs `checkpoint_dir`")
        if rng is None:
            if self._needs_rng:
                raise ValueError(
                    "`rng` is required: this IMNN simulates new data each iteration "
                    "(pass e.g. rng=jax.random.PRNGKey(1))"
                )
            rng = jax.random.PRNGKey(0)
        elif not checks.is_key(rng):
            raise TypeError(f"`rng` must be a PRNG key (jax.random.PRNGKey), got {rng!r}")
        args = (λ, α, patience, min_iterations)
        run = dict(
            λ=λ,
            ϵ=float(ϵ),
            patience=patience,
            min_iterations=min_iterations,
            max_iterations=max_iterations,
            rng=np.asarray(jax.random.key_data(rng) if rng.dtype != np.uint32 else rng).tolist(),
            **self.identity,
        )
        kind = self.checkpoint_type
        ckpt = None if checkpoint_dir is None else kind(checkpoint_dir, run, allow_pickle)
        key, self._stats_key = jax.random.split(rng)
        w = self._opt.params(self.state)
        mon = (Monitor.new(w) if self._monitor is None else self._monitor).restart()
        loop = LoopState(state=self.state, key=key, step=jnp.int32(self._step), monitor=mon, done=0)
        if resume and ckpt.exists():
            loop = ckpt.restore(self)
        # commit the carried state to one device, so that every fit call sees the same
        # argument placement and reuses the compiled loop
        host = getattr(self, "host", None) or jax.devices()[0]
        loop = LoopState(*jax.device_put(tuple(loop[:4]), host), loop.done)
        bar = progress.bar(
            total=max_iterations,
            initial=loop.done,
            disable=print_rate is None,
            desc="fit",
            unit="it",
        )
        finished = bool(loop.monitor.stop) or int(loop.monitor.bad) >= 0
        try:
            loop_args = (loop, max_iterations, print_rate, bar, args, ckpt, checkpoint_every)
            if finished or loop.done >= max_iterations:  # resumed a fit that had stopped
                pass
            elif not self._strategy.compiled:
                loop = self._fit_stepwise(*loop_args)
            elif self._compiled_loop():
                loop = self._fit_compiled(*loop_args)
            else:
                loop = self._fit_stepwise(*loop_args, iteration=self._fused_iteration)
        finally:
            bar.close()
        self.state, self._step, self._monitor = loop.state, int(loop.step), loop.monitor
        if ckpt is not None:
            ckpt.save(self, loop)
        if int(loop.monitor.bad) >= 0:
            raise NonFiniteError(
                f"non-finite summaries, derivatives or loss at iteration {int(loop.monitor.bad)} "
                "(fitting stopped; weights and history kept up to the previous iteration)"
            )
        self.final_w = self._opt.params(loop.state)
        self.best_w = loop.monitor.best_w
        self.w = self.best_w if best else self.final_w
        self.set_F_statistics(self.w, key=self._stats_key)
        return self

    #: what a checkpoint must match besides the fit's arguments (the command line
    #: puts the archive's manifest digest, model and optimiser specs, devices here)
    identity: dict = {}
    checkpoint_type = Checkpoint  # distributed: process 0 writes, every process reads its bytes
    #: exact det F when known (``fit(expected_detF=…)``); Hartlap factor of the statistics
    expected_detF = None
    hartlap = 1.0

    @property
    def _needs_rng(self):
        return False

    #: in-memory fitting loop: "while_loop" (whole chunks of iterations compiled),
    #: "step" (one jitted iteration per Python step) or "auto": step on CPU backends,
    #: where XLA runs convolutions inside while loops about ten times slower than the
    #: same step called from Python (measured: 3.3 s against 0.31 s for the gradient of
    #: a small CNN on 2500 32×32 fields), while_loop on accelerators.
    loop = "auto"

    def _compiled_loop(self) -> bool:
        if self.loop not in ("auto", "while_loop", "step"):
            raise ValueError(f"`loop` must be 'auto', 'while_loop' or 'step', got {self.loop!r}")
        if self.loop == "auto":
            return jax.default_backend() != "cpu"
        return self.loop == "while_loop"

    def _record(self, rows, bar, print_rate, seconds=None):
        rows = np.asarray(rows, np.float32).reshape(-1, len(_COLUMNS))
        for c, k in enumerate(_COLUMNS):
            self.history[k] = np.concatenate([self.history[k], rows[:, c]])
        information.update_fractions(self.history, self.expected_detF)
        if print_rate is not None and len(rows):
            last = rows[-1]
            post = {"detF": f"{last[0]:.3g}"}
            if self.validate:
                post["val_detF"] = f"{last[len(HISTORY_KEYS)]:.3g}"
            if seconds is not None:
                post["s/it"] = f"{seconds:.3g}"
            val = last[len(HISTORY_KEYS)] if self.validate else None
            information.fraction_postfix(post, last[0], val, self.expected_detF)
            bar.set_postfix(post, refresh=False)
            bar.update(len(rows))

    def _iteration(self):
        """One fitting iteration as a pure function (in-memory strategies):
        (state, key, step, mon, fit_iteration, λ, α, patience, min_iterations, train, val)
        -> (state, key, step, mon, history row)."""
        strategy, opt, book, validate = self._strategy, self._opt, self._bookkeeping, self.validate

        def one(state, key, step, mon, fit_iteration, λ, α, patience, min_iterations, train, val):
            key, kt, kv = jax.random.split(key, 3)
            w = opt.params(state)
            g, st = strategy.value_and_grad(w, kt, λ, α, train)
            vst = strategy.stats(w, kv, λ, α, val) if validate else st
            state, step, mon, row = book(
                state, g, step, mon, w, st, vst, fit_iteration, patience, min_iterations
            )
            return state, key, step, mon, row

        return one

    def _chunk_runner(self, chunk):
        """Up to ``chunk`` iterations in one ``lax.while_loop`` (cached per chunk size)."""
        if chunk in self._runners:
            return self._runners[chunk]
        one = self._iteration()

        def run(state, key, step, mon, n, fit0, λ, α, patience, min_iterations, train, val):
            def cond(c):
                _, _, _, mon, j, _ = c
                return (j < n) & ~mon.stop & (mon.bad < 0)

            def body(c):
                state, key, step, mon, j, buf = c
                state, key, step, mon, row = one(
                    state, key, step, mon, fit0 + j, λ, α, patience, min_iterations, train, val
                )
                return state, key, step, mon, j + 1, buf.at[j].set(row)

            buf = jnp.full((chunk, len(_COLUMNS)), jnp.nan, jnp.float32)
            return jax.lax.while_loop(cond, body, (state, key, step, mon, jnp.int32(0), buf))

        self._runners[chunk] = jax.jit(run)
        return self._runners[chunk]

    def _fit_compiled(self, loop, max_iterations, print_rate, bar, args, ckpt, every):
        chunk = min(c for c in (print_rate, every, _CHUNK, max_iterations) if c)
        if print_rate is None and every is None:
            chunk = _CHUNK  # one compiled shape whatever max_iterations is
        runner = self._chunk_runner(chunk)
        while loop.done < max_iterations:
            n = min(chunk, max_iterations - loop.done)
            t0 = time.perf_counter()
            *carry, j, buf = runner(
                *loop[:4],
                jnp.int32(n),
                jnp.int32(loop.done),
                *args,
                self._strategy.train,
                self._strategy.validation,
            )
            j = int(j)
            self._record(
                np.asarray(buf)[:j], bar, print_rate, seconds=(time.perf_counter() - t0) / max(j, 1)
            )
            loop = LoopState(*carry, loop.done + j)
            if ckpt is not None and every is not None:
                ckpt.save(self, loop)
            if bool(loop.monitor.stop) or int(loop.monitor.bad) >= 0 or j < n:
                break
        return loop

    def _two_pass_iteration(self, loop: LoopState, args):
        """One iteration of the two passes: -> (loop state with ``done`` unchanged, history row)."""
        λ, α, patience, min_iterations = args
        strategy = self._strategy
        key, kt, kv = _split3(loop.key)
        w = self._opt.params(loop.state)
        g, st, vst = strategy.iteration(w, kt, kv, λ, α, self.validate)
        vst = st if vst is None else vst
        state, step, mon, row = self._book(
            loop.state, g, loop.step, loop.monitor, w, st, vst, loop.done, patience, min_iterations
        )
        return LoopState(state, key, step, mon, loop.done), row

    def _fused_iteration(self, loop: LoopState, args):
        if "fused" not in self._runners:
            self._runners["fused"] = jax.jit(self._iteration())
        *carry, row = self._runners["fused"](
            *loop[:4], loop.done, *args, self._strategy.train, self._strategy.validation
        )
        return LoopState(*carry, loop.done), row

    def _fit_stepwise(
        self, loop, max_iterations, print_rate, bar, args, ckpt, every, iteration=None
    ):
        """One iteration per Python step: the two passes of the aggregated and streaming
        strategies, or one jitted in-memory iteration (``iteration``)."""
        iteration = iteration or self._two_pass_iteration
        rows = []
        t0 = time.perf_counter()
        while loop.done < max_iterations:
            loop, row = iteration(loop, args)
            rows.append(row)
            loop = loop._replace(done=loop.done + 1)
            stop = bool(loop.monitor.stop) or int(loop.monitor.bad) >= 0
            save = ckpt is not None and every is not None and loop.done % every == 0
            if stop or save or (print_rate is not None and len(rows) >= print_rate):
                self._record(
                    jax.device_get(rows),
                    bar,
                    print_rate,
                    seconds=(time.perf_counter() - t0) / len(rows),
                )
                rows, t0 = [], time.perf_counter()
            if save:
                ckpt.save(self, loop)
            if stop:
                break
        self._record(jax.device_get(rows), bar, print_rate)
        return loop

    def loss_gradient(self, λ, ϵ, w=None, key=None):
        """(d loss / d w, statistics) at weights ``w`` (default ``self.w``) on the
        training data — the quantity every strategy must agree on."""
        α = fisher.alpha(λ, ϵ)
        w = self.w if w is None else w
        key = self._stats_key if key is None else key
        return jax.device_get(
            self._strategy.host_value_and_grad(w, key, float(λ), α, self._strategy.train)
        )

    # -- statistics and estimates ----------------------------------------------------

    def get_summaries(self, w=None, key=None, validate=False):
        """(x float(n_s, n_summaries), dx float(n_d, n_summaries, n_params)) for weights
        ``w`` (default: ``self.w``) on the training set or, with ``validate``, the
        validation set (simulator classes: fresh simulations from ``key``)."""
        w = self.w if w is None else w
        key = self._stats_key if key is None else key
        data = (
            self._strategy.validation
            if validate and self._strategy.validation is not None
            else self._strategy.train
        )
        if validate and not self.validate:
            raise ValueError("`validate=True` but this IMNN has no validation data")
        return self._strategy.host_summaries(w, key, data)

    def set_F_statistics(self, w=None, key=None, validate=True):
        """Set F, invF, C, invC, dμ_dθ, μ from the validation set when there is one
        (else the training set) at weights ``w`` (default ``self.w``), which become
        the current weights ``self.w`` (as the reference's), so that
        :meth:`get_estimate` uses the weights the statistics belong to."""
        if w is not None:
            self.w = w
        x, dx = self.get_summaries(self.w, key, validate=validate and self.validate)
        F, C, invC, dμ_dθ, μ = jax.device_get(
            fisher.fisher_statistics(jnp.asarray(x), jnp.asarray(dx))
        )
        self.F, self.C, self.invC, self.dμ_dθ, self.μ = F, C, invC, dμ_dθ, μ
        self.invF = np.linalg.inv(F)
        self.hartlap = information.hartlap_factor(len(x), self.n_summaries)
        return self

    def get_estimate(self, d):
        """Quasi-maximum-likelihood estimate θ̂ = θ_fid + F⁻¹ (∂μ/∂θ)ᵀ C⁻¹ (x(d) − μ).

        d: float(*input_shape) -> float(n_params,), or float(n, *input_shape) ->
        float(n, n_params). Decided by comparing ``d.shape`` with ``input_shape``.
        """
        if self.F is None:
            raise RuntimeError(
                "Fisher statistics are not set: call `fit` or `set_F_statistics` first"
            )
        stats = dict(invF=self.invF, dμ_dθ=self.dμ_dθ, invC=self.invC, μ=self.μ)
        return estimate(self._apply, self.w, self.input_shape, self.θ_fid, stats, d)

    # -- plotting, saving ----------------------------------------------------------------

    def plot(
        self,
        ax=None,
        expected_detF=None,
        colour="C0",
        figsize=(5, 12),
        label="",
        filename=None,
        ncol=2,
    ):
        """Training history: det F (with the expected value), det C and det C⁻¹, Λ2
        and r; solid training, dashed validation. Saved to ``filename`` if given.
        Returns the matplotlib axes."""
        from .plots import plot_history

        kw = dict(ax=ax, expected_detF=expected_detF, colour=colour, figsize=figsize)
        kw.update(label=label, filename=filename, ncol=ncol)
        return plot_history(self.history, self.validate, **kw)

    def save(self, path):
        """Write weights, optimiser state, statistics and history to ``path``, an
        ``.npz`` of arrays plus JSON that runs no code when read (format:
        :mod:`imnn_stream.checkpoint`), atomically and fsynced."""
        return write_file(path, portable(self))

    def load(self, path, allow_pickle=False):
        """Restore what :meth:`save` wrote into this (identically configured) IMNN.
        ``allow_pickle``: also read a 0.1.0 pickle (runs code; trusted files only)."""
        return restore_portable(self, path, allow_pickle=allow_pickle)
