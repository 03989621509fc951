"""Pure-JAX simulation of one shard: keys, parameter sets, padded vmapped batches.

Nothing here knows Beam: the pipeline (``beam_jobs.pipeline``) and the plain
benchmark loop (``benchmarks/beam_throughput.py``) both call
:func:`shard_records`, so they produce the same bytes.

Conventions (``docs/archive-contract.md``):

* seed ``i`` of a split with base seed ``b`` uses
  ``key_i = jax.random.fold_in(jax.random.PRNGKey(b), i)``: a function of
  ``(b, i)`` alone, so any shard can be regenerated independently, by any
  worker, in any order;
* finite-difference records of one seed are ordered sign → parameter
  (``writers.layout``, the one statement of the archive's record order):
  sign 0 at ``θ_fid − δθ_α/2`` ("below"), sign 1 at ``θ_fid + δθ_α/2``
  ("above");
* gradient mode stores ``dsim/dθ`` of shape ``input_shape + (n_params,)``,
  computed in forward mode (``jax.jacfwd``): one JVP per parameter costs about
  n_params simulations, cheaper than reverse mode (one VJP per output pixel)
  because n_params is small and the outputs are large.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import threading
from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from writers.input_stats import FIDUCIAL_KINDS, StatsRecords
from writers.layout import keys_per_seed, records_per_seed

__all__ = [
    "compilation_cache_dir",
    "use_compilation_cache",
    "BUILTIN_SIMULATORS",
    "SimulationError",
    "SimulatorSpec",
    "load_simulator",
    "simulator_file",
    "seed_keys",
    "varied_thetas",
    "records_per_seed",
    "BatchSimulator",
    "shard_records",
]

#: shortcuts accepted for ``--simulator``
BUILTIN_SIMULATORS = {
    "toy": "beam_jobs.simulators:gaussian_toy",
    "grf": "beam_jobs.simulators:gaussian_random_field",
    "lognormal": "beam_jobs.simulators:lognormal",
}
#: shortcuts that name a factory, called with its defaults when no configuration is given
BUILTIN_FACTORIES = ("grf",)


class SimulationError(RuntimeError):
    """A simulator could not be loaded, or gave a bad result for a named seed and θ."""


@dataclasses.dataclass(frozen=True)
class SimulatorSpec:
    """How to find a simulator: ``module:function`` (or ``path/file.py:function``)
    and an optional JSON-able configuration.

    With a configuration, ``function`` is a factory called as
    ``function(**config)`` that returns ``simulator(key, θ)``; without one,
    ``function`` is the simulator itself. Workers rebuild the simulator from
    this spec (it is tiny and pickles trivially) rather than receiving a
    pickled JAX function.
    """

    name: str
    config: dict | None = None

    @property
    def resolved(self) -> str:
        return BUILTIN_SIMULATORS.get(self.name, self.name)

    def describe(self) -> str:
        if self.config:
            return f"{self.resolved}({json.dumps(self.config, sort_keys=True)})"
        return self.resolved


def simulator_file(name: str) -> str | None:
    """The file of a ``path/file.py:function`` simulator name, else None (a
    ``module:function`` name or a built-in)."""
    module, sep, _ = name.rpartition(":")
    if sep and module and (module.endswith(".py") or os.sep in module):
        return module
    return None


def load_simulator(spec: SimulatorSpec) -> Callable:
    """Import ``spec`` and return ``simulator(key, θ) -> float(input_shape)``.

    Raises :class:`SimulationError` naming the simulator if the module or
    function cannot be found or the factory fails.
    """
    target = spec.resolved
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise SimulationError(
            f"simulator {spec.name!r}: expected 'module:function' or 'path/file.py:function'"
        )
    try:
        if simulator_file(target):
            # a file path: handy for local scripts and tests; on a remote runner
            # the module must instead be installed on the workers.
            path = os.path.abspath(module_name)
            mod_id = "_beam_jobs_sim_" + str(abs(hash(path)))
            file_spec = importlib.util.spec_from_file_location(mod_id, path)
            if file_spec is None or file_spec.loader is None:
                raise ImportError(f"no Python file at {path}")
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except Exception as err:  # ImportError, AttributeError, errors in the module
        raise SimulationError(
            f"simulator {spec.describe()} cannot be imported: {type(err).__name__}: {err}"
        ) from err
    if spec.config or spec.name in BUILTIN_FACTORIES:
        try:
            fn = fn(**(spec.config or {}))
        except Exception as err:
            raise SimulationError(
                f"simulator {spec.describe()}: the factory failed: {type(err).__name__}: {err}"
            ) from err
    if not callable(fn):
        raise SimulationError(f"simulator {spec.describe()} is not callable")
    return fn


def seed_keys(base_seed: int, seeds) -> jax.Array:
    """Keys of the given seed indices: ``fold_in(PRNGKey(base_seed), i)``.

    seeds: int(n,)  ->  uint32(n, 2) raw keys.
    """
    base = jax.random.PRNGKey(base_seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(seeds, dtype=jnp.uint32))


def varied_thetas(theta_fid, delta_theta) -> np.ndarray:
    """Parameter values of the finite differences of one seed.

    θ_fid, δθ: float(n_params,)  ->  float32(2, n_params, n_params): ``[sign, α]``
    is the θ of sign ``sign`` (0 below, 1 above) and parameter α, i.e.
    ``θ_fid ∓ δθ_α/2`` along axis α only.
    """
    theta_fid = np.asarray(theta_fid, np.float32)
    step = np.diag(np.asarray(delta_theta, np.float32) / 2)
    return np.stack([theta_fid - step, theta_fid + step]).astype(np.float32)


def compilation_cache_dir() -> str:
    """Where local generation keeps JAX's persistent compilation cache: the
    user's ``JAX_COMPILATION_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/imnn-stream/jax`` (``~/.cache/imnn-stream/jax``).

    The driver compiles every kind of the job into it while Beam starts the
    workers; each worker then loads the executables instead of compiling them
    (0.3–0.4 s instead of 2–3 s per kind for a 64×64 field on 2 busy cores),
    and later jobs with the same simulator and batch shape start warm.
    ``IMNN_STREAM_JAX_CACHE=0`` turns it off."""
    given = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if given:
        return given
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imnn-stream", "jax")


def use_compilation_cache(path: str | None) -> bool:
    """Point this process's JAX at the persistent cache ``path`` and cache
    every compilation, however quick (a worker's start-up is what it saves).
    A directory already configured (``JAX_COMPILATION_CACHE_DIR``, or set by
    the caller) is kept. Returns whether the cache is in use."""
    if not path:
        return False
    try:
        from jax.experimental.compilation_cache import compilation_cache as cc

        os.makedirs(path, exist_ok=True)
        if not jax.config.jax_compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", path)
            # JAX decides on its first compilation whether it uses a cache: a
            # process that compiled before (the simulator factory's eager ops)
            # must re-check now that there is one
            cc.reset_cache()
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except (OSError, AttributeError, ValueError, ImportError) as err:  # read-only home, old jax
        import logging

        logging.getLogger(__name__).warning("no compilation cache at %s: %s", path, err)
        return False
    return True


class BatchSimulator:
    """Simulate a fixed number of seeds at once, compiled once.

    Every call has the same shapes: the last batch of a shard is padded (with
    copies of its last seed) up to ``seeds_per_batch`` and the padding is
    dropped afterwards, so each kind compiles exactly once per process. That is
    why the pipeline batches seeds itself instead of using
    ``beam.BatchElements``, whose varying batch sizes would each recompile.

    Parameters
    ----------
    simulator : simulator(key, θ) -> float(input_shape)
    name : str, used in error messages
    mode : "numerical" | "gradient" | "fiducial"
    theta_fid, delta_theta : float(n_params,) (δθ only for numerical mode)
    batch_size : int, simulations per vmapped call; a finite-difference batch
        holds ``max(1, batch_size // (2·n_params))`` seeds.
    input_shape : expected shape of one simulation, or None to accept the
        simulator's own.
    check : trace the simulator abstractly to check its output (shape, dtype,
        one array); skipped when False and ``input_shape`` is given.
    """

    def __init__(
        self,
        simulator,
        name: str,
        mode: str,
        theta_fid,
        delta_theta=None,
        batch_size: int = 64,
        input_shape: Sequence[int] | None = None,
        check: bool = True,
    ):
        self.simulator = simulator
        self.name = name
        self.mode = mode
        self.theta_fid = np.asarray(theta_fid, np.float32).reshape(-1)
        self.n_params = self.theta_fid.size
        self.delta_theta = (
            None if delta_theta is None else np.asarray(delta_theta, np.float32).reshape(-1)
        )
        self.batch_size = int(batch_size)
        # Workers receive a shape the driver already checked: tracing the
        # simulator 1 + 2·n_params more times per worker would only cost start-up.
        self.input_shape = (
            self.check_shape(input_shape) if check or input_shape is None else tuple(input_shape)
        )
        self._compiled: dict[str, Callable] = {}
        self._lock = threading.Lock()

    # -- shape checks -------------------------------------------------------
    def _thetas_to_check(self):
        thetas = [self.theta_fid]
        if self.mode == "numerical" and self.delta_theta is not None:
            thetas += list(
                varied_thetas(self.theta_fid, self.delta_theta).reshape(-1, self.n_params)
            )
        return thetas

    def check_shape(self, expected=None) -> tuple[int, ...]:
        """Trace the simulator abstractly (no FLOPs) and return its output shape.

        Refuses outputs that are not a single floating array, shapes that change
        with θ, or a shape other than ``expected``.
        """
        key = jax.random.PRNGKey(0)
        shape = None
        for theta in self._thetas_to_check():
            try:
                out = jax.eval_shape(self.simulator, key, jnp.asarray(theta))
            except Exception as err:
                raise SimulationError(
                    f"simulator {self.name} raised for θ = {_fmt(theta)}: "
                    f"{type(err).__name__}: {err}"
                ) from err
            if not isinstance(out, jax.ShapeDtypeStruct):
                raise SimulationError(
                    f"simulator {self.name} must return one array, got {type(out).__name__} "
                    f"for θ = {_fmt(theta)}"
                )
            if not jnp.issubdtype(out.dtype, jnp.floating):
                raise SimulationError(
                    f"simulator {self.name} returned dtype {out.dtype} for θ = {_fmt(theta)}; "
                    "expected a floating-point array"
                )
            if shape is not None and tuple(out.shape) != shape:
                raise SimulationError(
                    f"simulator {self.name} returned shape {tuple(out.shape)} for θ = "
                    f"{_fmt(theta)} but {shape} for θ_fid = {_fmt(self.theta_fid)}"
                )
            shape = tuple(out.shape)
        if expected is not None and tuple(expected) != shape:
            raise SimulationError(
                f"simulator {self.name} returned shape {shape} for θ = {_fmt(self.theta_fid)}, "
                f"expected input_shape {tuple(expected)}"
            )
        return shape

    # -- compiled batch functions ------------------------------------------
    def seeds_per_batch(self, kind: str) -> int:
        return max(1, self.batch_size // records_per_seed(self.mode, kind, self.n_params))

    def _fn(self, kind: str) -> Callable:
        """Compiled ``(base_seed uint32, seeds uint32(B,)) -> arrays`` for one kind
        (cached: compiled once per process, ahead of time for the one batch shape,
        through JAX's persistent compilation cache when one is configured)."""
        with self._lock:  # one trace and compilation per kind, even with worker threads
            if kind not in self._compiled:
                size = self.seeds_per_batch(kind)
                lowered = self._build(kind).lower(np.uint32(0), np.zeros(size, np.uint32))
                self._compiled[kind] = lowered.compile()
            return self._compiled[kind]

    def warm(self, kinds: Sequence[str]) -> None:
        """Compile ``kinds`` now (e.g. in a background thread while the runner is
        still distributing work); a later :meth:`simulate` waits for it rather
        than compiling again. Errors are left for :meth:`simulate` to report."""
        for kind in kinds:
            try:
                self._fn(kind)
            except Exception:  # reported, with the seed and θ, by simulate
                return

    def _build(self, kind: str) -> Callable:
        sim, θ = self.simulator, jnp.asarray(self.theta_fid)
        if self.mode == "numerical" and kind == "derivative":
            thetas = jnp.asarray(varied_thetas(self.theta_fid, self.delta_theta))

            def one(key):  # -> (2, n_params, *input_shape), same key for every θ
                return jax.vmap(jax.vmap(lambda t: sim(key, t)))(thetas)
        elif self.mode == "gradient" and kind == "main":

            def one(key):  # -> (input_shape, input_shape + (n_params,))
                # forward mode: n_params JVPs; has_aux returns the value of the
                # same evaluation, so the simulation is not run twice.
                jac, value = jax.jacfwd(lambda t: (sim(key, t), sim(key, t)), has_aux=True)(θ)
                return value, jac
        else:

            def one(key):  # -> input_shape
                return sim(key, θ)

        def batch(base_seed, seeds):  # uint32 scalar, uint32(B,): keys made inside the jit
            base = jax.random.PRNGKey(base_seed)
            return jax.vmap(lambda i: one(jax.random.fold_in(base, i)))(seeds)

        return jax.jit(batch)

    def simulate(self, kind: str, base_seed: int, seeds: np.ndarray):
        """Simulate ``seeds`` (int(n,), n ≤ seeds_per_batch) of one kind.

        Returns numpy arrays with leading axis n:
        ``data float(n, *input_shape)`` (fiducial, remaining),
        ``data float(n, 2, n_params, *input_shape)`` (numerical derivative), or
        ``(data float(n, *input_shape), gradient float(n, *input_shape, n_params))``
        (gradient main). Raises :class:`SimulationError` naming the simulator,
        the seed and θ on exceptions and on non-finite values.
        """
        seeds = np.asarray(seeds, np.int64)
        n, size = len(seeds), self.seeds_per_batch(kind)
        if not 0 < n <= size:
            raise ValueError(f"between 1 and {size} seeds per batch, got {n}")
        # pad with the last seed: one compiled shape, and padded rows are valid sims
        padded = np.concatenate([seeds, np.full(size - n, seeds[-1], np.int64)])
        try:
            out = self._fn(kind)(np.uint32(base_seed), padded.astype(np.uint32))
            out = jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], out)
        except SimulationError:
            raise
        except Exception as err:
            raise SimulationError(
                f"simulator {self.name} raised for seed {int(seeds[0])} (batch of seeds "
                f"{int(seeds[0])}..{int(seeds[-1])}, base seed {base_seed}, kind {kind}) at "
                f"θ = {self._theta_desc(kind)}: {_short(err)}"
            ) from err
        data = out[0] if isinstance(out, tuple) else out
        expected = (
            (n,)
            + ((2, self.n_params) if self.mode == "numerical" and kind == "derivative" else ())
            + self.input_shape
        )
        if data.shape != expected:
            raise SimulationError(
                f"simulator {self.name} returned shape {data.shape[len(expected) - len(self.input_shape) :]}"
                f" for seed {int(seeds[0])} (kind {kind}), expected {self.input_shape}"
            )
        self._check_finite(kind, base_seed, seeds, out)
        return out

    def _theta_desc(self, kind):
        if self.mode == "numerical" and kind == "derivative":
            return "θ_fid ∓ δθ/2 = " + _fmt(varied_thetas(self.theta_fid, self.delta_theta))
        return _fmt(self.theta_fid)

    def _check_finite(self, kind, base_seed, seeds, out):
        arrays = out if isinstance(out, tuple) else (out,)
        for what, a in zip(("simulation", "gradient dsim/dθ"), arrays):
            bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
            if not bad.any():
                continue
            row = int(np.argmax(bad))
            seed, theta = int(seeds[row]), self.theta_fid
            if self.mode == "numerical" and kind == "derivative":
                # locate the first bad (sign, parameter) of that seed to name its θ
                per = ~np.isfinite(a[row].reshape(2, self.n_params, -1)).all(axis=2)
                sign, alpha = np.argwhere(per)[0]
                theta = varied_thetas(self.theta_fid, self.delta_theta)[sign, alpha]
            raise SimulationError(
                f"simulator {self.name} returned a non-finite {what} (NaN or inf) for seed "
                f"{seed} (base seed {base_seed}, kind {kind}) at θ = {_fmt(theta)}"
            )

    # -- records ------------------------------------------------------------
    def records(self, kind: str, base_seed: int, seeds: np.ndarray, encode) -> Iterator[bytes]:
        """Encoded records of ``seeds`` in archive order (seed → sign → parameter).

        ``encode`` is ``writers.schema.encode_example``.
        """
        return self.encode(kind, seeds, self.simulate(kind, base_seed, seeds), encode)

    def encode(self, kind: str, seeds: np.ndarray, out, encode) -> Iterator[bytes]:
        """The records of :meth:`simulate`'s result ``out`` for ``seeds``, in archive order."""
        if self.mode == "numerical" and kind == "derivative":
            order = keys_per_seed(self.n_params, True)  # writers.layout: sign → parameter
            for seed, sims in zip(seeds, out):  # sims: (2, n_params, *input_shape)
                for sign, alpha in order:
                    yield encode(sims[sign, alpha], int(seed), derivative=sign, parameter=alpha)
        elif self.mode == "gradient" and kind == "main":
            for seed, value, grad in zip(seeds, *out):
                yield encode(value, int(seed), gradient=grad)
        else:
            for seed, value in zip(seeds, out):
                yield encode(value, int(seed))


def shard_records(
    batcher: BatchSimulator, kind: str, base_seed: int, first_seed: int, last_seed: int, encode
) -> Iterable[bytes]:
    """All records of the seeds ``first_seed..last_seed`` (inclusive) of one shard,
    simulated in fixed-size batches and yielded lazily, so a shard streams into
    its writer without being held in memory.

    For the fiducial kinds the result is a :class:`writers.input_stats.StatsRecords`:
    each batch's simulations (exactly the stored values: nothing is cast) are added
    to the statistics of the inputs as the records stream into
    ``writers.shard.write_shard``, which puts them in the shard's FileMeta (for
    training shards; the manifest merges them into ``input_statistics``)."""
    size = batcher.seeds_per_batch(kind)

    def batches():
        for start in range(first_seed, last_seed + 1, size):
            seeds = np.arange(start, min(start + size, last_seed + 1), dtype=np.int64)
            out = batcher.simulate(kind, base_seed, seeds)
            yield (
                (out[0] if isinstance(out, tuple) else out),
                batcher.encode(kind, seeds, out, encode),
            )

    if kind in FIDUCIAL_KINDS:
        return StatsRecords(batches(), batcher.input_shape)
    return (r for _, records in batches() for r in records)


def _short(err: BaseException) -> str:
    """One line for an exception; a host callback's error arrives as a whole
    traceback, whose last line is the one that matters."""
    lines = [l for l in str(err).strip().splitlines() if l.strip()]
    if len(lines) > 1:
        return f"{type(err).__name__}: {lines[0]} ... {lines[-1].strip()}"
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _fmt(theta) -> str:
    return json.dumps(np.round(np.asarray(theta, np.float64), 6).tolist())
