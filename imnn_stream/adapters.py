"""Models from Flax (linen and nnx) and Equinox as the stax-like pairs the trainers use.

``from_flax(module, input_shape)`` and ``from_equinox(module, input_shape)``
return ``(init(rng, input_shape) -> (output_shape, w), apply(w, x))``, like
:mod:`imnn_stream.models`:

* ``w`` is a plain pytree of arrays: the linen ``params`` collection (nested
  dict), the nnx ``nnx.Param`` state as a pure dict (``nnx.to_pure_dict``), or
  the list of an Equinox module's inexact arrays (``eqx.partition``), so every
  optax optimiser, the checkpoints (``.npz`` + JSON) and ``set_F_statistics(w=)``
  work on it.
* ``apply(w, x)`` takes one input ``float(input_shape)`` or a batch
  ``float(n, *input_shape)`` (any number of leading axes) and returns
  ``float(n_summaries)`` / ``float(n, n_summaries)``.  The module is called
  on ONE input and vmapped over the leading axes (``batched=False``, the
  Equinox convention); pass ``batched=True`` for a module written for a
  batch ``(n, *input_shape)`` (single inputs then get a batch axis of 1).

Initialisation: a linen module is initialised from the trainer's ``rng``
(``module.init``).  nnx and Equinox modules are built already initialised;
pass the module itself (its weights are used as they are and ``rng`` is
ignored) or a factory called with the trainer's key —
``lambda rngs: MyNNX(..., rngs=rngs)`` (an ``nnx.Rngs``) or
``lambda key: eqx.nn.MLP(..., key=key)`` — so that the trainer's key decides
the weights.

Only parameters are trained: other state (nnx ``BatchStat``, an ``nnx.Rngs``
inside the module, Equinox's non-array fields) is held fixed as it was at
``init``; linen modules with collections other than ``params`` are refused.
flax and equinox are optional dependencies (``pip install imnn-stream[flax]``
/ ``[equinox]``), imported only when an adapter is built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["from_flax", "from_equinox"]


def _batching(call, input_shape, batched: bool):
    """``apply(x)`` for one input or any leading batch axes, from ``call`` on
    one input (``batched=False``) or on a batch ``(n, *input_shape)``."""
    ndim = len(input_shape)

    def apply(x):
        x = jnp.asarray(x)
        lead = x.shape[: x.ndim - ndim]
        if tuple(x.shape[x.ndim - ndim :]) != tuple(input_shape) or x.ndim < ndim:
            raise ValueError(f"input of shape {x.shape} does not end in {tuple(input_shape)}")
        flat = x.reshape((-1,) + tuple(input_shape))
        out = call(flat) if batched else jax.vmap(call)(flat)
        out = out.reshape(lead + out.shape[1:])
        return out

    return apply


def _output_shape(apply, w, input_shape):
    return tuple(jax.eval_shape(lambda w_: apply(w_, jnp.zeros(input_shape)), w).shape)


def from_flax(module, input_shape, batched: bool = False):
    """``(init, apply)`` of a ``flax.linen.Module`` or a ``flax.nnx.Module``
    (or a factory ``rngs -> nnx.Module``); see the module docstring."""
    input_shape = tuple(int(s) for s in input_shape)
    from flax import linen as nn

    if isinstance(module, nn.Module):
        return _from_linen(module, input_shape, batched)
    return _from_nnx(module, input_shape, batched)


def _from_linen(module, input_shape, batched):
    def call(params, x):
        return module.apply({"params": params}, x)

    def apply(w, x):
        return _batching(lambda v: call(w, v), input_shape, batched)(x)

    def init(rng, shape=input_shape):
        shape = tuple(shape)
        x = jnp.zeros(((1,) if batched else ()) + shape)
        variables = module.init(rng, x)
        other = sorted(k for k in variables if k != "params")
        if other:
            raise ValueError(
                f"from_flax: linen module has collections {other} besides 'params' "
                "(mutable state such as batch_stats is not supported)"
            )
        w = jax.tree_util.tree_map(jnp.asarray, dict(variables.get("params", {})))
        w = _plain(w)
        return _output_shape(apply, w, shape), w

    return init, apply


def _plain(tree):
    """Nested dicts (FrozenDict included) as plain dicts."""
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _from_nnx(module, input_shape, batched):
    from flax import nnx

    state = {}

    def build(rng):
        if isinstance(module, nnx.Module):
            return module
        if not callable(module):
            raise TypeError(
                f"from_flax: expected a flax.linen or flax.nnx Module, or a factory "
                f"rngs -> nnx.Module, got {type(module).__name__}"
            )
        return module(nnx.Rngs(rng))

    def init(rng, shape=input_shape):
        m = build(rng)
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        state["graphdef"], state["params"], state["rest"] = graphdef, params, rest
        w = _plain(nnx.to_pure_dict(params))
        return _output_shape(apply, w, tuple(shape)), w

    def apply(w, x):
        if not state:  # apply before init: take the structure from the module itself
            init(jax.random.PRNGKey(0))
        params = jax.tree_util.tree_map(lambda a: a, state["params"])
        nnx.replace_by_pure_dict(params, w)
        m = nnx.merge(state["graphdef"], params, state["rest"])
        return _batching(m, input_shape, batched)(x)

    return init, apply


def from_equinox(module, input_shape, batched: bool = False):
    """``(init, apply)`` of an ``equinox.Module`` (or a factory
    ``key -> equinox.Module``) called on one input; see the module docstring."""
    import equinox as eqx

    input_shape = tuple(int(s) for s in input_shape)
    state = {}

    def init(rng, shape=input_shape):
        m = module if isinstance(module, eqx.Module) else module(rng)
        params, static = eqx.partition(m, eqx.is_inexact_array)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        state["treedef"], state["static"] = treedef, static
        w = [jnp.asarray(a) for a in leaves]
        return _output_shape(apply, w, tuple(shape)), w

    def apply(w, x):
        if not state:
            init(jax.random.PRNGKey(0))
        m = eqx.combine(jax.tree_util.tree_unflatten(state["treedef"], list(w)), state["static"])
        return _batching(m, input_shape, batched)(x)

    return init, apply
