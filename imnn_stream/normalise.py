"""Input normalisation inside the network function.

The network sees (T(x) − m)/s instead of x, where T is an elementwise transform
(``none``, ``log`` for positive data spanning decades, ``log1p`` for such data
with zeros, ``asinh`` for data of either sign with heavy tails) and m, s are the mean and standard deviation of T(x)
over the fiducial training set: per element for vector inputs, per channel (last
axis) for rank-3 inputs, one scalar for 2-D fields (``writers.input_stats``, which
also gathers them into an archive's manifest as it is written). Because the normalisation is
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

from writers.input_stats import InputStats, reduce_axes

__all__ = [
    "TRANSFORMS",
    "AUTO_SPREAD",
    "choose_transform",
    "Normalisation",
    "Accumulator",
    "from_arrays",
    "from_statistics",
    "wrap",
]

#: elementwise transforms applied before standardising
TRANSFORMS = {
    "none": lambda x: x,
    # inputs > 0: a log-normal's log is exactly Gaussian (benchmarks/information.py:
    # log kept more of the log-normal's det F than log1p, whose log1p(x) ≈ x squashes
    # the decades below 1)
    "log": jnp.log,
    "log1p": jnp.log1p,  # inputs > −1 (positive data spanning orders of magnitude)
    "asinh": jnp.arcsinh,  # any sign; ~x near 0, ~sign(x) ln 2|x| for large |x|
}


#: ``auto`` takes a log transform when T(x) spreads at least this much (median
#: over elements or channels of the standard deviation of T(x)): ±2σ then spans a
#: factor e² ≈ 7, about a decade. On the log-normal of benchmarks/information.py
#: (std of ln x 1.5 at the fiducial, 0.8–0.9 at the θ that ``infer`` moved to) raw
#: inputs kept 11 % (σ = 1.5) and 30–39 % (σ ≈ 0.8) of det F, log 84–93 %; a
#: positive Gaussian of relative spread 0.1–0.3 (std of ln x about the same) stays
#: untransformed, where either choice works.
AUTO_SPREAD = 0.5


def choose_transform(stats: InputStats) -> str:
    """The transform ``auto`` stands for: ``log`` when every input is > 0 and
    ln x spreads by at least :data:`AUTO_SPREAD`; else ``log1p`` when every input is
    > −1 (zeros occur) and log1p x spreads that much; else ``none``. Needs the
    ``none``, ``log`` and ``log1p`` statistics (an archive manifest's
    ``input_statistics`` holds them all)."""
    for t in ("log", "log1p"):
        if t in stats.moments and stats.valid(t) and stats.count >= 2:
            if float(np.median(np.sqrt(stats.var(t)))) >= AUTO_SPREAD:
                return t
    return "none"


@dataclass(frozen=True)
class Normalisation:
    """(T(x) − mean)/std; ``mean`` and ``std`` broadcast against one input."""

    transform: str
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        if self.transform not in TRANSFORMS:  # "auto" is resolved before this is built
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
    """Count, mean and M2 of T(x) over batches float(n, *input_shape), in float64
    (the mergeable :class:`writers.input_stats.InputStats` the archive writers use)."""

    def __init__(self, input_shape, transform="none"):
        self.input_shape, self.transform = tuple(input_shape), transform
        self.axes = tuple(a + 1 for a in reduce_axes(self.input_shape))
        # auto: gather every transform's statistics and choose at the end
        self.stats = InputStats(
            self.input_shape, ("none", "log", "log1p") if transform == "auto" else (transform,)
        )

    @property
    def n(self) -> int:
        """Values that went into each statistic."""
        return self.stats.count

    def update(self, batch):
        self.stats.update(batch)
        if self.transform != "auto" and not self.stats.valid(self.transform):
            raise ValueError(
                f"input transform {self.transform!r} gives non-finite values "
                "(log needs inputs > 0, log1p inputs > −1)"
            )
        return self

    def finish(self) -> Normalisation:
        return from_statistics(self.stats, self.transform)


def from_statistics(stats: InputStats, transform="none") -> Normalisation:
    """The Normalisation of gathered statistics (e.g. an archive manifest's
    ``input_statistics``, :meth:`writers.input_stats.InputStats.from_json`):
    std with ddof 1, and 1 for constant elements. ``auto``: :func:`choose_transform`."""
    if transform == "auto":
        transform = choose_transform(stats)
    if not stats.valid(transform):
        raise ValueError(
            f"input transform {transform!r} is not defined on every input "
            "(log needs inputs > 0, log1p inputs > −1) or they hold non-finite values"
        )
    if stats.count < 2:
        raise ValueError("input normalisation needs at least two fiducial inputs")
    mean, std = stats.mean(transform), np.sqrt(stats.var(transform))
    std = np.where(std > 1e-6 * (1 + np.abs(mean)), std, 1.0)  # constant elements
    return Normalisation(transform, np.float32(mean), np.float32(std))


def from_arrays(fiducial, transform="none", input_shape=None) -> Normalisation:
    """Normalisation of fiducial inputs float(n_s, *input_shape); ``transform``
    one of :data:`TRANSFORMS` or ``auto`` (:func:`choose_transform`)."""
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

    hook = getattr(apply, "calibrate", None)
    if hook is not None:  # models.calibrate sees what the network sees
        normalised_apply.calibrate = lambda w, x: hook(w, n(jnp.asarray(x, jnp.float32)))

    return init, normalised_apply
