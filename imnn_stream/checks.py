"""Argument checks shared by every trainer: each raises TypeError/ValueError that
names the argument, what was expected and what was received."""

from __future__ import annotations

import functools
import inspect
import numbers
import unicodedata

import jax
import numpy as np

__all__ = [
    "positive_int",
    "shape_tuple",
    "vector",
    "array",
    "device_list",
    "is_key",
    "ASCII_NAMES",
    "ascii_aliases",
    "accept_ascii_names",
    "AsciiNames",
]

#: ASCII keyword spellings of the seed's Greek argument names (also the command
#: line's and FitConfig's: see :mod:`imnn_stream.app.fitting`)
ASCII_NAMES = {"theta_fid": "θ_fid", "delta_theta": "δθ", "lam": "λ", "eps": "ϵ"}


def ascii_aliases(fn):
    """Let ``fn`` also take its Greek keyword arguments by their ASCII names
    (:data:`ASCII_NAMES`): ``fit(lam=10, eps=0.1)`` is ``fit(λ=10, ϵ=0.1)``. Giving
    both spellings of one argument (by keyword, or one of them by position) is a
    TypeError naming both."""
    params = list(inspect.signature(fn).parameters)
    # Python reads identifiers NFKC-normalised: the ϵ of the source is the name ε
    aliases = {
        a: unicodedata.normalize("NFKC", g)
        for a, g in ASCII_NAMES.items()
        if unicodedata.normalize("NFKC", g) in params and a not in params
    }
    if not aliases:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for ascii_name, greek in aliases.items():
            if ascii_name not in kwargs:
                continue
            given = kwargs.keys() & {greek, ASCII_NAMES[ascii_name]}
            if given or len(args) > params.index(greek):
                raise TypeError(
                    f"{fn.__qualname__}() got `{ASCII_NAMES[ascii_name]}` and `{ascii_name}`, "
                    "two spellings of the same argument: pass one of them"
                )
            kwargs[greek] = kwargs.pop(ascii_name)
        if ASCII_NAMES["eps"] in kwargs and "ε" in aliases.values():  # ϵ given via **{...}
            kwargs["ε"] = kwargs.pop(ASCII_NAMES["eps"])
        return fn(*args, **kwargs)

    wrapper.__ascii_aliases__ = True
    return wrapper


def accept_ascii_names(cls, methods=("__init__", "fit", "loss_gradient")):
    """Wrap ``cls``'s ``methods`` (own or inherited) with :func:`ascii_aliases`,
    once each (a trainer class calls this for every subclass)."""
    for name in methods:
        f = cls.__dict__.get(name) or getattr(cls, name, None)
        if callable(f) and not getattr(f, "__ascii_aliases__", False):
            setattr(cls, name, ascii_aliases(f))
    return cls


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


class AsciiNames:
    """Base class (of :class:`imnn_stream.trainer.Trainer`): the class and every
    subclass take ``theta_fid``, ``delta_theta``, ``lam``, ``eps`` in their
    constructor, ``fit`` and ``loss_gradient`` (:func:`accept_ascii_names`)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        accept_ascii_names(cls)
