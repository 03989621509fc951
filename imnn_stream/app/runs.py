"""A fitted IMNN on disk (a *run* folder) and estimates from it without the
training data.

RUN/config.json   how to rebuild the network: model spec, n_summaries, θ_fid, input shape,
                  input normalisation (transform, mean, std; see imnn_stream.normalise)
RUN/imnn.npz      Trainer.save: weights, optimiser state, statistics, history (arrays +
                  JSON, no pickle: see :mod:`imnn_stream.checkpoint`)
RUN/history.png   the training history plot
RUN/summary.json  det F (training, best validation, Hartlap-corrected; fractions of the
                  expected det F when known; warnings), iterations, seconds; for a
                  fit of an archive, fit_seconds and the time spent waiting for the
                  readers (input_wait_seconds, input_wait_fraction)
RUN/checkpoint/   the fit's checkpoint (kept across commits)

A run folder is committed as a whole: the files are written into a sibling
``RUN.tmp-<pid>``, fsynced with their folder, and swapped in (old folder renamed
to ``RUN.old-<pid>``, new one renamed into place, old one removed). A failure
removes the temporaries and leaves the previous run loadable. ``RUN.lock``
(:func:`run_lock`) keeps a second writer out while a fit or ``infer`` runs.

Reading trusts nothing: a built-in model spec is rebuilt; a ``module:function``
spec is imported only with ``trust_code=True``; a 0.1.0 ``imnn.pkl`` is read only
with ``allow_pickle=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import jax
import numpy as np

from .. import models
from ..checkpoint import load_weights
from ..fisher import estimate
from ..information import information_summary
from ..normalise import Normalisation, wrap

__all__ = ["save_run", "FittedIMNN", "load_inputs", "run_lock", "commit_folder", "WEIGHTS"]

WEIGHTS = "imnn.npz"
LEGACY_WEIGHTS = "imnn.pkl"


def run_lock(out, what="run folder", clear_stale=False):
    """The lock file ``OUT.lock`` guarding ``out`` (a context manager; see
    :class:`writers.durable.Lock`). ``clear_stale``: take over a lock whose pid is
    dead on this host, with a one-line warning on stderr."""
    import sys

    from writers.durable import Lock

    out = os.path.normpath(os.fspath(out))
    return Lock(
        out + ".lock",
        what=f"{what} {out}",
        clear_stale=clear_stale,
        warn=lambda msg: print(msg, file=sys.stderr, flush=True),
    )


def _write_file(path, data: bytes):
    """Write and fsync one file of a folder being built (the folder is renamed later)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_folder(tmp, out):
    """Swap the finished folder ``tmp`` in as ``out``. Entries of an existing ``out``
    that ``tmp`` lacks (the checkpoint folder) move over. On failure everything is
    put back and ``tmp`` removed."""
    from writers.durable import fsync_dir

    parent = os.path.dirname(os.path.abspath(out))
    for name in os.listdir(tmp):
        if os.path.isfile(os.path.join(tmp, name)):
            _fsync_path(os.path.join(tmp, name))
    fsync_dir(tmp)
    backup = f"{out}.old-{os.getpid()}"
    carried, moved_out = [], False
    try:
        if os.path.exists(out):
            for name in os.listdir(out):
                if not os.path.exists(os.path.join(tmp, name)):
                    os.rename(os.path.join(out, name), os.path.join(tmp, name))
                    carried.append(name)
            os.rename(out, backup)
            moved_out = True
        os.rename(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            if moved_out and not os.path.exists(out):
                os.rename(backup, out)
            for name in carried:
                os.rename(os.path.join(tmp, name), os.path.join(out, name))
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
    shutil.rmtree(backup, ignore_errors=True)


def save_run(out, imnn, model_spec: str, extra: dict | None = None, expected_detF=None, stats=None):
    """Write a run folder for a fitted ``imnn`` built with ``model_spec``, as a whole
    (see the module docstring). ``extra``: more of config.json; ``stats``: more of
    summary.json (the fit's timing). Returns the summary dict."""
    from ..checkpoint import portable

    out = os.path.normpath(os.fspath(out))
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    config = dict(
        model=model_spec,
        n_summaries=imnn.n_summaries,
        n_params=imnn.n_params,
        θ_fid=imnn.θ_fid.tolist(),
        input_shape=list(imnn.input_shape),
        **(extra or {}),
    )
    h = imnn.history
    summary = dict(
        iterations=int(len(h["detF"])),
        detF=float(np.linalg.det(imnn.F)),
        final_training_detF=float(h["detF"][-1]) if len(h["detF"]) else None,
        best_detF=float(h["max_detF"][-1]) if len(h["max_detF"]) else None,
    )
    norm = (extra or {}).get("normalisation")
    if norm:  # which transform ``auto`` chose shows beside the information kept
        summary["input_transform"] = norm["transform"]
    if expected_detF is None:
        expected_detF = getattr(imnn, "expected_detF", None)
    summary.update(information_summary(imnn, expected_detF))
    summary.update(stats or {})
    try:
        os.makedirs(tmp)
        _write_file(
            os.path.join(tmp, "config.json"),
            json.dumps(config, indent=2, ensure_ascii=False).encode("utf-8"),
        )
        _write_file(os.path.join(tmp, WEIGHTS), portable(imnn))
        imnn.plot(expected_detF=expected_detF, filename=os.path.join(tmp, "history.png"))
        _write_file(os.path.join(tmp, "summary.json"), json.dumps(summary, indent=2).encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_folder(tmp, out)
    return summary


class FittedIMNN:
    """Estimates from a run folder: ``FittedIMNN(RUN).get_estimate(d)``.

    trust_code: allow a ``module:function`` model spec (imports it);
    allow_pickle: read a 0.1.0 ``imnn.pkl`` (unpickling runs code).
    """

    def __init__(self, run, trust_code=False, allow_pickle=False):
        run = os.fspath(run)
        path = os.path.join(run, "config.json")
        if not os.path.isdir(run):
            raise FileNotFoundError(f"{run}: no such run folder")
        try:
            with open(path, encoding="utf-8") as f:
                self.config = json.load(f)
            spec, n_summaries = self.config["model"], int(self.config["n_summaries"])
            self.θ_fid = np.asarray(self.config["θ_fid"], np.float32)
            self.input_shape = tuple(int(n) for n in self.config["input_shape"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{run}: not a run folder (no config.json)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a run configuration ({type(e).__name__}: {e})") from None
        self.normalisation = Normalisation.from_json(self.config.get("normalisation"))
        init, self.model = wrap(
            models.from_spec(spec, n_summaries, trust_code=trust_code), self.normalisation
        )
        weights = os.path.join(run, WEIGHTS)
        if not os.path.exists(weights) and os.path.exists(os.path.join(run, LEGACY_WEIGHTS)):
            weights = os.path.join(run, LEGACY_WEIGHTS)
        if not os.path.exists(weights):
            raise FileNotFoundError(f"{run}: no {WEIGHTS} (was the fit finished?)")
        _, template = init(jax.random.PRNGKey(0), self.input_shape)
        self.w, self.statistics, _ = load_weights(weights, template, allow_pickle=allow_pickle)
        if self.statistics.get("F") is None:
            raise ValueError(f"{run}: the saved IMNN has no Fisher statistics (was it fitted?)")
        self.F = np.asarray(self.statistics["F"])
        self._apply = jax.jit(self.model)

    def get_estimate(self, d):
        """θ̂ float(n_params,) for one input, float(n, n_params) for a batch."""
        return estimate(self._apply, self.w, self.input_shape, self.θ_fid, self.statistics, d)


def load_inputs(path):
    """Target data: a ``.npy`` file, or the train split of an archive (read in seed order)."""
    if str(path).endswith(".npy"):
        return np.load(path, allow_pickle=False)
    from writers.manifest import read_manifest
    from writers.streams import close_all, device_streams, epoch_records

    m = read_manifest(path)
    kind = "fiducial" if "fiducial" in m.kinds("train") else "main"
    n = epoch_records(m, "train", kind, 1)
    streams = device_streams(path, "train", 1, min(n, 1024))
    try:
        it = streams[kind][0]
        out, got = [], 0
        while got < n:
            b = next(it)
            out.append(b["data"])
            got += len(b["data"])
        return np.concatenate(out)
    finally:
        close_all(streams)
