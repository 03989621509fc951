"""The two-pass accumulated gradient over a host and several XLA devices.

Pass 1 streams every batch through the network on its device and keeps only
the raw outputs, placed by global position. The host computes the loss, its
statistics and the cotangents d loss / d outputs (they are tiny). Pass 2
streams the same batches again; each batch's contribution to d loss / d w is
one ``jax.vjp`` with the cotangent rows of *its own positions*, summed on its
device; the devices' sums are added on the host.

The network sees ``n_per_device`` samples at a time (a source's ``unit``; sources
hand out whole multiples of it, ``sources.BATCH_BYTES``, split again here), but up
to ``group`` consecutive batches of a device travel and are dispatched together and
scanned over inside one compiled call: per-call dispatch and transfer costs dominate
small batches otherwise (on CPU a group goes through as one batch, see ``fuse``). Groups are
dispatched round-robin over devices (JAX dispatch is asynchronous, so devices
compute in parallel) with at most ``in_flight`` unfinished groups per device,
which bounds memory whatever the data size.
"""

from __future__ import annotations

import functools
from collections import deque
from itertools import zip_longest

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .resident import Resident, resident
from .resident import dispatch as resident_dispatch
from .resident import iteration as resident_iteration
from .resident import warm as resident_warm
from .residuals import Kept, carries_positions
from .sources import OrderError
from .stats import loss_and_stats

__all__ = ["TwoPass", "OrderError"]


class TwoPass:
    """Pass-1 outputs, host loss gradient and pass-2 VJPs for one data mode."""

    def __init__(
        self,
        mode,
        host,
        devices,
        in_flight: int = 2,
        group_bytes: int = 8 << 20,
        max_group: int = 64,
        fuse=None,
        residual_bytes: int = 512 << 20,
    ):
        self.mode, self.host, self.devices = mode, host, list(devices)
        self.in_flight, self.group_bytes, self.max_group = in_flight, group_bytes, max_group
        # XLA:CPU runs convolutions inside loops (lax.map/scan) several times slower than
        # outside, and a CPU "device" has host memory: there a group goes through the
        # network as one batch. On accelerators the group is scanned n_per_device at a time.
        self.fuse = all(d.platform == "cpu" for d in self.devices) if fuse is None else fuse
        #: most bytes of network activations kept from pass 1 to pass 2 when the training
        #: data are resident on the devices (:mod:`imnn_stream.resident`)
        self.residual_bytes = residual_bytes
        self._checks = {}
        #: progress hook ``on_group(tag, kind, n_records)``, called as each group of
        #: batches is read (both passes): lets a progress bar move within an iteration
        self.on_group = None

        def host_loss(raw, λ, α):
            (value, st), cot = jax.value_and_grad(
                lambda r: loss_and_stats(*mode.assemble(r), λ, α), has_aux=True
            )(raw)
            return st, cot

        self._host_loss = jax.jit(host_loss)
        self._host_stats = jax.jit(lambda raw, λ, α: loss_and_stats(*mode.assemble(raw), λ, α)[1])
        self._assemble = jax.jit(mode.assemble)
        self._zeros = jax.jit(jnp.zeros_like)
        self._w_placed = (None, None)
        self._keep_streamed = True
        self._layout = None  # the weights' structure, shapes and dtypes

    def _compile(self, w):
        """The per-device calls for weights shaped as ``w``. The devices get the weights,
        and give back their gradient sums, as one flat vector: one transfer per device
        rather than one per leaf (profiled, issue 10: placing a 6-leaf MLP on two
        devices was ~7 % of a toy iteration)."""
        flat, unravel = ravel_pytree(w)
        self._ravel = jax.jit(lambda v: ravel_pytree(v)[0])
        self._unravel = jax.jit(unravel)
        self._fwd, self._bwd, fns = {}, {}, {}
        for k in self.mode.kinds:
            fns[k] = fn = functools.partial(_unflat, self.mode.outputs[k], unravel)
            self._fwd[k] = jax.jit(self._forward(fn, self.fuse))
            self._bwd[k] = jax.jit(self._accumulate(fn, self.fuse), donate_argnums=3)
        self.resident = Resident(fns, self.residual_bytes)
        self._keep_streamed = True  # until a pass's residuals do not fit (residuals.Kept)

    def _place_weights(self, w):
        """w on every device as float(n_weights,), placed once for the passes of one
        iteration that share it (pass 1, pass 2 and the validation pass)."""
        leaves, tree = jax.tree_util.tree_flatten(w)
        last, placed = self._w_placed
        # the same immutable jax arrays (numpy ones could have been written since)
        same = last is not None and len(last) == len(leaves)
        if same and all(a is b and isinstance(a, jax.Array) for a, b in zip(leaves, last)):
            return placed
        layout = (tree, tuple((np.shape(a), _dtype(a)) for a in leaves))
        if layout != self._layout:
            self._compile(w)
            self._layout = layout
        flat = self._ravel(w)
        placed = [jax.device_put(flat, dev) for dev in self.devices]
        self._w_placed = (leaves, placed)
        return placed

    @staticmethod
    def _forward(fn, fuse):
        """(w, group) -> outputs float(k·n, ...): a group of k batches of n samples
        float(k, n, ...) n samples at a time, or, when ``fuse``, a group float(k·n, ...)
        all at once."""

        def forward(w, batches):
            if fuse:
                return fn(w, batches)
            return _merge(jax.lax.map(lambda b: fn(w, b), batches))

        return forward

    @staticmethod
    def _accumulate(fn, fuse):
        """(acc + Σ_b VJP of fn(·, batch_b) at w with cotangent_b, a one-element token
        of it): one batch at a time, or one VJP over the merged group when ``fuse``.
        The token is what a later dispatch waits on (the sum itself is donated to the
        next step)."""

        def one(w, batch, cot):
            _, vjp = jax.vjp(lambda v: fn(v, batch), w)
            return vjp(cot)[0]

        def step(w, batches, cots, acc):
            if fuse:
                acc = acc + one(w, batches, cots)
            else:

                def body(acc, bc):
                    return acc + one(w, *bc), None

                acc = jax.lax.scan(body, acc, (batches, cots))[0]
            return acc, acc[:1]

        return step

    # -- streaming over devices ------------------------------------------------

    def _batches(self, tag, kind, sources):
        """Round-robin (device, batch number, positions, batch) over the devices'
        sources, checking every batch against the first pass's record."""
        epochs = [s.epoch() for s in sources]
        for b, row in enumerate(zip_longest(*epochs)):
            for d, item in enumerate(row):
                if item is None:
                    continue
                positions, batch, check = item
                key = (tag, kind, d)
                seen = self._checks.setdefault(key, [])
                if b < len(seen):
                    if not _same(seen[b], check):
                        raise OrderError(
                            f"{tag} data, kind '{kind}', device {d}, batch {b}: this pass saw "
                            "different samples (or a different order) than the first pass — is the "
                            "iterator shuffled, read in parallel, or of the wrong epoch length? "
                            "Gradients would be paired with the wrong samples."
                        )
                else:
                    seen.append(check)
                yield d, b, positions, batch

    def _groups(self, tag, kind, sources):
        """(device, positions int64(k·n), group) for up to ``max_group`` consecutive
        equal-sized batches of one device, at most ``group_bytes`` of input per group:
        the batches stacked to float(k, n, ...), or joined to float(k·n, ...) when
        ``fuse``. A batch already on a device (a cached epoch kept there,
        ``StreamSource``'s ``place``) is a group of its own, not copied."""
        pending = {}
        group = None
        # Sources that hand out a new array per batch, never written again (archive
        # streams, the decoded-epoch cache), need no copy: a one-batch group (large
        # batches: a 64×64 batch of 1000 records is 16 MiB) is a view of the batch
        # rather than a second buffer of its size (issue 10: part of the growth of a
        # 5 GB archive's fit, 915 → 646 MiB with the allocator bound).
        fresh = bool(sources) and all(getattr(s, "fresh_batches", False) for s in sources)
        # sources hand out whole multiples of n_per_device at once (``sources.BATCH_BYTES``);
        # a scanned group goes through the network n_per_device (the ``unit``) at a time
        units = {getattr(s, "unit", None) for s in sources}
        unit = units.pop() if len(units) == 1 and not self.fuse else None

        def flush(d):
            items = pending.pop(d)
            positions = np.concatenate([p for p, _ in items])
            if (fresh or self.fuse) and len(items) == 1:
                first = items[0][1]
                stacked = first if self.fuse else {f: a[None] for f, a in first.items()}
            else:
                join = np.concatenate if self.fuse else np.stack
                stacked = {f: join([b[f] for _, b in items]) for f in items[0][1]}
            if self.on_group is not None:
                self.on_group(tag, kind, len(positions))
            return d, positions, stacked

        for d, b, positions, batch in self._batches(tag, kind, sources):
            if _placed(batch):
                if d in pending:
                    yield flush(d)
                pending[d] = [(positions, batch)]
                yield flush(d)
                continue
            for positions, batch in _split(positions, batch, unit):
                items = pending.get(d)
                if items and len(positions) != len(items[0][0]):
                    yield flush(d)
                pending.setdefault(d, []).append((positions, batch))
                if group is None:
                    nbytes = sum(a.nbytes for a in batch.values())
                    group = int(max(1, min(self.max_group, self.group_bytes // max(nbytes, 1))))
                if len(pending[d]) >= group:
                    yield flush(d)
        for d in sorted(pending):
            yield flush(d)

    def _dispatch(self, w, sources, tag, kept=None):
        """Pass 1 dispatched (asynchronously) over every group: dict kind -> list of
        (positions, device outputs); at most ``in_flight`` unfinished groups per device.
        ``kept``: a :class:`imnn_stream.residuals.Kept` that keeps the groups' VJPs
        for pass 2 where they fit."""
        w_dev = self._place_weights(w)
        if self.fuse and resident(sources):  # joint calls, nothing to transfer or bound
            return resident_dispatch(self, w_dev, sources, tag)
        pending = {k: [] for k in self.mode.kinds}
        window = [deque() for _ in self.devices]
        for kind in self.mode.kinds:
            for d, positions, batch in self._groups(tag, kind, sources[kind]):
                if not _placed(batch):
                    batch = jax.device_put(batch, self.devices[d])
                if kept is None:
                    out = self._fwd[kind](w_dev[d], batch)
                else:
                    out = kept.forward(kind, d, w_dev[d], positions, batch)
                pending[kind].append((positions, out))
                window[d].append(out)
                if len(window[d]) > self.in_flight:
                    jax.block_until_ready(window[d].popleft())
        return pending

    def _collect(self, pending, tag):
        """Dispatched pass-1 outputs -> host arrays by global position (every process's)."""
        raw = {}
        for kind in self.mode.kinds:
            count = self.mode.counts[kind]
            positions = [p for p, _ in pending[kind]]
            outs = jax.device_get([o for _, o in pending[kind]])
            pending[kind] = None  # the device copies: only the host copy lives on
            positions, outs = self._exchange(positions, outs)
            _check_coverage(tag, kind, positions, count)
            if not positions:
                raw[kind] = None  # an empty kind: `remaining` when n_s = n_d
                continue
            # placed chunk by chunk: no concatenated copy of every output (issue 10:
            # what grows with n_s is the outputs, a few bytes per sample; each copy
            # of them counts)
            raw[kind] = jax.tree_util.tree_map(lambda *xs: _place(xs, positions, count), *outs)
            del outs
        for kind in self.mode.kinds:
            if raw[kind] is None:
                x = jax.tree_util.tree_leaves(
                    [raw[k] for k in self.mode.kinds if raw[k] is not None]
                )[0]
                raw[kind] = np.zeros((0,) + x.shape[1:], x.dtype)
        return raw

    def value_and_grad(self, w, sources, λ, α):
        """(d loss / d w on the host, statistics dict) over all sources."""
        g, st, _ = self.iteration(w, sources, None, λ, α)
        return g, st

    def iteration(self, w, sources, validation, λ, α):
        """(d loss / d w, training statistics, validation statistics or None): the
        training passes with the validation pass dispatched between them — both first
        passes use the same ``w``, so the devices compute the validation outputs while
        the host computes the loss, and it costs no wait of its own."""
        if self.fuse and resident(sources):
            return resident_iteration(self, w, sources, validation, λ, α)
        # fused (CPU) groups keep their pass-1 VJPs where the whole pass's fit
        self._place_weights(w)  # first: a new layout resets what Kept reads
        kept = Kept(self) if self.fuse else None
        pending = self._dispatch(w, sources, "train", kept)
        val = None if validation is None else self._dispatch(w, validation, "validation")
        st, cot = self._loss(pending, λ, α)
        if kept is not None and kept.on:  # pass 2 is the backward half only
            again = None if carries_positions(sources) else sources
            acc = kept.pass2(self._place_weights(w), cot, again)
        else:
            acc = self._pass2(w, sources, cot)
        vst = None if val is None else self._host_stats(self._put(val, "validation"), λ, α)
        g = self._total(acc)
        if self.fuse and resident(sources):  # these passes filled the cache
            resident_warm(self, w, sources, validation)
        return g, st, vst

    def _loss(self, pending, λ, α):
        """Dispatched training pass-1 outputs -> (statistics, cotangents d loss / d outputs
        on the host, dict kind -> float(count, ...))."""
        # the outputs placed on the host device and the host copy dropped before the loss
        # runs (jax.device_put copies on CPU): what grows with n_s at the end of pass 1 is
        # one copy of the outputs at a time, beside the loss's own (issue 10: ~20 MB a copy
        # for a 2.46 M-record archive; within the run-to-run spread of its peak RSS)
        raw = jax.device_put(self._collect(pending, "train"), self.host)
        st, cot = self._host_loss(raw, λ, α)
        del raw  # pass 2 needs only the cotangents (one host copy of them)
        return st, jax.device_get(cot)

    def _total(self, acc):
        """The devices' gradient sums float(n_weights,) (a list in device order) -> the
        gradient pytree on the host: one transfer for all, added in device order."""
        return self._unravel(self._reduce(functools.reduce(np.add, jax.device_get(acc))))

    def _pass2(self, w, sources, cot):
        """Pass 2 dispatched: per device, the sum of its batches' VJPs (device arrays)."""
        w_dev = self._place_weights(w)
        acc = [self._zeros(wd) for wd in w_dev]
        window = [deque() for _ in self.devices]
        for kind in self.mode.kinds:
            for d, positions, batch in self._groups("train", kind, sources[kind]):
                # the cotangent rows of the group's positions, shaped as its batches
                lead = next(iter(batch.values())).shape[: 1 if self.fuse else 2]
                c = jax.tree_util.tree_map(
                    lambda a: a[positions].reshape(lead + a.shape[1:]), cot[kind]
                )
                if _placed(batch):
                    c = jax.device_put(c, self.devices[d])
                else:
                    batch, c = jax.device_put((batch, c), self.devices[d])
                acc[d], done = self._bwd[kind](w_dev[d], batch, c, acc[d])
                # at most in_flight unfinished groups per device (their inputs are what
                # pass 2 holds: the bound of issue 10's flat-memory measurement): wait for
                # the oldest, not the newest (that idled the device until the host
                # dispatched again, and kept the other devices waiting for their groups)
                window[d].append(done)
                if len(window[d]) >= self.in_flight:
                    jax.block_until_ready(window[d].popleft())
        return acc

    def _put(self, pending, tag):
        return jax.device_put(self._collect(pending, tag), self.host)

    # -- across processes (imnn_stream.distributed overrides these two) ---------------

    def _exchange(self, positions, outs):
        """Pass-1 (positions, outputs) of this process's devices -> those of every
        process's devices (one process: unchanged)."""
        return positions, outs

    def _reduce(self, g):
        """This process's gradient sum (host arrays) -> the sum over every process, on
        the host device (one process: the same sum)."""
        return jax.device_put(g, self.host)

    def stats(self, w, sources, λ, α, tag="validation"):
        """Statistics (no gradient): one pass."""
        return self._host_stats(self._put(self._dispatch(w, sources, tag), tag), λ, α)

    def summaries(self, w, sources, tag):
        """(x float(n_s, n_summaries), dx float(n_d, n_summaries, n_params)) on the host."""
        return jax.device_get(self._assemble(self._put(self._dispatch(w, sources, tag), tag)))

    def forget(self, tag):
        """Drop the first-pass record of ``tag`` (its data changes, e.g. new simulations)."""
        for key in [k for k in self._checks if k[0] == tag]:
            del self._checks[key]


def _merge(tree):
    """(k, n, ...) leaves -> (k·n, ...)."""
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), tree)


def _split(positions, batch, unit):
    """A source batch -> pieces of at most ``unit`` samples (None: the batch whole)."""
    n = len(positions)
    if not unit or n <= unit:
        yield positions, batch
        return
    for a in range(0, n, unit):
        yield positions[a : a + unit], {f: v[a : a + unit] for f, v in batch.items()}


def _unflat(fn, unravel, flat, batch):
    """fn(weights, batch) with the weights given as float(n_weights,)."""
    return fn(unravel(flat), batch)


def _dtype(a):
    return np.dtype(a.dtype) if hasattr(a, "dtype") else np.asarray(a).dtype


def _placed(batch):
    """Whether a batch's arrays are already on a device (jax arrays)."""
    return all(isinstance(a, jax.Array) for a in batch.values())


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def _check_coverage(tag, kind, positions, count):
    """Every position 0..count−1 exactly once, else a precise error. One byte per
    position (not a concatenated copy and a count of each: those were 16 bytes a
    sample at the end of pass 1, when memory peaks): ``count`` positions in range
    that leave no position unseen are each there exactly once."""
    seen = np.zeros(count, np.uint8)
    total = 0
    for p in positions:
        p = np.asarray(p)
        total += len(p)
        outside = (p < 0) | (p >= count)
        if outside.any():
            raise OrderError(
                f"{tag} data, kind '{kind}': positions {p[outside][:5].tolist()} are outside "
                f"0..{count - 1} (seed indices not of this archive or epoch too long)"
            )
        seen[p] = 1
    if total == count and seen.all():
        return
    # the error path: name the duplicated and missing positions
    n = np.bincount(np.concatenate(positions), minlength=count) if positions else seen
    dup, missing = np.flatnonzero(n > 1), np.flatnonzero(n == 0)
    raise OrderError(
        f"{tag} data, kind '{kind}': expected {count} samples once each, got "
        f"{total}; duplicated {dup[:5].tolist()}, missing {missing[:5].tolist()}"
    )


def _place(chunks, positions, count):
    """float(count, ...) with row positions[i][j] = chunks[i][j]."""
    out = np.empty((count,) + chunks[0].shape[1:], chunks[0].dtype)
    for p, c in zip(positions, chunks):
        out[p] = c
    return out
