"""Autodiff helpers with the reference package's names.

``jax.vmap(lambda key: value_and_jacrev(simulator, argnums=1)(key, θ_fid))(keys)``
returns ``(fiducial float(n_s, *input_shape), derivative float(n_s, *input_shape, n_params))``.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["value_and_jacrev", "value_and_jacfwd", "tree_nbytes"]


def _value_and_jac(jac, fun, argnums, has_aux, holomorphic):
    def wrapped(*args, **kwargs):
        def fun_with_value(*a):
            out = fun(*a, **kwargs)
            if has_aux:
                value, aux = out
                return value, (value, aux)
            return out, out

        jacobian, aux = jac(fun_with_value, argnums=argnums, has_aux=True, holomorphic=holomorphic)(
            *args
        )
        if has_aux:
            value, aux = aux
            return (value, aux), jacobian
        return aux, jacobian

    return wrapped


def value_and_jacrev(fun, argnums=0, has_aux=False, holomorphic=False):
    """Like ``jax.jacrev`` but also returns ``fun``'s value (one forward pass).

    Returns a function ``(*args) -> (value, jacobian)``; the Jacobian has shape
    ``value.shape + arg.shape`` (for θ float(n_params,): ``(*input_shape, n_params)``).
    """
    return _value_and_jac(jax.jacrev, fun, argnums, has_aux, holomorphic)


def value_and_jacfwd(fun, argnums=0, has_aux=False, holomorphic=False):
    """Forward-mode twin of :func:`value_and_jacrev` (cheaper when n_params is small)."""
    return _value_and_jac(jax.jacfwd, fun, argnums, has_aux, holomorphic)


def tree_nbytes(tree) -> int:
    """Bytes of a pytree's leaves (NumPy or JAX arrays on any device; other leaves as
    NumPy makes them)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return int(sum(a.nbytes if hasattr(a, "nbytes") else np.asarray(a).nbytes for a in leaves))
