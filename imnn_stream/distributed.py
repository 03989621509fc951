"""Multi-process streaming fits: N processes (on one or several hosts), each with its
own devices, training one network on one archive.

* Process ``p`` of ``P`` with ``L`` local devices owns the global devices
  ``p·L … p·L + L − 1``; the archive is laid out over the ``P·L`` global devices
  (:mod:`writers.layout`'s per-device seed blocks) and process ``p`` streams only its
  own devices' blocks (local paths or gs:// / s3:// URLs).
* Pass 1: each process runs its devices' batches and keeps their outputs (a few
  floats per sample); the outputs and their positions are gathered from every
  process (:meth:`ProcessTwoPass._exchange`), so every process places the same
  ``n_s · n_summaries`` outputs and computes the same loss, statistics and
  cotangents.
* Pass 2: each process adds its devices' VJPs; the per-process sums are added
  across processes (:meth:`ProcessTwoPass._reduce`: an all-reduce done as a gather
  of the per-process sums added in process order, so every process holds the same
  bits), and every process takes the same optimiser step. Validation statistics and
  early stopping are computed from gathered outputs too, so every process decides
  the same.
* Communication per iteration is O(n_s · n_summaries) (pass-1 outputs, training and
  validation) plus O(P · weights) (the gradient sums): never the data, and never
  per-sample gradients. :attr:`ProcessTwoPass.exchanged` counts the bytes.
* Only process 0 writes checkpoints (:class:`SharedCheckpoint`) and run folders;
  resuming, process 0 reads the checkpoint and sends its bytes to the others.

:func:`initialize` starts JAX's multi-process runtime (``jax.distributed``) from
arguments, from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``, or from what a cluster launcher sets (JAX's cluster detection:
Slurm's ``srun``, Open MPI's ``mpirun``, Kubernetes, Cloud TPU), with one-line
errors for an unreachable coordinator.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import jax
import numpy as np

from .checkpoint import Checkpoint
from .twopass import TwoPass
from .utils import tree_nbytes

__all__ = [
    "Processes",
    "ProcessTwoPass",
    "SharedCheckpoint",
    "DistributedError",
    "initialize",
    "local_devices",
    "from_process_0",
    "shared_normalisation",
]

#: environment variables read when the arguments are not given
ENV_COORDINATOR, ENV_COUNT, ENV_ID = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
)
#: default seconds to wait for the coordinator (and, on process 0, for the others)
TIMEOUT = 60


class DistributedError(RuntimeError):
    """Multi-process start-up failed (coordinator, process numbers, device layout)."""


@dataclass(frozen=True)
class Processes:
    """This process's place among ``count`` processes (``index`` 0 writes)."""

    index: int = 0
    count: int = 1

    @classmethod
    def current(cls) -> "Processes":
        return cls(jax.process_index(), jax.process_count())

    @property
    def writes(self) -> bool:
        """Whether this process writes run folders and checkpoints (process 0)."""
        return self.index == 0

    def identity(self) -> dict:
        """What a checkpoint records about the processes (nothing for one)."""
        return {} if self.count == 1 else {"num_processes": self.count}

    def layout(self, manifest, n_local: int):
        """(global device count, this process's global device indices or None for one
        process) for ``n_local`` devices per process; a one-line error when the
        global count does not divide every kind's seeds."""
        if self.count == 1:
            return n_local, None
        n = self.count * n_local
        check_layout(manifest, n, f"{self.count} processes × {n_local} devices = {n} devices")
        return n, list(range(self.index * n_local, (self.index + 1) * n_local))

    def engine(self, mode, host, devices):
        """The two-pass engine of this process (for TwoPassStrategy)."""
        return ProcessTwoPass(mode, host, devices, processes=self)


def check_layout(manifest, n_devices: int, what: str):
    """Raise :class:`DistributedError` unless ``n_devices`` divides the seeds of every
    kind of every split of the archive."""
    from writers.stream_plan import stream_kinds

    for split in manifest.layout:
        for kind in stream_kinds(manifest):
            if kind not in manifest.layout[split]:
                continue
            seeds = manifest.kind_info(split, kind).n_seeds
            if seeds % n_devices:
                divisors = [d for d in range(1, min(seeds, 64) + 1) if seeds % d == 0]
                raise DistributedError(
                    f"{what} do not divide the archive's layout: split {split!r}, kind "
                    f"{kind!r} has {seeds} seeds (the archive was written for "
                    f"{manifest.n_devices} devices; global device counts that divide it: "
                    f"{', '.join(map(str, divisors))}{', …' if seeds > 64 else ''})"
                )


def _gather(tree):
    from jax.experimental.multihost_utils import process_allgather

    return process_allgather(tree)


class ProcessTwoPass(TwoPass):
    """:class:`imnn_stream.twopass.TwoPass` across processes (see module docstring).

    ``exchanged``: bytes this process sent (its share) and received (the other
    processes' shares) so far, for pass-1 outputs (``outputs_*``) and gradient
    sums (``gradients_*``), and the number of collective calls.
    """

    def __init__(self, mode, host, devices, processes: Processes | None = None, **kw):
        super().__init__(mode, host, devices, **kw)
        self.processes = Processes.current() if processes is None else processes
        self.exchanged = dict(
            outputs_sent=0, outputs_received=0, gradients_sent=0, gradients_received=0, calls=0
        )

    def _count(self, what, local):
        n = tree_nbytes(local)
        self.exchanged[f"{what}_sent"] += n
        self.exchanged[f"{what}_received"] += n * (self.processes.count - 1)
        self.exchanged["calls"] += len(jax.tree_util.tree_leaves(local))

    def _exchange(self, positions, outs):
        if not positions:  # a kind without samples (on every process alike)
            return positions, outs
        local = (
            np.concatenate(positions).astype(np.int32),  # int32: what jax moves without x64
            jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outs),
        )
        self._count("outputs", local)
        p, values = _gather(local)  # leaves (processes, samples of one process, ...)
        return [np.asarray(p, np.int64).reshape(-1)], [
            jax.tree_util.tree_map(lambda a: np.asarray(a).reshape((-1,) + a.shape[2:]), values)
        ]

    def _reduce(self, g):
        leaves, tree = jax.tree_util.tree_flatten(jax.device_get(g))
        leaves = [np.asarray(a) for a in leaves]
        self._count("gradients", leaves)
        out = []
        for a in _gather(leaves):  # (processes, ...): added in process order, as one
            s = a[0]  # process adds its devices' sums in device order
            for b in a[1:]:
                s = s + b
            out.append(s)
        return jax.device_put(jax.tree_util.tree_unflatten(tree, out), self.host)


class SharedCheckpoint(Checkpoint):
    """A checkpoint of a multi-process fit: process 0 checks for, reads and writes
    the file; the others write nothing and receive process 0's bytes, so that every
    process resumes from the same state (no shared file system needed)."""

    def __init__(self, directory, run, allow_pickle=False):
        super().__init__(directory, run, allow_pickle)
        self.processes = Processes.current()

    def _exists(self, path):
        return from_process_0(lambda: b"1" if os.path.exists(path) else b"", path) == b"1"

    def save(self, trainer, loop):
        if self.processes.writes:
            super().save(trainer, loop)

    def _read(self, path) -> bytes:
        return from_process_0(lambda: Checkpoint._read(self, path), f"{path}: the checkpoint")


def from_process_0(make, what="a value"):
    """Process 0's ``make()`` (bytes) on every process: process 0 calls it, the others
    receive the bytes. An exception on process 0 is raised there; the others raise a
    :class:`DistributedError` naming ``what`` (nobody waits forever)."""
    from jax.experimental.multihost_utils import broadcast_one_to_all

    here = Processes.current()
    if here.count == 1:
        return make()
    data, error = b"", None
    if here.writes:
        try:
            data = make()
        except Exception as e:
            error = e
    n = int(broadcast_one_to_all(np.int32(-1 if error is not None else len(data))))
    if n < 0:
        if error is not None:
            raise error
        raise DistributedError(f"process 0 could not produce {what} (see its error)")
    buf = np.frombuffer(data, np.uint8) if here.writes else np.zeros(n, np.uint8)
    return np.asarray(broadcast_one_to_all(buf), np.uint8).tobytes()


def shared_normalisation(make):
    """Process 0's input normalisation (``make()``, a :class:`imnn_stream.normalise.
    Normalisation`) on every process: one process reads the inputs' statistics, and
    every process gets the same bits."""
    import io

    from .normalise import Normalisation

    if Processes.current().count == 1:
        return make()

    def encode():
        n, buf = make(), io.BytesIO()
        np.savez(buf, transform=np.array(n.transform), mean=n.mean, std=n.std)
        return buf.getvalue()

    with np.load(io.BytesIO(from_process_0(encode, "the input normalisation"))) as z:
        return Normalisation(str(z["transform"]), z["mean"], z["std"])


def local_devices(n: int):
    """This process's first ``n`` devices (CPU devices on a CPU backend)."""
    cpu = jax.default_backend() == "cpu"
    devices = jax.local_devices(backend="cpu") if cpu else jax.local_devices()
    if len(devices) < n:
        raise ValueError(f"--devices {n}: only {len(devices)} devices available in this process")
    return devices[:n]


# -- start-up --------------------------------------------------------------------------------


def _env_int(name):
    text = os.environ.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r}: expected an integer") from None


def _detect_cluster():
    """(name, coordinator, count, id, local id) from a cluster launcher JAX knows
    (Slurm, Open MPI, Kubernetes, Cloud TPU), or None. ``IMNN_STREAM_CLUSTER=0`` off."""
    if os.environ.get("IMNN_STREAM_CLUSTER", "1") == "0":
        return None
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - JAX moved its cluster detection
        return None
    for env in clusters.ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if not env.is_env_present() or env.get_process_count() < 2:
                continue
            port = os.environ.get("JAX_COORDINATOR_PORT")
            return (
                env.__name__,
                lambda env=env, port=port: env.get_coordinator_address(
                    timeout_secs=TIMEOUT, override_coordinator_port=port
                ),
                env.get_process_count(),
                env.get_process_id(),
                env.get_local_process_id(),
            )
        except Exception:  # a half-set environment is not a cluster
            continue
    return None


def resolve(coordinator=None, num_processes=None, process_id=None, devices=1):
    """(coordinator, count, id, local device ids, where from) of this process, or
    None for a single-process fit. Arguments first, then the ``JAX_*`` variables,
    then a cluster launcher's."""
    where = "arguments"
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_COUNT)
    process_id = process_id if process_id is not None else _env_int(ENV_ID)
    local_ids = None
    if None in (coordinator, num_processes, process_id) and num_processes != 1:
        found = _detect_cluster()
        if found is not None:
            where, address, count, index, local = found
            num_processes = count if num_processes is None else num_processes
            process_id = index if process_id is None else process_id
            coordinator = coordinator or address()
            if local is not None:  # each process takes its own block of the node's devices
                local_ids = list(range(local * devices, (local + 1) * devices))
    if coordinator is None and num_processes is None and process_id is None:
        return None
    if num_processes == 1 and process_id in (None, 0):
        return None
    missing = [
        flag
        for flag, v in (
            ("--coordinator", coordinator),
            ("--num-processes", num_processes),
            ("--process-id", process_id),
        )
        if v is None
    ]
    if missing:
        raise DistributedError(
            f"a multi-process fit needs --coordinator, --num-processes and --process-id "
            f"(or {ENV_COORDINATOR}, {ENV_COUNT}, {ENV_ID}, or a cluster launcher such as "
            f"srun); missing {', '.join(missing)}"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise DistributedError(
            f"--process-id {process_id} is not in 0..{num_processes - 1} (--num-processes "
            f"{num_processes})"
        )
    _split_address(coordinator)
    return coordinator, num_processes, process_id, local_ids, where


def _split_address(address):
    host, colon, port = str(address).rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _wait_for(address, timeout):
    """Wait until ``address`` accepts TCP connections, at most ``timeout`` seconds."""
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"cannot reach the coordinator {address} within {timeout:g} s ({e}); is "
                    "process 0 running with the same --coordinator, and the port open?"
                ) from None
            time.sleep(0.2)


def _check_bindable(address):
    _, port = _split_address(address)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
    except OSError as e:
        raise DistributedError(
            f"process 0 cannot serve the coordinator on port {port} ({e}): is another "
            "fit using it? Choose a free port"
        ) from None
    finally:
        s.close()


def initialize(coordinator=None, num_processes=None, process_id=None, devices=1, timeout=None):
    """Start JAX's multi-process runtime for this process and return its
    :class:`Processes` (``Processes()`` — one process — when nothing asks for more;
    the current one when already started). Must run before JAX uses a device.

    coordinator: ``HOST:PORT`` of process 0 (which serves it); num_processes,
    process_id; devices: local devices per process (a cluster launcher's local
    process ``i`` gets devices ``i·devices …``); timeout: seconds to wait for the
    coordinator (default :data:`TIMEOUT`). On CPU, cross-process collectives use gloo.
    """
    from jax._src import distributed as _state

    if _state.global_state.client is not None:  # already started (a second fit)
        here = Processes(_state.global_state.process_id, _state.global_state.num_processes)
        if num_processes not in (None, here.count) or process_id not in (None, here.index):
            raise DistributedError(
                f"JAX's multi-process runtime is already started as process {here.index} of "
                f"{here.count}; cannot join as {process_id} of {num_processes}"
            )
        return here
    found = resolve(coordinator, num_processes, process_id, devices)
    if found is None:
        return Processes()
    coordinator, count, index, local_ids, where = found
    timeout = TIMEOUT if timeout is None else timeout
    if index == 0:
        _check_bindable(coordinator)
    else:
        _wait_for(coordinator, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator,
            count,
            index,
            local_device_ids=local_ids,
            cluster_detection_method="deactivate",
            initialization_timeout=max(1, int(round(timeout))),
        )
    except RuntimeError as e:
        raise DistributedError(
            f"cannot start process {index} of {count} (coordinator {coordinator}, from "
            f"{where}): {' '.join(str(e).split())}"
        ) from None
    return Processes(index, count)
