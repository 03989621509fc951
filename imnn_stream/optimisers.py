"""One optimiser interface for the trainers, whatever the user passes.

Accepted: an ``optax.GradientTransformation``; an ``(init, update, get_params)``
triple as ``jax.example_libraries.optimizers`` makes; or a command-line spec
such as ``adam:1e-3``. All become an :class:`Optimiser` whose state is a pytree,
so it can be carried through ``lax.while_loop`` and saved.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import optax

__all__ = ["Optimiser", "as_optimiser", "from_spec", "transformation_from_spec", "ramped"]


class Optimiser(NamedTuple):
    """init(w) -> state · update(step, grad, state) -> state · params(state) -> w."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Any]
    params: Callable[[Any], Any]


def _from_optax(tx: optax.GradientTransformation) -> Optimiser:
    def init(w):
        return (w, tx.init(w))

    def update(step, grad, state):
        w, s = state
        updates, s = tx.update(grad, s, w)
        return (optax.apply_updates(w, updates), s)

    return Optimiser(init, update, lambda state: state[0])


def as_optimiser(optimiser, argument: str = "optimiser") -> Optimiser:
    """Normalise ``optimiser`` (optax transformation, triple or spec string)."""
    if isinstance(optimiser, Optimiser):
        return optimiser
    if isinstance(optimiser, str):
        return from_spec(optimiser)
    if isinstance(optimiser, optax.GradientTransformation) or (
        hasattr(optimiser, "init")
        and hasattr(optimiser, "update")
        and not isinstance(optimiser, tuple)
    ):
        return _from_optax(optimiser)
    if (
        isinstance(optimiser, (tuple, list))
        and len(optimiser) == 3
        and all(callable(f) for f in optimiser)
    ):
        return Optimiser(*optimiser)
    raise TypeError(
        f"`{argument}` must be an optax.GradientTransformation or an (init, update, get_params) "
        f"triple of callables, got {type(optimiser).__name__}"
    )


def from_spec(spec: str) -> Optimiser:
    """``name:learning_rate`` for any optax optimiser taking a learning rate, e.g. ``adam:1e-3``."""
    return _from_optax(transformation_from_spec(spec))


def ramped(tx: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """``tx`` with its updates scaled by min(1, (t + 1)/steps) over its first ``steps``
    updates: a learning-rate ramp from ~0 for warm starts.

    A trained network given a fresh Adam state moves every weight by about the learning
    rate at once (Adam's first steps are ±lr whatever the gradient's size) and loses
    much of what it learnt; ramped, the moments settle while the steps are still small.
    """
    if steps <= 1:
        return tx
    import jax.numpy as jnp

    return optax.chain(
        tx, optax.scale_by_schedule(lambda count: jnp.minimum(1.0, (count + 1.0) / steps))
    )


def transformation_from_spec(spec: str) -> optax.GradientTransformation:
    """The optax transformation of a ``name:learning_rate`` spec."""
    name, _, lr = spec.partition(":")
    factory = getattr(optax, name, None)
    if factory is None or not callable(factory):
        raise ValueError(f"optimiser spec {spec!r}: optax has no optimiser {name!r}")
    try:
        rate = float(lr) if lr else 1e-3
    except ValueError:
        raise ValueError(f"optimiser spec {spec!r}: learning rate {lr!r} is not a number") from None
    return factory(rate)
