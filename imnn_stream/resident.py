"""Both passes of a two-pass iteration over data already held on the devices.

When every training batch is already on its device (a cached epoch kept on a CPU
device: ``StreamSource``'s ``place``; in-memory data copied onto the devices:
``ArraySource``'s ``place``; an iteration's simulator keys, the simulations being
run inside the calls: ``strategies.simulator_sources``), nothing is read and
nothing is transferred:
what is left of the two-pass cost is the compute and the number of calls. Here each
device runs

* pass 1 as **one** call over all its groups of every kind (not one per group; up
  to ``MAX_JOINT`` groups and ``group_bytes`` of input a call), and keeps the
  network's VJP residuals (its activations) on the device for as many calls as fit
  ``residual_bytes``: pass 2 of those is then the backward half only, not a second
  forward;
* pass 2 as one call: the VJP of all its groups with their cotangent rows.

Measured on the toy problem (issue 10, 2 CPU devices): the compute floor of an
iteration from 9–11 ms (one call per group, forward twice) to 7–7.7 ms, the
in-memory trainer's own (6.3–7.9 ms). The residuals are the one thing that grows
here with the data, which is why they have a budget; beyond it pass 2 recomputes
the forward, as the streaming path does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .sources import every_source

__all__ = ["Resident", "resident", "iteration", "dispatch", "warm"]


def resident(sources) -> bool:
    """Whether every source of every kind (dict kind -> per-device list) hands out
    batches already on its device."""
    return every_source(sources, "resident")


class Resident:
    """Joint per-device calls for the kinds' network outputs.

    outputs: dict kind -> fn(w float(n_weights,), batch) -> outputs float(n, ...).
    residual_bytes: most bytes of pass-1 residuals kept, over all devices.
    """

    def __init__(self, outputs, residual_bytes: int):
        self.outputs, self.residual_bytes = outputs, residual_bytes
        self.forward = jax.jit(self._forward, static_argnums=0)
        self.forward_vjp = jax.jit(self._forward_vjp, static_argnums=0)
        self.backward = jax.jit(self._backward, static_argnums=0, donate_argnums=4)
        self.apply = jax.jit(_apply, donate_argnums=2)
        self._fits = {}  # (kinds, shapes) -> residual bytes of one device

    def _forward(self, kinds, w, batches):
        """(outputs of batches[i] for kind kinds[i], ...)."""
        return tuple(self.outputs[k](w, b) for k, b in zip(kinds, batches))

    def _forward_vjp(self, kinds, w, batches):
        return jax.vjp(lambda v: self._forward(kinds, v, batches), w)

    def _backward(self, kinds, w, batches, cots, acc):
        """acc + Σ_i VJP of kind kinds[i] at w over batches[i] with cotangents cots[i]:
        float(n_weights,)."""
        return acc + self._forward_vjp(kinds, w, batches)[1](cots)[0]

    def residual_size(self, kinds, w, batches) -> int:
        """Bytes of the VJP residuals of one device's groups (traced once per shape)."""
        key = (kinds, tuple(tuple(a.shape) for b in batches for a in b.values()))
        if key not in self._fits:
            res = jax.eval_shape(lambda v, b: self._forward_vjp(kinds, v, b)[1], w, batches)
            leaves = jax.tree_util.tree_leaves(res)
            self._fits[key] = int(sum(np.prod(x.shape) * x.dtype.itemsize for x in leaves))
        return self._fits[key]


def _apply(vjp, cots, acc):
    return acc + vjp(cots)[0]


#: most groups in one joint call: bounds the compiled program (each group is its own
#: application of the network in it) and the compile time of a large cached epoch
MAX_JOINT = 8


def iteration(engine, w, sources, validation, λ, α):
    """``TwoPass.iteration`` for resident training data (``resident(sources)``):
    (d loss / d w, training statistics, validation statistics or None)."""
    w_dev = engine._place_weights(w)  # first: it compiles the calls for w's shapes
    chunks = _chunks(engine, "train", sources)
    outs, vjps = _first_pass(engine, w_dev, chunks)
    val = None if validation is None else engine._dispatch(w, validation, "validation")
    pending = {k: [] for k in engine.mode.kinds}
    for (_, kinds, positions, _), o in zip(chunks, outs):
        for kind, p, x in zip(kinds, positions, o):
            pending[kind].append((p, x))
    del outs
    st, cot = engine._loss(pending, λ, α)
    cots = [
        tuple(jax.tree_util.tree_map(lambda a: a[p], cot[k]) for k, p in zip(kinds, positions))
        for _, kinds, positions, _ in chunks
    ]
    acc = _second_pass(engine, w_dev, chunks, vjps, cots)
    vst = None if val is None else engine._host_stats(engine._put(val, "validation"), λ, α)
    return engine._total(acc), st, vst


def warm(engine, w, sources, validation):
    """Run the resident calls once over ``sources`` (and resident ``validation``),
    results dropped: called in the iteration whose passes filled the cache, so that
    their compilation falls in that (the first) ``fit`` call rather than the next one
    (measured: 1.6 s of a field fit's second call). One more pass of compute, once."""
    hook, engine.on_group = engine.on_group, None  # not a pass of the progress bar
    try:
        w_dev = engine._place_weights(w)
        chunks = _chunks(engine, "train", sources)
        outs, vjps = _first_pass(engine, w_dev, chunks)
        zeros = [jax.tree_util.tree_map(jnp.zeros_like, o) for o in outs]
        done = _second_pass(engine, w_dev, chunks, vjps, zeros)
        if validation is not None and resident(validation):
            done.append(engine._dispatch(w, validation, "validation"))
        jax.block_until_ready(done)
    finally:
        engine.on_group = hook


def _first_pass(engine, w_dev, chunks):
    """Pass 1 over the chunks: (outputs per chunk, VJPs per chunk, None where not
    kept). The VJPs (their residuals) of the leading chunks are kept while their total
    fits ``residual_bytes``; pass 2 recomputes the forward of the others."""
    r = engine.resident
    left = r.residual_bytes
    outs, vjps = [], []
    for d, kinds, _, b in chunks:
        size = r.residual_size(kinds, w_dev[d], b)
        if size <= left:
            left -= size
            o, v = r.forward_vjp(kinds, w_dev[d], b)
        else:
            left = -1  # in order: a later, smaller chunk does not jump the queue
            o, v = r.forward(kinds, w_dev[d], b), None
        outs.append(o)
        vjps.append(v)
    return outs, vjps


def _second_pass(engine, w_dev, chunks, vjps, cots):
    """Pass 2: per device (in device order), the sum of its chunks' VJPs with the
    cotangents ``cots`` (per chunk, a tuple per group), float(n_weights,)."""
    r = engine.resident
    acc = {d: engine._zeros(w_dev[d]) for d in sorted({c[0] for c in chunks})}
    for i, ((d, kinds, _, b), c) in enumerate(zip(chunks, cots)):
        c = jax.device_put(c, engine.devices[d])
        if vjps[i] is not None:
            acc[d] = r.apply(vjps[i], c, acc[d])
            vjps[i] = None  # its residuals are freed as soon as it has run
        else:
            acc[d] = r.backward(kinds, w_dev[d], b, c, acc[d])
    return [acc[d] for d in sorted(acc)]


def _chunks(engine, tag, sources):
    """[(device, kinds, positions, batches)]: every group of every kind (kinds in mode
    order, the order check running as they are listed), per device consecutive
    groups joined into chunks of at most MAX_JOINT groups and ``engine.group_bytes``
    of input (a chunk of one group may be larger)."""
    per = {}
    for kind in engine.mode.kinds:
        for d, positions, batch in engine._groups(tag, kind, sources[kind]):
            per.setdefault(d, []).append((kind, positions, batch))
    out = []
    for d, items in per.items():
        chunk, nbytes = [], 0
        for item in items:
            size = sum(a.nbytes for a in item[2].values())
            if chunk and (len(chunk) >= MAX_JOINT or nbytes + size > engine.group_bytes):
                out.append(chunk)
                chunk, nbytes = [], 0
            chunk.append((d, item))
            nbytes += size
        out.append(chunk)
    return [
        (
            c[0][0],
            tuple(k for _, (k, _, _) in c),
            tuple(p for _, (_, p, _) in c),
            tuple(b for _, (_, _, b) in c),
        )
        for c in out
        if c
    ]


def dispatch(engine, w_dev, sources, tag):
    """Pass 1 of resident data (validation, statistics, summaries), one call per
    chunk: dict kind -> list of (positions, device outputs), as ``TwoPass._dispatch``."""
    pending = {k: [] for k in engine.mode.kinds}
    for d, kinds, positions, b in _chunks(engine, tag, sources):
        outs = engine.resident.forward(kinds, w_dev[d], b)
        for kind, p, o in zip(kinds, positions, outs):
            pending[kind].append((p, o))
    return pending
