"""Argument checks shared by every trainer: each raises TypeError/ValueError that
names the argument, what was expected and what was received."""

from __future__ import annotations

import numbers

import jax
import numpy as np

__all__ = ["positive_int", "shape_tuple", "vector", "array", "device_list", "is_key"]


def positive_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"`{name}` must be ≥ {minimum}, got {value}")
    return int(value)


def shape_tuple(value, name):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise TypeError(f"`{name}` must be a tuple of positive ints, got {value!r}")
    return tuple(int(v) for v in value)


def vector(value, name, n, dtype=np.float32):
    """float(n,) finite values."""
    try:
        a = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be an array of {n} numbers, got {type(value).__name__}"
        ) from None
    if a.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` must be finite, got {a.tolist()}")
    return a


def array(value, name, shape):
    """An array with exactly ``shape``; names the argument otherwise."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"`{name}` must be an array of shape {shape}, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {tuple(value.shape)}")
    if not np.issubdtype(np.dtype(value.dtype), np.floating):
        raise TypeError(f"`{name}` must be floating point, got dtype {value.dtype}")
    return value


def device_list(devices, name="devices"):
    if (
        not isinstance(devices, (list, tuple))
        or not devices
        or not all(isinstance(d, jax.Device) for d in devices)
    ):
        raise TypeError(
            f"`{name}` must be a non-empty list of jax devices (e.g. jax.devices()), "
            f"got {devices!r}"
        )
    return list(devices)


def host_device(host, name="host"):
    if not isinstance(host, jax.Device):
        raise TypeError(f"`{name}` must be a jax device (e.g. jax.devices('cpu')[0]), got {host!r}")
    return host


def is_key(value) -> bool:
    """A PRNG key: uint32(2,) raw key or a typed key scalar."""
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return value.shape == ()
    a = np.asarray(value) if isinstance(value, (np.ndarray, jax.Array)) else None
    return a is not None and a.shape == (2,) and a.dtype == np.uint32
