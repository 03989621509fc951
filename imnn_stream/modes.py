"""Data modes: how a batch of inputs becomes network outputs, and how the
outputs of all batches become (summaries, summary-derivatives).

A mode splits its data into *kinds*. Each kind has a pure per-batch function
``outputs(w, batch) -> raw`` (``batch`` a dict of arrays with a leading batch
axis) and every sample of a kind has a fixed *position* (its global index,
derived from its seed). ``assemble(raw_by_kind)`` turns the raw outputs of
all positions, in position order, into

    x  float(n_s, n_summaries)             summaries at θ_fid
    dx float(n_d, n_summaries, n_params)   their derivatives w.r.t. θ

``assemble`` is differentiable, so a strategy can take the loss gradient
w.r.t. raw outputs (the pass-2 cotangents) with one ``jax.grad``.

| mode       | kinds                    | raw outputs per sample            |
|------------|--------------------------|-----------------------------------|
| numerical  | fiducial, derivative     | x (n_summaries,) for every record |
| gradient   | main, remaining          | (x, dx) / x                       |
| simulator  | main, remaining (keys)   | (x, dx) / x                       |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from writers.layout import record_position

from . import fisher

__all__ = ["Mode", "numerical_mode", "gradient_mode", "simulator_mode"]


@dataclass(frozen=True)
class Mode:
    """A data mode: per-kind batch functions, counts and the assembly of outputs."""

    name: str
    kinds: tuple  # kind names, in assembly order
    counts: dict  # kind -> number of samples (positions)
    outputs: dict  # kind -> fn(w, batch: dict) -> raw pytree
    assemble: Callable  # dict kind -> raw (all positions) -> (x, dx)
    fields: dict  # kind -> batch dict keys the kind reads

    def all_outputs(self, w, data):
        """(x, dx) for whole in-memory data ``data: dict kind -> batch dict``."""
        return self.assemble({k: self.outputs[k](w, data[k]) for k in self.kinds})


def _jvp_per_parameter(f, primal, tangents):
    """f(primal) and J_f·t for each tangent on tangents' last axis.

    tangents: float(*primal.shape, n_params) -> (f(primal), float(*f.shape, n_params))
    """

    def one(t):
        return jax.jvp(f, (primal,), (t,))

    values, derivatives = jax.vmap(one, in_axes=-1, out_axes=-1)(tangents)
    return values[..., 0], derivatives


def numerical_mode(apply, n_s, n_d, n_params, δθ):
    """Finite differences from seed-matched simulations at θ_fid ∓ δθ_α/2.

    Kinds: ``fiducial`` (n_s records, batch['data'] float(n, *input_shape)) and
    ``derivative`` (n_d·2·n_params records in the order seed → sign → parameter,
    i.e. the derivative array float(n_d, 2, n_params, *input_shape) flattened on its
    first three axes). Record position = seed·2·n_params + sign·n_params + α
    (:func:`writers.layout.record_position`, the archive's record order).
    The derivative divides by δθ: the simulations sit at θ_fid ∓ δθ/2.
    """
    δθ = jnp.asarray(δθ)

    def network(w, batch):
        return apply(w, batch["data"])

    def assemble(raw):
        y = raw["derivative"].reshape((n_d, 2, n_params) + raw["derivative"].shape[1:])
        return raw["fiducial"], fisher.numerical_derivative(y, δθ.astype(y.dtype))

    return Mode(
        "numerical",
        ("fiducial", "derivative"),
        {"fiducial": n_s, "derivative": n_d * 2 * n_params},
        {"fiducial": network, "derivative": network},
        assemble,
        {"fiducial": ("data",), "derivative": ("data",)},
    )


def _main_remaining_assemble(raw):
    x_main, dx = raw["main"]
    return jnp.concatenate([x_main, raw["remaining"]], axis=0), dx


def gradient_mode(apply, n_s, n_d, n_params):
    """Chain rule with precomputed dsim/dθ: ∂x/∂θ_α = (∂network/∂input)·(∂sim/∂θ_α),
    one JVP per parameter, valid for inputs of any rank (no axis is transposed).

    Kinds: ``main`` (the first n_d seeds: batch['data'] float(n, *input_shape),
    batch['gradient'] float(n, *input_shape, n_params)) and ``remaining`` (seeds
    n_d..n_s−1, batch['data'] only; position = seed − n_d).
    """

    def main(w, batch):
        return _jvp_per_parameter(lambda d: apply(w, d), batch["data"], batch["gradient"])

    def remaining(w, batch):
        return apply(w, batch["data"])

    return Mode(
        "gradient",
        ("main", "remaining"),
        {"main": n_d, "remaining": n_s - n_d},
        {"main": main, "remaining": remaining},
        _main_remaining_assemble,
        {"main": ("data", "gradient"), "remaining": ("data",)},
    )


def simulator_mode(apply, simulator, θ_fid, n_s, n_d, n_params):
    """Simulations on the fly; jax differentiates network∘simulator w.r.t. θ
    (forward mode, one JVP per parameter).

    Kinds: ``main`` (n_d keys with derivatives) and ``remaining`` (n_s − n_d
    keys); batch['key'] holds PRNG keys, uint32(n, 2) or typed keys (n,).
    """
    θ_fid = jnp.asarray(θ_fid)
    eye = jnp.eye(n_params, dtype=θ_fid.dtype)

    def simulate(keys, θ):
        return jax.vmap(simulator, in_axes=(0, None))(keys, θ)

    def main(w, batch):
        return _jvp_per_parameter(lambda θ: apply(w, simulate(batch["key"], θ)), θ_fid, eye)

    def remaining(w, batch):
        return apply(w, simulate(batch["key"], θ_fid))

    return Mode(
        "simulator",
        ("main", "remaining"),
        {"main": n_d, "remaining": n_s - n_d},
        {"main": main, "remaining": remaining},
        _main_remaining_assemble,
        {"main": ("key",), "remaining": ("key",)},
    )


def simulator_keys(key, n_s, n_d):
    """Split ``key`` into the per-kind key batches of one simulator iteration."""
    keys = jax.random.split(key, n_s)
    return {"main": {"key": keys[:n_d]}, "remaining": {"key": keys[n_d:]}}


def split_numerical(fiducial, derivative):
    """In-memory numerical arrays -> per-kind batch dicts (derivative flattened to records)."""
    d = derivative
    return {
        "fiducial": {"data": fiducial},
        "derivative": {"data": d.reshape((-1,) + tuple(d.shape[3:]))},
    }


def split_gradient(fiducial, derivative, n_d):
    """In-memory gradient arrays -> per-kind batch dicts (main = first n_d seeds)."""
    return {
        "main": {"data": fiducial[:n_d], "gradient": derivative},
        "remaining": {"data": fiducial[n_d:]},
    }


def record_positions(kind: str, batch: dict, n_d: int, n_params: int):
    """Global positions of the records of a stream batch, from their seed indices.

    batch: dict with ``seed`` int(n) (and ``derivative``, ``parameter`` for
    finite-difference records) -> int64(n)
    """
    seed = np.asarray(batch["seed"], dtype=np.int64)
    if kind == "derivative":
        return record_position(
            seed, np.asarray(batch["derivative"]), np.asarray(batch["parameter"]), n_params
        )
    return record_position(seed, first_seed=n_d if kind == "remaining" else 0)
