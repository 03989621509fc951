"""The public IMNN classes of the reference package, as thin combinations of a
data mode and an execution strategy (no class re-implements a loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import checks
from .sources import default_cache_bytes, device_places
from .modes import gradient_mode, numerical_mode, simulator_mode, split_gradient, split_numerical
from .strategies import InMemory, TwoPassStrategy, array_sources, simulator_sources
from .trainer import Trainer
from .utils import tree_nbytes

__all__ = [
    "SimulatorIMNN",
    "GradientIMNN",
    "NumericalGradientIMNN",
    "AggregatedSimulatorIMNN",
    "AggregatedGradientIMNN",
    "AggregatedNumericalGradientIMNN",
]


# -- argument checks shared by the classes ---------------------------------------------


def _check_simulator(trainer, simulator):
    if not callable(simulator):
        raise TypeError(f"`simulator` must be a callable simulator(key, θ), got {simulator!r}")
    try:
        out = jax.eval_shape(simulator, jax.random.PRNGKey(0), jnp.asarray(trainer.θ_fid))
    except Exception as e:
        raise ValueError(f"`simulator` failed on (key, θ_fid={trainer.θ_fid.tolist()}): {e}") from e
    if tuple(out.shape) != trainer.input_shape:
        raise ValueError(
            f"`simulator` returns shape {tuple(out.shape)}, expected input_shape "
            f"{trainer.input_shape}"
        )
    return simulator


def _gradient_data(t, fiducial, derivative, prefix=""):
    checks.array(fiducial, prefix + "fiducial", (t.n_s,) + t.input_shape)
    checks.array(derivative, prefix + "derivative", (t.n_d,) + t.input_shape + (t.n_params,))
    return split_gradient(fiducial, derivative, t.n_d)


def _numerical_data(t, fiducial, derivative, prefix=""):
    checks.array(fiducial, prefix + "fiducial", (t.n_s,) + t.input_shape)
    checks.array(derivative, prefix + "derivative", (t.n_d, 2, t.n_params) + t.input_shape)
    return split_numerical(fiducial, derivative)


def _validation(t, build, fiducial, derivative):
    if (fiducial is None) != (derivative is None):
        missing = "validation_derivative" if derivative is None else "validation_fiducial"
        raise ValueError(
            f"`{missing}` is missing: pass both validation_fiducial and "
            "validation_derivative, or neither"
        )
    return None if fiducial is None else build(t, fiducial, derivative, "validation_")


def _δθ(t, δθ):
    δθ = checks.vector(δθ, "δθ", t.n_params)
    if np.any(δθ <= 0):
        raise ValueError(f"`δθ` must be positive (simulations at θ_fid ∓ δθ/2), got {δθ.tolist()}")
    return δθ


def _to_device(batches):
    return None if batches is None else jax.tree_util.tree_map(jnp.asarray, batches)


def _to_host(batches):
    return None if batches is None else jax.tree_util.tree_map(np.asarray, batches)


def _aggregation(t, host, devices, n_per_device, counts=None):
    """Check and set host, devices, n_per_device; with ``counts`` (kind -> samples)
    every kind must fill whole batches on every device."""
    t.host = checks.host_device(host)
    t.devices = checks.device_list(devices)
    t.n_per_device = checks.positive_int(n_per_device, "n_per_device")
    per = len(t.devices) * t.n_per_device
    for kind, count in (counts or {}).items():
        if count % per:
            raise ValueError(
                f"{count} samples of kind '{kind}' (n_s={t.n_s}, n_d={t.n_d}, "
                f"n_params={t.n_params}) are not divisible by len(devices) × n_per_device = "
                f"{len(t.devices)} × {t.n_per_device} = {per}; choose `n_per_device` to divide them"
            )


# -- in memory -----------------------------------------------------------------------------


class SimulatorIMNN(Trainer):
    """Fresh simulations every iteration; ∂x/∂θ by differentiating network∘simulator.

    simulator: ``simulator(key, θ float(n_params,)) -> float(input_shape)``.
    ``fit`` needs ``rng``.

    validation: every iteration, also the statistics of another fresh set of n_s
    simulations (default; the ``val_*`` history). False: none, as the reference package's
    simulator classes — the training statistics stand for them (each iteration's
    simulations are new to the network, so they are already held out; early stopping
    then follows them) and an iteration costs about a third less (the validation pass
    simulates and runs the network forward again).
    """

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        simulator,
        validation=True,
    ):
        super().__init__(
            n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser, key_or_state
        )
        if not isinstance(validation, bool):
            raise TypeError(f"`validation` must be True or False, got {validation!r}")
        self._simulate_validation = validation
        self.simulator = _check_simulator(self, simulator)
        mode = simulator_mode(self.model, simulator, self.θ_fid, self.n_s, self.n_d, self.n_params)
        self._configure(mode, self._strategy_for(mode))

    def _strategy_for(self, mode):
        return InMemory(mode, simulate=True, validate=self._simulate_validation)

    @property
    def _needs_rng(self):
        return True


class GradientIMNN(Trainer):
    """Fixed simulations with their gradients: fiducial float(n_s, *input_shape),
    derivative float(n_d, *input_shape, n_params) = dsim/dθ of the first n_d."""

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        fiducial,
        derivative,
        validation_fiducial=None,
        validation_derivative=None,
    ):
        super().__init__(
            n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser, key_or_state
        )
        train = _gradient_data(self, fiducial, derivative)
        self.calibrate(fiducial)  # a fresh network's data-dependent constants, if any
        validation = _validation(self, _gradient_data, validation_fiducial, validation_derivative)
        mode = gradient_mode(self.model, self.n_s, self.n_d, self.n_params)
        self._configure(mode, self._strategy_for(mode, train, validation))

    def _strategy_for(self, mode, train, validation):
        return InMemory(mode, _to_device(train), _to_device(validation))


class NumericalGradientIMNN(Trainer):
    """Fixed simulations with seed-matched finite differences: fiducial
    float(n_s, *input_shape), derivative float(n_d, 2, n_params, *input_shape) made at
    θ_fid − δθ/2 ([:, 0]) and θ_fid + δθ/2 ([:, 1]); δθ float(n_params,)."""

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        fiducial,
        derivative,
        δθ,
        validation_fiducial=None,
        validation_derivative=None,
    ):
        super().__init__(
            n_s, n_d, n_params, n_summaries, input_shape, θ_fid, model, optimiser, key_or_state
        )
        self.δθ = _δθ(self, δθ)
        train = _numerical_data(self, fiducial, derivative)
        self.calibrate(fiducial)  # a fresh network's data-dependent constants, if any
        validation = _validation(self, _numerical_data, validation_fiducial, validation_derivative)
        mode = numerical_mode(self.model, self.n_s, self.n_d, self.n_params, self.δθ)
        self._configure(mode, self._strategy_for(mode, train, validation))

    def _strategy_for(self, mode, train, validation):
        return InMemory(mode, _to_device(train), _to_device(validation))


# -- aggregated: data in host memory, two passes over host + devices -------------------------


class _Aggregated:
    """Mixin turning an in-memory class into its aggregated twin."""

    def _two_pass(self, mode, train, validation):
        n = len(self.devices)
        train, validation = _to_host(train), _to_host(validation)
        # on CPU devices, data that fit the default cache budget (25 % of available
        # memory) are copied onto the devices once, as the streaming cache keeps its
        # epochs: no transfer an iteration, and the joint resident passes
        # (imnn_stream.resident); larger data are sliced from host memory every pass
        size = sum(tree_nbytes(x) for x in (train, validation))
        places = device_places(self.devices) if size <= default_cache_bytes() else None
        return TwoPassStrategy(
            mode,
            self.host,
            self.devices,
            array_sources(train, mode, n, self.n_per_device, places=places),
            None
            if validation is None
            else array_sources(validation, mode, n, self.n_per_device, places=places),
        )


class AggregatedSimulatorIMNN(_Aggregated, SimulatorIMNN):
    """SimulatorIMNN over ``devices`` n_per_device simulations at a time; ``host``
    computes the loss. Arguments as SimulatorIMNN plus host, devices, n_per_device
    (``validation`` last, a keyword)."""

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        simulator,
        host,
        devices,
        n_per_device,
        validation=True,
    ):
        self._agg = (host, devices, n_per_device)
        super().__init__(
            n_s,
            n_d,
            n_params,
            n_summaries,
            input_shape,
            θ_fid,
            model,
            optimiser,
            key_or_state,
            simulator,
            validation=validation,
        )

    def _strategy_for(self, mode):
        _aggregation(self, *self._agg, mode.counts)
        make = simulator_sources(
            mode, len(self.devices), self.n_per_device, places=device_places(self.devices)
        )
        validation = make if self._simulate_validation else None
        return TwoPassStrategy(mode, self.host, self.devices, make, validation)


class AggregatedGradientIMNN(_Aggregated, GradientIMNN):
    """GradientIMNN with data in host memory, passed to ``devices`` n_per_device at a
    time. ``prefetch`` and ``cache`` are accepted for compatibility (data are already
    in memory; read-ahead is built in)."""

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        fiducial,
        derivative,
        host,
        devices,
        n_per_device,
        validation_fiducial=None,
        validation_derivative=None,
        prefetch=None,
        cache=False,
    ):
        self._agg = (host, devices, n_per_device)
        super().__init__(
            n_s,
            n_d,
            n_params,
            n_summaries,
            input_shape,
            θ_fid,
            model,
            optimiser,
            key_or_state,
            fiducial,
            derivative,
            validation_fiducial,
            validation_derivative,
        )

    def _strategy_for(self, mode, train, validation):
        _aggregation(self, *self._agg, mode.counts)
        return self._two_pass(mode, train, validation)


class AggregatedNumericalGradientIMNN(_Aggregated, NumericalGradientIMNN):
    """NumericalGradientIMNN with data in host memory, passed to ``devices``
    n_per_device records at a time (derivative records: n_d·2·n_params)."""

    def __init__(
        self,
        n_s,
        n_d,
        n_params,
        n_summaries,
        input_shape,
        θ_fid,
        model,
        optimiser,
        key_or_state,
        fiducial,
        derivative,
        δθ,
        host,
        devices,
        n_per_device,
        validation_fiducial=None,
        validation_derivative=None,
        prefetch=None,
        cache=False,
    ):
        self._agg = (host, devices, n_per_device)
        super().__init__(
            n_s,
            n_d,
            n_params,
            n_summaries,
            input_shape,
            θ_fid,
            model,
            optimiser,
            key_or_state,
            fiducial,
            derivative,
            δθ,
            validation_fiducial,
            validation_derivative,
        )

    def _strategy_for(self, mode, train, validation):
        _aggregation(self, *self._agg, mode.counts)
        return self._two_pass(mode, train, validation)
