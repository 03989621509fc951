"""A fitted IMNN on disk (a *run* folder) and estimates from it without the
training data.

RUN/config.json   how to rebuild the network: model spec, n_summaries, θ_fid, input shape
RUN/imnn.pkl      Trainer.save: weights, optimiser state, statistics, history
RUN/history.png   the training history plot
RUN/summary.json  det F (training, best validation), iterations, seconds
"""

from __future__ import annotations

import json
import os
import pickle

import jax
import numpy as np

from .. import models
from ..trainer import estimate

__all__ = ["save_run", "FittedIMNN", "load_inputs"]


def save_run(out, imnn, model_spec: str, extra: dict | None = None, expected_detF=None):
    """Write a run folder for a fitted ``imnn`` built with ``model_spec``."""
    os.makedirs(out, exist_ok=True)
    config = dict(
        model=model_spec,
        n_summaries=imnn.n_summaries,
        n_params=imnn.n_params,
        θ_fid=imnn.θ_fid.tolist(),
        input_shape=list(imnn.input_shape),
        **(extra or {}),
    )
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    imnn.save(os.path.join(out, "imnn.pkl"))
    imnn.plot(expected_detF=expected_detF, filename=os.path.join(out, "history.png"))
    h = imnn.history
    summary = dict(
        iterations=int(len(h["detF"])),
        detF=float(np.linalg.det(imnn.F)),
        final_training_detF=float(h["detF"][-1]) if len(h["detF"]) else None,
        best_detF=float(h["max_detF"][-1]) if len(h["max_detF"]) else None,
    )
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


class FittedIMNN:
    """Estimates from a run folder: ``FittedIMNN(RUN).get_estimate(d)``."""

    def __init__(self, run):
        with open(os.path.join(run, "config.json")) as f:
            self.config = json.load(f)
        with open(os.path.join(run, "imnn.pkl"), "rb") as f:
            saved = pickle.load(f)
        self.w = saved["w"]
        self.statistics = saved["statistics"]
        if self.statistics.get("F") is None:
            raise ValueError(f"{run}: the saved IMNN has no Fisher statistics (was it fitted?)")
        self.θ_fid = np.asarray(self.config["θ_fid"], np.float32)
        self.input_shape = tuple(self.config["input_shape"])
        self.F = np.asarray(self.statistics["F"])
        _, self.model = models.from_spec(self.config["model"], self.config["n_summaries"])
        self._apply = jax.jit(self.model)

    def get_estimate(self, d):
        """θ̂ float(n_params,) for one input, float(n, n_params) for a batch."""
        return estimate(self._apply, self.w, self.input_shape, self.θ_fid, self.statistics, d)


def load_inputs(path):
    """Target data: a ``.npy`` file, or the train split of an archive (read in seed order)."""
    if str(path).endswith(".npy"):
        return np.load(path)
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
