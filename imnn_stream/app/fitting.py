"""One fit configuration and one way to fit an archive, for the command line
(``fit``, ``demo``, ``infer``) and the inference loop.

Names. The seed's API writes the method's symbols in Greek; configuration,
command-line flags and JSON use ASCII. This is the one place that maps them:

* λ      ↔ ``--lambda``      ↔ ``lam``          regulariser strength
* ϵ      ↔ ``--epsilon``     ↔ ``eps``          closeness of C to the identity
* θ_fid  ↔ ``--theta-fid``   ↔ ``theta_fid``    fiducial parameters
* δθ     ↔ ``--delta-theta`` ↔ ``delta_theta``  finite-difference step

(``--theta-fid`` is the ``generate`` subcommand's; ``infer`` starts from
``--theta-start``. Run folders' ``config.json`` keep the seed's ``θ_fid``.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

__all__ = ["FitConfig", "fit_archive", "add_fit_options", "fit_config_from_args"]


def _opt(flag, help, default=None, **argparse_kw):
    """A FitConfig field whose metadata says its command-line flag and help text."""
    return field(default=default, metadata=dict(flag=flag, help=help, **argparse_kw))


@dataclass(frozen=True)
class FitConfig:
    """How to fit a streaming IMNN on an archive (everything but the archive and
    the output folder). Greek ↔ ASCII: λ ↔ ``lam`` / ``--lambda``, ϵ ↔ ``eps`` /
    ``--epsilon`` (see the table in :mod:`imnn_stream.app.fitting`).

    Each field's metadata holds its command-line ``flag`` and ``help``;
    :func:`add_fit_options` builds the options from them.
    """

    model: str = _opt(
        "--model",
        "mlp:W1,W2,… | cnn:C1,C2,… | polynomial:D | package.module:factory",
        "mlp:128,128",
    )
    optimiser: str = _opt("--optimiser", "optax name:learning_rate", "adam:1e-3")
    lam: float = _opt("--lambda", "λ, regulariser strength", 10.0)
    eps: float = _opt("--epsilon", "ϵ, closeness of C to I", 0.1)
    devices: int = _opt("--devices", "XLA devices to spread batches over", 2)
    n_per_device: int = _opt("--n-per-device", "records per device per batch", 100)
    n_summaries: int | None = _opt("--n-summaries", "summaries (default: n_params)")
    max_iterations: int = _opt("--max-iterations", "iteration limit", 2000)
    patience: int = _opt(
        "--patience", "stop after this many iterations without a better validation det F", 100
    )
    min_iterations: int = _opt("--min-iterations", "iterations before early stopping may stop", 100)
    seed: int = _opt("--seed", "network initialisation seed", 0)
    checkpoint_every: int | None = _opt(
        "--checkpoint-every", "checkpoint every so many iterations (default: only at the end)"
    )
    resume: bool = _opt("--resume", "continue from the checkpoint", False, action="store_true")
    expected_detF: float | None = field(default=None, metadata=dict(flag=None))
    """det F drawn on the history plot (the demo's exact 50); not a command-line option."""

    def replace(self, **changes) -> "FitConfig":
        return dataclasses.replace(self, **changes)


_TYPES = {"str": str, "float": float, "int": int, "int | None": int, "float | None": float}


def add_fit_options(parser, **defaults):
    """Add FitConfig's command-line options to ``parser`` (``defaults`` override
    the dataclass defaults for this subcommand)."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(FitConfig)}
    if unknown:
        raise TypeError(f"not FitConfig fields: {sorted(unknown)}")
    for f in dataclasses.fields(FitConfig):
        flag = f.metadata.get("flag")
        if flag is None:
            continue
        default = defaults.get(f.name, f.default)
        kw = {k: v for k, v in f.metadata.items() if k not in ("flag", "help")}
        help = f.metadata["help"]
        if "action" not in kw:
            kw["type"] = _TYPES[f.type]
            if default is not None:
                help += " (default %(default)s)"
        parser.add_argument(flag, dest=f.name, default=default, help=help, **kw)
    return parser


def fit_config_from_args(args: argparse.Namespace, **extra) -> FitConfig:
    """The FitConfig of parsed options (and ``extra`` fields not on the command line)."""
    names = {f.name for f in dataclasses.fields(FitConfig) if f.metadata.get("flag")}
    return FitConfig(**{n: getattr(args, n) for n in names}, **extra)


def _devices(n):
    import jax

    devices = jax.devices("cpu")[:n] if jax.default_backend() == "cpu" else jax.devices()[:n]
    if len(devices) < n:
        raise SystemExit(f"--devices {n}: only {len(devices)} devices available")
    return devices


def fit_archive(
    archive,
    config: FitConfig,
    out,
    *,
    weights=None,
    key=None,
    rng=None,
    checkpoint_dir=None,
    progress=True,
):
    """Fit the streaming trainer of ``archive``'s mode with ``config``; write the run
    folder ``out`` (see :mod:`imnn_stream.app.runs`). Returns (imnn, summary dict).

    key: the network's initialisation key (default ``PRNGKey(config.seed)``);
    weights: start from these network weights instead (warm start); rng: the fit's
    key (default ``PRNGKey(config.seed + 1)``); checkpoint_dir: default
    ``out/checkpoint``; progress: show a progress bar.
    """
    import jax
    from writers.manifest import read_manifest

    from .. import models, optimisers
    from ..streaming import DatasetGradientIMNN, DatasetNumericalGradientIMNN
    from .runs import save_run

    m = read_manifest(archive)
    cls = {"numerical": DatasetNumericalGradientIMNN, "gradient": DatasetGradientIMNN}.get(m.mode)
    if cls is None:
        raise SystemExit(
            f"{archive}: a {m.mode!r} archive cannot train an IMNN (needs numerical or gradient)"
        )
    c = config
    n_summaries = c.n_summaries or m.n_params
    devices = _devices(c.devices)
    opt = optimisers.from_spec(c.optimiser)
    key = jax.random.PRNGKey(c.seed) if key is None else key
    imnn = cls.from_archive(
        archive,
        model=models.from_spec(c.model, n_summaries),
        optimiser=opt,
        key_or_state=key if weights is None else opt.init(weights),
        host=jax.devices("cpu")[0],
        devices=devices,
        n_per_device=c.n_per_device,
        n_summaries=n_summaries,
    )
    try:
        imnn.fit(
            c.lam,
            c.eps,
            rng=jax.random.PRNGKey(c.seed + 1) if rng is None else rng,
            patience=c.patience,
            min_iterations=c.min_iterations,
            max_iterations=c.max_iterations,
            print_rate=max(1, c.max_iterations // 100) if progress else None,
            checkpoint_dir=checkpoint_dir or os.path.join(out, "checkpoint"),
            checkpoint_every=c.checkpoint_every,
            resume=c.resume,
        )
    finally:
        imnn.close()
    summary = save_run(
        out, imnn, c.model, dict(archive=str(archive), mode=m.mode), expected_detF=c.expected_detF
    )
    return imnn, summary
