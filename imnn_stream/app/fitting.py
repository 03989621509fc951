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
import time
from dataclasses import dataclass, field

__all__ = ["FitConfig", "fit_archive", "add_fit_options", "fit_config_from_args"]


def _opt(flag, help, default=None, **argparse_kw):
    """A FitConfig field whose metadata says its command-line flag and help text."""
    return field(default=default, metadata=dict(flag=flag, help=help, **argparse_kw))


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _model_spec(text):
    """Check a model spec's form (a ``module:function`` spec is imported later, and
    only with --trust-code)."""
    from ..models import BUILT_IN

    name, colon, args = text.partition(":")
    if text == "auto":
        return text
    if name in BUILT_IN:
        parts = [a.strip() for a in args.split(",") if a.strip()]
        if all(p.isdigit() and int(p) > 0 for p in parts):
            return text
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected {name}:N1,N2,… with positive integers"
        )
    if colon and name and args:
        return text
    raise argparse.ArgumentTypeError(
        f"unknown model {text!r}: expected mlp:W1,W2,…, cnn:C1,C2,…, polynomial:D or "
        "package.module:function (with --trust-code)"
    )


def _optimiser_spec(text):
    from .. import optimisers

    try:
        optimisers.from_spec(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _address(text):
    host, colon, port = text.rpartition(":")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


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
        "auto | mlp:W1,W2,… | cnn:C1,C2,… | field[:FILTERS] | polynomial:D | "
        "package.module:factory (auto: mlp:128,128 for vectors, field for 2-D fields: "
        "standardised log power in shells of |k|, plus FILTERS learnt convolutions)",
        "auto",
        type=_model_spec,
    )
    optimiser: str = _opt(
        "--optimiser", "optax name:learning_rate", "adam:1e-3", type=_optimiser_spec
    )
    lam: float = _opt("--lambda", "λ, regulariser strength", 10.0, type=_number)
    eps: float = _opt("--epsilon", "ϵ, closeness of C to I", 0.1, type=_number)
    devices: int = _opt("--devices", "XLA devices to spread batches over", 2, type=_int_at_least(1))
    n_per_device: int = _opt(
        "--n-per-device", "records per device per batch", 100, type=_int_at_least(1)
    )
    n_summaries: int | None = _opt(
        "--n-summaries", "summaries (default: n_params)", type=_int_at_least(1)
    )
    cache_mib: int | None = _opt(
        "--cache-mib",
        "host memory (MiB) for decoded epochs kept after the first: per-device streams "
        "that fit are read once, the rest every pass; 0 disables (default: 25 %% of "
        "MemAvailable)",
        type=_int_at_least(0),
    )
    decode: str = _opt(
        "--decode",
        "where streamed records are decoded: auto (default) decodes small records read "
        "every pass in a reader process, off this process's interpreter lock, and the "
        "rest in reader threads; thread or process for all of them",
        "auto",
        choices=("auto", "thread", "process"),
    )
    max_iterations: int = _opt("--max-iterations", "iteration limit", 2000, type=_int_at_least(1))
    patience: int = _opt(
        "--patience",
        "stop after this many iterations without a better validation det F",
        100,
        type=_int_at_least(0),
    )
    min_iterations: int = _opt(
        "--min-iterations", "iterations before early stopping may stop", 100, type=_int_at_least(0)
    )
    warm_start_ramp: int = _opt(
        "--warm-start-ramp",
        "a warm-started fit (infer rounds after the first) ramps the learning rate up from "
        "~0 over this many iterations, so that a fresh optimiser state does not throw the "
        "trained network off; it then runs at least ramp + patience iterations (0: no ramp)",
        100,
        type=_int_at_least(0),
    )
    normalise: bool = _opt(
        "--no-normalise",
        "feed the network raw inputs (default: inputs standardised inside the network by "
        "the fiducial training inputs' mean and standard deviation, per element or channel)",
        True,
        action="store_false",
    )
    input_transform: str = _opt(
        "--input-transform",
        "elementwise transform before standardising: log for positive data spanning "
        "orders of magnitude (log1p when zeros occur), asinh for heavy tails of either "
        "sign; auto (default) takes log or log1p when the fiducial inputs are positive "
        "and their log spreads by at least 0.5 (about a decade), none otherwise",
        "auto",
        choices=("auto", "none", "log", "log1p", "asinh"),
    )
    whiten: bool = _opt(
        "--whiten",
        "compose a fresh network's last layer with the affine map that makes its training "
        "summaries mean 0, C = I, so the fit does not first spend steps rescaling (faster "
        "early on, but it overfits sooner: benchmarks/information.py; see "
        "imnn_stream.whitening)",
        False,
        action="store_true",
    )
    seed: int = _opt("--seed", "network initialisation seed", 0)
    checkpoint_every: int | None = _opt(
        "--checkpoint-every",
        "write a checkpoint (OUT/checkpoint) every so many iterations (default: none)",
        type=_int_at_least(1),
    )
    resume: bool = _opt(
        "--resume",
        "continue from the checkpoint (refused when archive, model, optimiser or fit "
        "settings differ from the checkpoint's); takes over the lock of a killed fit "
        "on this host",
        False,
        action="store_true",
    )
    trust_code: bool = _opt(
        "--trust-code",
        "allow a package.module:function model spec (imports and runs that code)",
        False,
        action="store_true",
    )
    trust_pickle: bool = _opt(
        "--trust-pickle",
        "read 0.1.0 pickle checkpoints and run folders (unpickling can run code)",
        False,
        action="store_true",
    )
    expected_detF: float | None = _opt(
        "--expected-detF",
        "the exact det F, when known: the progress bar, history, plot and summary show "
        "det F / expected (the fraction of the information kept)",
        type=_number,
    )

    # multi-process fits (imnn_stream.distributed), `fit` only: with none of these, the
    # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables or a cluster
    # launcher's (srun, mpirun) are used; none at all: one process
    coordinator: str | None = _opt(
        "--coordinator",
        "HOST:PORT of process 0 of a multi-process fit (process 0 serves it); every "
        "process streams its own --devices devices' share of the archive",
        type=_address,
        metavar="HOST:PORT",
        commands=("fit",),
    )
    num_processes: int | None = _opt(
        "--num-processes",
        "processes of a multi-process fit (default: JAX_NUM_PROCESSES or the launcher's)",
        type=_int_at_least(1),
        metavar="N",
        commands=("fit",),
    )
    process_id: int | None = _opt(
        "--process-id",
        "this process's number, 0..N-1; process 0 alone writes OUT (default: "
        "JAX_PROCESS_ID or the launcher's)",
        type=_int_at_least(0),
        metavar="I",
        commands=("fit",),
    )
    coordinator_timeout: float = _opt(
        "--coordinator-timeout",
        "seconds to wait for the coordinator, and process 0 for the others",
        60.0,
        type=_number,
        metavar="SECONDS",
        commands=("fit",),
    )

    def replace(self, **changes) -> "FitConfig":
        return dataclasses.replace(self, **changes)


_TYPES = {
    "str": str,
    "str | None": str,
    "float": float,
    "int": int,
    "int | None": int,
    "float | None": float,
}


def add_fit_options(parser, **defaults):
    """Add FitConfig's command-line options to ``parser`` (``defaults`` override
    the dataclass defaults for this subcommand)."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(FitConfig)}
    if unknown:
        raise TypeError(f"not FitConfig fields: {sorted(unknown)}")
    command = parser.prog.rsplit(" ", 1)[-1]
    for f in dataclasses.fields(FitConfig):
        flag = f.metadata.get("flag")
        if flag is None or command not in f.metadata.get("commands", (command,)):
            continue
        default = defaults.get(f.name, f.default)
        kw = {k: v for k, v in f.metadata.items() if k not in ("flag", "help", "commands")}
        help = f.metadata["help"]
        if "action" not in kw:
            kw.setdefault("type", _TYPES[f.type])
            if default is not None:
                help += " (default %(default)s)"
        parser.add_argument(flag, dest=f.name, default=default, help=help, **kw)
    return parser


def fit_config_from_args(args: argparse.Namespace, **extra) -> FitConfig:
    """The FitConfig of parsed options (and ``extra`` fields not on the command line)."""
    names = {f.name for f in dataclasses.fields(FitConfig) if f.metadata.get("flag")}
    return FitConfig(**{n: getattr(args, n) for n in names if hasattr(args, n)}, **extra)


def _devices(n):
    from ..distributed import local_devices

    return local_devices(n)  # this process's (all devices of a single-process fit)


def manifest_digest(archive) -> str:
    """sha256 of the archive's manifest.json bytes (what a checkpoint is tied to)."""
    import hashlib

    from writers import fs
    from writers.layout import MANIFEST_NAME

    return hashlib.sha256(fs.read_bytes(fs.join(str(archive), MANIFEST_NAME))).hexdigest()


def fit_identity(archive, config: FitConfig) -> dict:
    """What a checkpoint of this fit records besides λ, ϵ, patience and the
    iteration limits (which :meth:`Trainer.fit` adds)."""
    c = config
    return dict(
        archive_manifest_sha256=manifest_digest(archive),
        model=c.model,
        optimiser=c.optimiser,
        n_summaries=c.n_summaries,
        devices=c.devices,
        n_per_device=c.n_per_device,
        normalise=c.normalise,
        input_transform=c.input_transform,
    )


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
    clear_stale_lock=False,
    normalisation=None,
):
    """Fit the streaming trainer of ``archive``'s mode with ``config``; write the run
    folder ``out`` (see :mod:`imnn_stream.app.runs`). Returns (imnn, summary dict).

    key: the network's initialisation key (default ``PRNGKey(config.seed)``);
    weights: start from these network weights instead (warm start), with
    ``normalisation`` the input normalisation they were trained with (default: the
    archive's, unless ``config.normalise`` is off); rng: the fit's
    key (default ``PRNGKey(config.seed + 1)``); checkpoint_dir: default
    ``out/checkpoint``; progress: show a progress bar. ``out`` is locked
    (``out.lock``) while the fit runs, and written as a whole at the end;
    ``clear_stale_lock``: take over a lock left by a dead process (for callers that
    already hold a lock on a folder above, as the inference loop); ``config.resume``
    does too (with a one-line warning), as a resumed fit continues a killed one.
    Checkpoints are written only with ``config.checkpoint_every`` (or ``resume``).
    """
    import contextlib

    from ..distributed import initialize
    from .runs import run_lock

    c = config
    processes = initialize(
        c.coordinator, c.num_processes, c.process_id, c.devices, c.coordinator_timeout
    )
    lock = (
        run_lock(out, clear_stale=clear_stale_lock or config.resume)
        if processes.writes
        else contextlib.nullcontext()  # multi-process: process 0 alone writes OUT
    )
    with lock:
        return _fit_archive(
            archive, config, out, weights, key, rng, checkpoint_dir, progress, normalisation
        )


def _fit_archive(archive, config, out, weights, key, rng, checkpoint_dir, progress, norm):
    import jax
    import numpy as np
    from writers.manifest import read_manifest

    from .. import models, normalise, optimisers
    from ..streaming import DatasetGradientIMNN, DatasetNumericalGradientIMNN
    from .progress import iteration_progress
    from .runs import save_run

    m = read_manifest(archive)
    cls = {"numerical": DatasetNumericalGradientIMNN, "gradient": DatasetGradientIMNN}.get(m.mode)
    if cls is None:
        raise ValueError(
            f"{archive}: a {m.mode!r} archive cannot train an IMNN (needs numerical or gradient)"
        )
    c = config.replace(model=models.resolve_spec(config.model, m.input_shape))
    n_summaries = c.n_summaries or m.n_params
    devices = _devices(c.devices)
    tx = optimisers.transformation_from_spec(c.optimiser)
    warm = weights is not None
    opt = optimisers.as_optimiser(optimisers.ramped(tx, c.warm_start_ramp) if warm else tx)
    key = jax.random.PRNGKey(c.seed) if key is None else key
    if norm is None and c.normalise:  # warm starts pass the normalisation of their weights
        from .archive_stats import archive_normalisation

        from ..distributed import shared_normalisation  # multi-process: process 0 reads

        norm = shared_normalisation(lambda: archive_normalisation(archive, c.input_transform))
    imnn = cls.from_archive(
        archive,
        model=normalise.wrap(models.from_spec(c.model, n_summaries, trust_code=c.trust_code), norm),
        optimiser=opt,
        key_or_state=key if weights is None else opt.init(weights),
        host=jax.local_devices(backend="cpu")[0],
        devices=devices,
        n_per_device=c.n_per_device,
        n_summaries=n_summaries,
        cache=None if c.cache_mib is None else c.cache_mib << 20,
        decode=c.decode,
    )
    imnn.identity = dict(fit_identity(archive, c), **imnn.processes.identity())
    if imnn.processes.count > 1:
        from ..distributed import SharedCheckpoint

        imnn.checkpoint_type = SharedCheckpoint
        progress = progress and imnn.processes.writes
    imnn.normalisation = norm
    checkpoint_dir = checkpoint_dir or (
        os.path.join(out, "checkpoint") if c.checkpoint_every or c.resume else None
    )
    fresh = not warm and not (c.resume and os.path.exists(checkpoint_dir))
    if fresh and getattr(imnn.model, "calibrate", None) is not None:
        from .archive_stats import fiducial_sample

        # the same first records on every process: identical constants everywhere
        imnn.calibrate(fiducial_sample(archive, imnn.CALIBRATION_SAMPLE, m))
    if c.whiten and fresh:
        from ..whitening import whiten_output

        whiten_output(imnn)  # one pass over the training set; the same on every process
    close_bar = iteration_progress(imnn) if progress else (lambda: None)
    waited, started = imnn.input_wait_seconds, time.perf_counter()
    try:
        imnn.fit(
            c.lam,
            c.eps,
            rng=jax.random.PRNGKey(c.seed + 1) if rng is None else rng,
            patience=c.patience,
            min_iterations=max(c.min_iterations, c.warm_start_ramp + c.patience)
            if warm
            else c.min_iterations,
            max_iterations=c.max_iterations,
            print_rate=max(1, c.max_iterations // 100) if progress else None,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=c.checkpoint_every,
            resume=c.resume,
            allow_pickle=c.trust_pickle,
            expected_detF=c.expected_detF,
        )
    finally:
        close_bar()
        imnn.close()
    # the fit's wall time spent waiting for the archive: is this fit input-bound?
    seconds = time.perf_counter() - started
    waited = imnn.input_wait_seconds - waited
    timing = dict(
        fit_seconds=round(seconds, 3),
        input_wait_seconds=round(waited, 3),
        input_wait_fraction=round(waited / seconds, 4) if seconds > 0 else None,
    )
    if not imnn.processes.writes:  # another process of a multi-process fit writes OUT
        return imnn, dict(
            iterations=int(len(imnn.history["detF"])),
            detF=float(np.linalg.det(imnn.F)),
            process_id=imnn.processes.index,
            written=False,
        )
    summary = save_run(
        out,
        imnn,
        c.model,
        dict(archive=str(archive), mode=m.mode, normalisation=norm and norm.to_json()),
        expected_detF=c.expected_detF,
        stats=timing,
    )
    return imnn, summary
