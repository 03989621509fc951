"""On-disk state of a trainer, in a format that runs no code when read: the
checkpoint a killed fit resumes from (``CHECKPOINT_DIR/checkpoint.npz``) and the
save file of :meth:`Trainer.save` / :meth:`Trainer.load` (a run folder's
``imnn.npz``).

The format (version 2; version 1 was the pickle of imnn_stream 0.1.0)
------------------------------------------------------------------------
One ``.npz`` file, written and read with ``allow_pickle=False``:

* ``leaf_00000``, ``leaf_00001``, … — the array leaves of the saved pytrees
  (optimiser state, weights, best weights, …), each tree flattened with
  ``jax.tree_util.tree_leaves`` and the trees laid end to end;
* ``meta`` — UTF-8 JSON stored as a uint8 array: ``format``
  (``"imnn_stream"``), ``version``, ``kind`` (``"save"`` or ``"checkpoint"``),
  ``trees`` (``{name: [first leaf, leaf count]}``) and everything that is not a
  pytree: history (lists), monitor scalars, step, PRNG keys (uint32 lists),
  Fisher statistics (``{"dtype", "shape", "data"}``), configuration, and for a
  checkpoint the ``run`` it belongs to (see :class:`Checkpoint`). Non-finite
  numbers are written as Python's JSON writes them (``NaN``, ``Infinity``).

The tree *structure* is not stored: it is rebuilt on load from the model and the
optimiser (the trainer being loaded into, or a model spec initialised), whose
leaves must match the saved ones in count, shape and dtype; a mismatch is a
one-line :class:`FormatError` naming the file and what differs. Nothing refers
to a private module path (the pickles recorded ``optax._src…`` and
``numpy._core…``), so optax and numpy upgrades leave saved runs readable.

Why arrays plus JSON rather than orbax-checkpoint: orbax writes bucket paths
through tensorstore, which the gs:// and s3:// loopback emulators our tests use
and the :mod:`writers.fs` layer do not cover; this format goes through
:mod:`writers.fs` (read) and :mod:`writers.durable` (fsynced atomic write) like
every other file of ours, for local paths and URLs alike.

0.1.0 pickles are read only with ``allow_pickle=True`` (``--trust-pickle``),
with a one-line warning: unpickling runs whatever code the file names.
"""

from __future__ import annotations

import io
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from .loop_state import LoopState, Monitor

__all__ = [
    "Checkpoint",
    "FormatError",
    "PickleRefusedError",
    "SAVE_VERSION",
    "encode",
    "decode",
    "read_file",
    "write_file",
    "unflatten",
    "portable",
    "restore_portable",
]

FORMAT = "imnn_stream"
SAVE_VERSION = 2
_STATISTICS = ("F", "invF", "C", "invC", "dμ_dθ", "μ")
_MONITOR_SCALARS = ("best", "best_detF", "count", "stop", "bad")


class FormatError(ValueError):
    """A save file or checkpoint is not one of ours, or does not fit the model."""


class PickleRefusedError(FormatError):
    """A 0.1.0 pickle, refused without ``allow_pickle=True``."""


# -- bytes on disk ----------------------------------------------------------------------


def read_file(path) -> bytes:
    from writers import fs

    return fs.read_bytes(os.fspath(path) if not isinstance(path, str) else path)


def write_file(path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically and durably (fsync of file and directory;
    URLs: one upload)."""
    from writers.durable import write_atomic

    path = os.fspath(path)
    write_atomic(path, data)
    return path


def _is_pickle(data: bytes) -> bool:
    return data[:1] == b"\x80"  # pickle protocol ≥ 2 (0.1.0 wrote the default, 4 or 5)


def _unpickle(path, data: bytes, allow_pickle: bool):
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path} is a pickle from imnn_stream 0.1.0; loading it can run arbitrary code. "
            "If you trust its source, pass allow_pickle=True (command line: --trust-pickle)"
        )
    import pickle

    print(
        f"warning: {path}: loading a 0.1.0 pickle (allow_pickle / --trust-pickle); "
        "save it again to convert it",
        file=sys.stderr,
    )
    return pickle.loads(data)


# -- arrays and JSON --------------------------------------------------------------------


def _array_json(a):
    if a is None:
        return None
    a = np.asarray(jax.device_get(a))
    return dict(dtype=a.dtype.name, shape=list(a.shape), data=a.ravel().tolist())


def _array_from_json(d):
    if d is None:
        return None
    return np.asarray(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


def _key_json(key):
    key = jax.device_get(key)
    if jax.dtypes.issubdtype(np.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, np.uint32).tolist()


def _key_from_json(v):
    return jnp.asarray(np.asarray(v, np.uint32))


def encode(kind: str, meta: dict, trees: dict) -> bytes:
    """The bytes of one file: the leaves of ``trees`` ({name: pytree}) and ``meta``."""
    leaves, layout = {}, {}
    for name, tree in trees.items():
        flat = jax.device_get(jax.tree_util.tree_leaves(tree))
        layout[name] = [len(leaves), len(flat)]
        for leaf in flat:
            leaves[f"leaf_{len(leaves):05d}"] = np.asarray(leaf)
    head = dict(format=FORMAT, version=SAVE_VERSION, kind=kind, trees=layout, **meta)
    text = json.dumps(head, ensure_ascii=False).encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, **leaves, meta=np.frombuffer(text, np.uint8))
    return buf.getvalue()


def decode(path, data: bytes, kind: str):
    """(meta, leaves) of a file written by :func:`encode`; FormatError otherwise."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            leaves = {k: z[k] for k in z.files if k.startswith("leaf_")}
    except Exception as e:
        raise FormatError(
            f"{path}: not an imnn_stream {kind} file ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{path}: not an imnn_stream {kind} file")
    if meta.get("version") != SAVE_VERSION:
        raise FormatError(
            f"{path}: format version {meta.get('version')!r}, this imnn_stream reads {SAVE_VERSION}"
        )
    if meta.get("kind") != kind:
        raise FormatError(f"{path}: a {meta.get('kind')!r} file, expected a {kind!r} file")
    return meta, leaves


def unflatten(path, meta, leaves, name, template):
    """The saved tree ``name`` with ``template``'s structure; FormatError unless the
    leaves match in count, shape and dtype."""
    if name not in meta["trees"]:
        raise FormatError(f"{path}: holds no `{name}`")
    first, n = meta["trees"][name]
    want = jax.tree_util.tree_leaves(template)
    if n != len(want):
        raise FormatError(
            f"{path}: saved `{name}` has {n} arrays, this model/optimiser has {len(want)} "
            "(the parameter shapes differ: another model or optimiser?)"
        )
    got = []
    for i, w in enumerate(want):
        a = leaves.get(f"leaf_{first + i:05d}")
        if a is None:
            raise FormatError(f"{path}: array leaf_{first + i:05d} is missing")
        if a.shape != tuple(np.shape(w)) or a.dtype != np.dtype(w.dtype):
            raise FormatError(
                f"{path}: saved `{name}` array {i} is {a.dtype}{list(a.shape)}, this "
                f"model/optimiser has {np.dtype(w.dtype)}{list(np.shape(w))} "
                "(the parameter shapes differ)"
            )
        got.append(jnp.asarray(a))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), got)


def _monitor_json(mon: Monitor | None):
    if mon is None:
        return None
    mon = jax.device_get(mon)
    return {k: np.asarray(getattr(mon, k)).item() for k in _MONITOR_SCALARS}


def _monitor_from(path, meta, leaves, m, w_template):
    if m is None:
        return None
    best_w = unflatten(path, meta, leaves, "monitor_best_w", w_template)
    return Monitor(
        best=jnp.float32(m["best"]),
        best_detF=jnp.float32(m["best_detF"]),
        best_w=best_w,
        count=jnp.int32(m["count"]),
        stop=jnp.bool_(m["stop"]),
        bad=jnp.int32(m["bad"]),
    )


def _history_json(history):
    return {k: np.asarray(v, np.float32).tolist() for k, v in history.items()}


def _history_from(h):
    return {k: np.asarray(v, np.float32) for k, v in h.items()}


def _plain(value):
    """``value`` as JSON would give it back (tuples → lists), for comparisons."""
    return json.loads(json.dumps(value, ensure_ascii=False))


# -- checkpoints -------------------------------------------------------------------------


class Checkpoint:
    """``checkpoint_dir/checkpoint.npz``: everything a killed fit needs to go on,
    written atomically and durably.

    ``run`` is what the fit depends on (its arguments and the trainer's
    ``identity``: archive manifest digest, model and optimiser specs, devices, …);
    :meth:`restore` refuses a checkpoint whose ``run`` differs, naming every
    difference in one line.
    """

    NAME = "checkpoint.npz"
    LEGACY = "checkpoint.pkl"

    def __init__(self, directory, run, allow_pickle=False):
        self.dir, self.run = os.fspath(directory), _plain(run)
        self.path = os.path.join(self.dir, self.NAME)
        self.legacy = os.path.join(self.dir, self.LEGACY)
        self.allow_pickle = allow_pickle

    def exists(self):
        return self._exists(self.path) or self._exists(self.legacy)

    # file access, overridden across processes (process 0's files, answers sent to all)
    def _exists(self, path) -> bool:
        return os.path.exists(path)

    def _read(self, path) -> bytes:
        return read_file(path)

    def save(self, trainer, loop: LoopState):
        meta = dict(
            run=self.run,
            key=_key_json(loop.key),
            step=int(loop.step),
            done=int(loop.done),
            monitor=_monitor_json(loop.monitor),
            history=_history_json(trainer.history),
            stats_key=_key_json(trainer._stats_key),
        )
        trees = dict(state=loop.state, monitor_best_w=loop.monitor.best_w)
        write_file(self.path, encode("checkpoint", meta, trees))

    def _differences(self, saved: dict, only_saved_keys=False):
        keys = list(self.run) + [k for k in saved if k not in self.run]
        if only_saved_keys:
            keys = [k for k in keys if k in saved]
        return [
            f"{k}: {saved.get(k, '(not recorded)')!r} → {self.run.get(k, '(not given)')!r}"
            for k in keys
            if saved.get(k) != self.run.get(k)
        ]

    def _refuse(self, path, diff):
        raise ValueError(
            f"{path}: cannot resume, the checkpoint was written by another fit "
            f"(checkpoint → now): {'; '.join(diff)}. Use the same settings, another "
            "checkpoint folder, or no --resume / resume=False"
        )

    def restore(self, trainer) -> LoopState:
        if not self._exists(self.path):
            return self._restore_legacy(trainer)
        meta, leaves = decode(self.path, self._read(self.path), "checkpoint")
        diff = self._differences(meta.get("run") or {})
        if diff:
            self._refuse(self.path, diff)
        w = trainer._opt.params(trainer.state)
        state = unflatten(self.path, meta, leaves, "state", trainer.state)
        trainer.history = _history_from(meta["history"])
        trainer._stats_key = _key_from_json(meta["stats_key"])
        return LoopState(
            state,
            _key_from_json(meta["key"]),
            jnp.int32(meta["step"]),
            _monitor_from(self.path, meta, leaves, meta["monitor"], w),
            int(meta["done"]),
        )

    def _restore_legacy(self, trainer) -> LoopState:
        blob = _unpickle(self.legacy, self._read(self.legacy), self.allow_pickle)
        diff = self._differences(_plain(blob["run"]), only_saved_keys=True)
        if diff:
            self._refuse(self.legacy, diff)
        trainer.history, trainer._stats_key = blob["history"], blob["stats_key"]
        return LoopState(
            blob["state"],
            blob["key"],
            jnp.int32(blob["step"]),
            Monitor.from_dict(blob["mon"]),
            blob["done"],
        )


# -- save files (Trainer.save / Trainer.load) ---------------------------------------------


def _config(t) -> dict:
    return dict(
        n_s=t.n_s,
        n_d=t.n_d,
        n_params=t.n_params,
        n_summaries=t.n_summaries,
        input_shape=list(t.input_shape),
        θ_fid=np.asarray(t.θ_fid).tolist(),
    )


def portable(trainer) -> bytes:
    """What :meth:`Trainer.save` writes: configuration, optimiser state, monitor,
    history, weights, statistics (see the module docstring for the format)."""
    t = trainer
    meta = dict(
        cls=type(t).__name__,
        config=_config(t),
        step=int(t._step),
        monitor=_monitor_json(t._monitor),
        history=_history_json(t.history),
        stats_key=_key_json(t._stats_key),
        statistics={k: _array_json(getattr(t, k)) for k in _STATISTICS},
    )
    trees = dict(state=t.state, initial_w=t.initial_w, final_w=t.final_w, best_w=t.best_w, w=t.w)
    if t._monitor is not None:
        trees["monitor_best_w"] = t._monitor.best_w
    return encode("save", meta, trees)


def load_weights(path, w_template, allow_pickle=False, data=None):
    """(w, statistics, meta) of a save file without a trainer (run folders):
    ``w_template`` is the model's initial weights, for the structure."""
    data = read_file(path) if data is None else data
    if _is_pickle(data):
        saved = _unpickle(path, data, allow_pickle)
        return saved["w"], saved["statistics"], {}
    meta, leaves = decode(path, data, "save")
    w = unflatten(path, meta, leaves, "w", w_template)
    statistics = {k: _array_from_json(v) for k, v in meta["statistics"].items()}
    return w, statistics, meta


def restore_portable(trainer, path, allow_pickle=False):
    """Load what :func:`portable` saved at ``path`` into ``trainer`` (identically configured)."""
    data = read_file(path)
    if _is_pickle(data):
        return _restore_pickle(trainer, path, _unpickle(path, data, allow_pickle))
    meta, leaves = decode(path, data, "save")
    mine = _config(trainer)
    for k, v in meta["config"].items():
        if _plain(v) != _plain(mine.get(k)):
            raise FormatError(f"{path}: saved `{k}` = {v!r} differs from this IMNN's {mine[k]!r}")
    w = trainer._opt.params(trainer.state)
    state = unflatten(path, meta, leaves, "state", trainer.state)
    trees = {
        k: unflatten(path, meta, leaves, k, w) for k in ("initial_w", "final_w", "best_w", "w")
    }
    trainer._monitor = _monitor_from(path, meta, leaves, meta["monitor"], w)
    trainer.state, trainer._step = state, int(meta["step"])
    trainer.history = _history_from(meta["history"])
    for k, v in trees.items():
        setattr(trainer, k, v)
    trainer._stats_key = _key_from_json(meta["stats_key"])
    for k in _STATISTICS:
        setattr(trainer, k, _array_from_json(meta["statistics"].get(k)))
    return trainer


def _restore_pickle(trainer, path, saved):
    if not isinstance(saved, dict) or saved.get("version") != 1:
        raise FormatError(f"{path}: not an imnn_stream save file")
    shapes = jax.tree_util.tree_map(np.shape, trainer.w)
    if jax.tree_util.tree_map(np.shape, saved["w"]) != shapes:
        raise FormatError(f"{path}: saved weights do not match this model's parameter shapes")
    trainer.state, trainer._step = saved["state"], saved["step"]
    trainer._monitor = Monitor.from_dict(saved["monitor"])
    trainer.history = saved["history"]
    for k in ("initial_w", "final_w", "best_w", "w"):
        setattr(trainer, k, saved[k])
    trainer._stats_key = saved["stats_key"]
    for k, v in saved["statistics"].items():
        setattr(trainer, k, v)
    return trainer
