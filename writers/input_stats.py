"""Input statistics of an archive's fiducial training data, gathered as it is written.

The trainers standardise their inputs, (T(x) − mean)/std, inside the network
(``imnn_stream.normalise``).  The mean and spread of T(x) over the fiducial
training inputs are gathered here while the shards are written (``generate``,
``write_arrays``) or checked (``adopt``, resumed ``generate``, the validator),
and recorded in the manifest's ``input_statistics``, so a fit needs no extra
pass over a large archive.

Statistics are per element for vector inputs (rank ≤ 1), per channel (the last
axis) for rank-3 inputs, and one scalar for 2-D fields and higher ranks
(:func:`reduce_axes`).  For each transform T in :data:`TRANSFORMS` (``none``,
``log``, ``log1p``, ``asinh``) they are ``count`` (values per statistic), ``mean`` and
``m2`` (the sum of squared deviations from the mean) of T(x) in float64,
merged across batches and shards with the parallel update of Chan, Golub and
LeVeque (order independent up to rounding).  A transform not defined on every
value (``log`` of a value ≤ 0, ``log1p`` of a value ≤ −1) or any non-finite value makes the
transform's statistics ``null`` (invalid).

JSON (the manifest field, docs/archive-contract.md)::

    {"split": "train", "kinds": ["fiducial"], "records": n_s,
     "axes": [int, ...],          # axes of one input reduced over
     "count": int,                # values per statistic = records · reduced size
     "transforms": {"none": {"mean": M, "m2": M}, "log": {...} | null, "log1p": {...} | null, "asinh": {...}}}

``M``: a number or a list, of shape :func:`stats_shape` (input_shape).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np

__all__ = [
    "TRANSFORMS",
    "FIDUCIAL_KINDS",
    "reduce_axes",
    "stats_shape",
    "InputStats",
    "StatsRecords",
    "json_errors",
    "merge_all",
]

#: elementwise transforms summarised (imnn_stream.normalise applies the same)
TRANSFORMS = ("none", "log", "log1p", "asinh")
#: kinds whose ``data`` are fiducial simulations (not finite differences or dsim/dθ)
FIDUCIAL_KINDS = ("fiducial", "main", "remaining")

_FUNCS = {"none": None, "log": np.log, "log1p": np.log1p, "asinh": np.arcsinh}


def reduce_axes(input_shape) -> tuple:
    """Axes of one input its statistics are reduced over: none for vectors
    (rank ≤ 1, per element), all but the last for rank-3 inputs (per channel),
    all for 2-D fields and other ranks (one scalar)."""
    rank = len(tuple(input_shape))
    if rank <= 1:
        return ()
    if rank == 3:
        return (0, 1)
    return tuple(range(rank))


def stats_shape(input_shape) -> tuple:
    """Shape of each statistic (mean, m2) of inputs of ``input_shape``."""
    axes = reduce_axes(input_shape)
    return tuple(n for a, n in enumerate(tuple(input_shape)) if a not in axes)


class InputStats:
    """Mergeable count, mean and M2 of T(x) for each transform, per element or channel.

    ``moments[t]`` is ``(mean, m2)`` float64 arrays of :func:`stats_shape`, or
    None once transform ``t`` met a value it is not defined on.
    """

    def __init__(self, input_shape, transforms=TRANSFORMS):
        self.input_shape = tuple(int(n) for n in input_shape)
        self.axes = reduce_axes(self.input_shape)
        self.records = 0
        self.count = 0
        unknown = set(transforms) - set(TRANSFORMS)
        if unknown:
            raise ValueError(f"unknown input transforms {sorted(unknown)}: expected {TRANSFORMS}")
        zero = np.zeros(stats_shape(self.input_shape))
        self.moments: dict = {t: (zero, zero) for t in transforms}

    @property
    def per_value(self) -> int:
        """Values of one input that go into each statistic."""
        return math.prod(self.input_shape[a] for a in self.axes)

    def valid(self, transform: str) -> bool:
        return self.moments.get(transform) is not None

    def update(self, batch) -> "InputStats":
        """Add the inputs ``batch`` float(n, *input_shape)."""
        x = np.asarray(batch, np.float64)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"inputs of shape {x.shape[1:]}, expected {self.input_shape}")
        n = len(x)
        if not n:
            return self
        shape = stats_shape(self.input_shape)
        # the reduced axes lead (records, then the reduced axes of one input):
        # one column per statistic
        x = x.reshape(-1, math.prod(shape))
        other = InputStats.__new__(InputStats)
        other.input_shape, other.axes = self.input_shape, self.axes
        other.records, other.count = n, len(x)
        other.moments = {}
        for t in self.moments:
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                y = x if _FUNCS[t] is None else _FUNCS[t](x)
                mean = y.mean(0)
            # a non-finite value (or log1p of a value ≤ −1) makes its column's mean
            # non-finite: no separate pass over the values to find them
            if not np.isfinite(mean).all():
                other.moments[t] = None
                continue
            d = np.subtract(y, mean, out=y if y is not x else None)
            other.moments[t] = (mean.reshape(shape), np.einsum("ij,ij->j", d, d).reshape(shape))
        return self._absorb(other)

    def _absorb(self, other: "InputStats") -> "InputStats":
        na, nb = self.count, other.count
        n = na + nb
        for t in self.moments:
            a, b = self.moments[t], other.moments.get(t)
            if a is None or b is None:
                self.moments[t] = None
            elif nb == 0:
                continue
            elif na == 0:
                self.moments[t] = b
            else:  # Chan, Golub & LeVeque's pairwise update
                delta = b[0] - a[0]
                self.moments[t] = (a[0] + delta * (nb / n), a[1] + b[1] + delta**2 * (na * nb / n))
        self.records += other.records
        self.count = n
        return self

    def merge(self, other: "InputStats") -> "InputStats":
        """A new InputStats of both (same input shape); transforms present in both."""
        if other.input_shape != self.input_shape:
            raise ValueError(
                f"cannot merge statistics of inputs {other.input_shape} into {self.input_shape}"
            )
        out = InputStats(self.input_shape, [t for t in self.moments if t in other.moments])
        return out._absorb(self)._absorb(other)

    def mean(self, transform: str) -> np.ndarray:
        return self.moments[transform][0]

    def var(self, transform: str, ddof: int = 1) -> np.ndarray:
        return self.moments[transform][1] / max(self.count - ddof, 1)

    # ------------------------------------------------------------ JSON
    def to_json(self, split: str = "train", kinds=None) -> dict:
        out = {
            "split": split,
            "kinds": list(kinds or []),
            "records": self.records,
            "axes": list(self.axes),
            "count": self.count,
            "transforms": {},
        }
        for t, mm in self.moments.items():
            out["transforms"][t] = (
                None if mm is None else {"mean": mm[0].tolist(), "m2": mm[1].tolist()}
            )
        return out

    @classmethod
    def from_json(cls, d: dict, input_shape) -> "InputStats":
        """From :meth:`to_json`'s dict (check it first with :func:`json_errors`)."""
        out = cls(input_shape, list(d["transforms"]))
        out.records, out.count = int(d["records"]), int(d["count"])
        for t, mm in d["transforms"].items():
            out.moments[t] = (
                None
                if mm is None
                else (np.asarray(mm["mean"], np.float64), np.asarray(mm["m2"], np.float64))
            )
        return out

    def differences(self, other: "InputStats", rtol: float = 1e-6) -> list[str]:
        """How ``other`` disagrees with these statistics beyond ``rtol``, in the
        transforms both hold (empty if it does not)."""
        e = []
        if (self.records, self.count) != (other.records, other.count):
            e.append(
                f"records/count {other.records}/{other.count}, expected {self.records}/{self.count}"
            )
        for t in [t for t in other.moments if t in self.moments]:
            a, b = self.moments[t], other.moments[t]
            if (a is None) != (b is None):
                state = {True: "invalid", False: "valid"}
                e.append(f"{t}: {state[b is None]}, expected {state[a is None]}")
            elif a is not None:
                scale = np.sqrt(self.var(t, 0)) + np.abs(a[0]) + 1e-300
                if not np.all(np.abs(a[0] - b[0]) <= rtol * scale):
                    e.append(f"{t}: mean differs from the records' beyond rtol {rtol:g}")
                if not np.all(np.abs(a[1] - b[1]) <= rtol * np.abs(a[1]) + 1e-300):
                    e.append(f"{t}: m2 differs from the records' beyond rtol {rtol:g}")
        return e


def merge_all(stats: Iterable[Optional[InputStats]]) -> Optional[InputStats]:
    """All of ``stats`` merged in order; None when any is None or there are none."""
    out = None
    for s in stats:
        if s is None:
            return None
        out = s if out is None else out.merge(s)
    return out


class StatsRecords:
    """One shard's encoded records together with the inputs they encode.

    ``pairs``: an iterable of ``(data float(n, *input_shape) or None, records)``;
    iterating yields each pair's records after adding its data to ``stats``, so
    the shard writer (:func:`writers.shard.write_shard`) gathers the statistics
    as the records stream into the file and puts them in its FileMeta. Set
    ``stats`` to None before iterating to skip them (shards that are not
    fiducial training data).
    """

    def __init__(self, pairs: Iterable, input_shape):
        self.pairs = pairs
        self.stats: Optional[InputStats] = InputStats(input_shape)

    def __iter__(self):
        for data, records in self.pairs:
            if data is not None and self.stats is not None:
                self.stats.update(data)
            yield from records


def json_errors(d, input_shape, where: str = "input_statistics") -> list[str]:
    """One-line problems of an ``input_statistics`` JSON object for inputs of
    ``input_shape`` (types, axes, and each statistic's shape)."""
    if not isinstance(d, dict):
        return [f"{where}: expected an object or null, got {d!r:.60}"]
    e = []
    for key in ("records", "count"):
        x = d.get(key)
        if not isinstance(x, int) or isinstance(x, bool) or x < 0:
            e.append(f"{where}.{key}: expected an integer >= 0, got {x!r:.60}")
    if not isinstance(d.get("split"), str):
        e.append(f"{where}.split: expected a string, got {d.get('split')!r:.60}")
    k = d.get("kinds")
    if not isinstance(k, list) or not all(isinstance(x, str) for x in k):
        e.append(f"{where}.kinds: expected a list of kind names, got {k!r:.60}")
    axes = list(reduce_axes(input_shape))
    if d.get("axes") != axes:
        e.append(
            f"{where}.axes: expected {axes} for input_shape {list(input_shape)}, "
            f"got {d.get('axes')!r:.60}"
        )
    ts = d.get("transforms")
    if not isinstance(ts, dict) or not set(ts) <= set(TRANSFORMS):
        return e + [f"{where}.transforms: expected an object keyed by {list(TRANSFORMS)}"]
    if not e and d["count"] != d["records"] * math.prod(input_shape[a] for a in axes):
        e.append(f"{where}.count: {d['count']} is not records × values reduced per statistic")
    shape = stats_shape(input_shape)
    for t, mm in ts.items():
        if mm is None:
            continue
        if not isinstance(mm, dict) or set(mm) != {"mean", "m2"}:
            e.append(f"{where}.transforms.{t}: expected {{mean, m2}} or null")
            continue
        for key in ("mean", "m2"):
            try:
                a = np.asarray(mm[key], np.float64)
            except (TypeError, ValueError):
                e.append(f"{where}.transforms.{t}.{key}: expected numbers")
                continue
            if a.shape != shape:
                e.append(
                    f"{where}.transforms.{t}.{key}: shape {list(a.shape)}, expected "
                    f"{list(shape)} for input_shape {list(input_shape)}"
                )
            elif not np.isfinite(a).all() or (key == "m2" and (a < 0).any()):
                e.append(f"{where}.transforms.{t}.{key}: expected finite values (m2 ≥ 0)")
    return e
