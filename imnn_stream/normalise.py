"""Input normalisation inside the network function.

The network sees (T(x) − m)/s instead of x, where T is an elementwise transform
(``none``, ``log1p`` for positive data spanning decades, ``asinh`` for data of
either sign with heavy tails) and m, s are the mean and standard deviation of T(x)
over the fiducial training set: per element for vector inputs, per channel (last
axis) for rank-3 inputs, one scalar for 2-D fields. Because the normalisation is
part of the function x ↦ summaries, every data mode stays exact: seed-matched
differences pass raw inputs through it, and the gradient mode's JVP with dsim/dθ
applies the chain rule d/dx [(T(x) − m)/s] = T′(x)/s automatically.

:func:`wrap` gives the ``(init, apply)`` pair; :class:`Normalisation` is saved as
JSON with a run (``config.json``) so estimates use the same constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

__all__ = ["TRANSFORMS", "Normalisation", "Accumulator", "from_arrays", "wrap"]

#: elementwise transforms applied before standardising
TRANSFORMS = {
    "none": lambda x: x,
    "log1p": jnp.log1p,  # inputs > −1 (positive data spanning orders of magnitude)
    "asinh": jnp.arcsinh,  # any sign; ~x near 0, ~sign(x) ln 2|x| for large |x|
}
_NP = {"none": lambda x: x, "log1p": np.log1p, "asinh": np.arcsinh}


def _axes(input_shape):
    """Axes of one input reduced over (besides the sample axis): none for vectors,
    all but the last for rank-3 inputs, all for 2-D fields."""
    rank = len(input_shape)
    if rank <= 1:
        return ()
    if rank == 3:
        return (0, 1)
    return tuple(range(rank))


@dataclass(frozen=True)
class Normalisation:
    """(T(x) − mean)/std; ``mean`` and ``std`` broadcast against one input."""

    transform: str
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"unknown input transform {self.transform!r}: expected one of {sorted(TRANSFORMS)}"
            )

    def __call__(self, x):
        return (TRANSFORMS[self.transform](x) - self.mean) / self.std

    def to_json(self) -> dict:
        return dict(
            transform=self.transform,
            mean=np.asarray(self.mean, float).tolist(),
            std=np.asarray(self.std, float).tolist(),
        )

    @classmethod
    def from_json(cls, d) -> "Normalisation | None":
        if d is None:
            return None
        return cls(
            d["transform"], np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32)
        )


class Accumulator:
    """Sums and sums of squares of T(x) over batches float(n, *input_shape), in float64."""

    def __init__(self, input_shape, transform="none"):
        self.input_shape, self.transform = tuple(input_shape), transform
        self.axes = tuple(a + 1 for a in _axes(self.input_shape))
        self.n = 0
        self.s = self.ss = 0.0

    def update(self, batch):
        with np.errstate(invalid="ignore", divide="ignore"):
            x = _NP[self.transform](np.asarray(batch, np.float64))
        if not np.all(np.isfinite(x)):
            raise ValueError(
                f"input transform {self.transform!r} gives non-finite values "
                "(log1p needs inputs > −1)"
            )
        axes = (0,) + self.axes
        self.s = self.s + x.sum(axes)
        self.ss = self.ss + (x**2).sum(axes)
        self.n += x.size // np.prod(np.shape(x.sum(axes)), dtype=int)
        return self

    def finish(self) -> Normalisation:
        if self.n < 2:
            raise ValueError("input normalisation needs at least two fiducial inputs")
        mean = self.s / self.n
        var = np.maximum(self.ss / self.n - mean**2, 0.0) * self.n / (self.n - 1)
        std = np.sqrt(var)
        std = np.where(std > 1e-6 * (1 + np.abs(mean)), std, 1.0)  # constant elements
        return Normalisation(self.transform, np.float32(mean), np.float32(std))


def from_arrays(fiducial, transform="none", input_shape=None) -> Normalisation:
    """Normalisation of fiducial inputs float(n_s, *input_shape)."""
    fiducial = np.asarray(fiducial)
    shape = fiducial.shape[1:] if input_shape is None else tuple(input_shape)
    return Accumulator(shape, transform).update(fiducial).finish()


def wrap(model, normalisation: Normalisation | None):
    """The ``(init, apply)`` pair of ``model`` applied to normalised inputs."""
    if normalisation is None:
        return model
    init, apply = model
    n = normalisation
    mean, std = jnp.asarray(n.mean), jnp.asarray(n.std)
    T = TRANSFORMS[n.transform]

    def normalised_apply(w, x, *args, **kwargs):
        return apply(w, (T(x) - mean) / std, *args, **kwargs)

    return init, normalised_apply
