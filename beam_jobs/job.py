"""The parameters of one generation job, checked before any work starts.

A :class:`Job` holds everything that determines the bytes of an archive
(simulator, θ_fid, δθ, n_s, n_d, layout, base seeds, input shape). It is
stored as ``job.json`` at the archive root *before* any shard is written, so a
re-run can tell "resume the same job" (fill in missing shards) from "a
different job into the same place" (refuse instead of mixing data).

No Beam and no training code here: plain arithmetic, JSON and the ``writers``
layout.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from writers import durable, fs
from writers.layout import GENERATE_LOCK, MODES, SPLITS, ShardSpec, kinds, plan_shards
from writers.manifest import Manifest, jax_versions, new_manifest

__all__ = ["Job", "JobError", "JOB_NAME", "load_job", "store_or_check_job"]

JOB_NAME = "job.json"
JOB_FORMAT = "imnn-stream-generate-job"


class JobError(ValueError):
    """Bad job parameters, or a job that does not match the archive it targets."""


@dataclasses.dataclass(frozen=True)
class Job:
    """Parameters of a generation job (see ``beam_jobs.generate``).

    theta_fid, delta_theta: float(n_params,) as tuples (δθ None outside
    numerical mode); base_seeds: {split: int}, in split order; input_shape:
    shape of one simulation, found by tracing the simulator.
    ``batch_size`` only sets how many simulations a worker runs per vmapped
    call; it does not change the bytes, so it is not compared on resume.
    """

    mode: str
    simulator: str
    simulator_config: Optional[dict]
    theta_fid: tuple
    delta_theta: Optional[tuple]
    n_s: int
    n_d: int
    n_devices: int
    records_per_shard: int
    base_seeds: dict
    input_shape: tuple
    dtype: str = "float32"
    batch_size: int = 64

    #: fields that may differ between runs of the same job
    EXECUTION_FIELDS = ("batch_size",)

    @property
    def n_params(self) -> int:
        return len(self.theta_fid)

    @property
    def splits(self) -> tuple:
        return tuple(self.base_seeds)

    def plan(self) -> list[ShardSpec]:
        """Every shard of the archive, in (split, kind, device, index) order."""
        return plan_shards(
            self.mode,
            self.n_s,
            self.n_d,
            self.n_params,
            self.n_devices,
            self.records_per_shard,
            splits=self.splits,
        )

    def n_records(self) -> int:
        return sum(s.n_records for s in self.plan())

    def new_manifest(self) -> Manifest:
        """An empty manifest (layout without files) describing this job."""
        return new_manifest(
            self.mode,
            self.theta_fid,
            self.delta_theta,
            self.n_s,
            self.n_d,
            self.input_shape,
            dtype=self.dtype,
            simulator=self.simulator,
            simulator_config=self.simulator_config,
            base_seeds=dict(self.base_seeds),
            splits=self.splits,
            n_devices=self.n_devices,
            records_per_shard=self.records_per_shard,
        )

    # -- JSON ---------------------------------------------------------------
    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["theta_fid"] = list(self.theta_fid)
        d["delta_theta"] = None if self.delta_theta is None else list(self.delta_theta)
        d["input_shape"] = list(self.input_shape)
        return {"format": JOB_FORMAT, "version": 1, "job": d, "rng": jax_versions()}

    @classmethod
    def from_json(cls, d: dict) -> "Job":
        if d.get("format") != JOB_FORMAT:
            raise JobError(f"{JOB_NAME}: not a generation job (format {d.get('format')!r})")
        j = dict(d["job"])
        j["theta_fid"] = tuple(j["theta_fid"])
        j["delta_theta"] = None if j["delta_theta"] is None else tuple(j["delta_theta"])
        j["input_shape"] = tuple(j["input_shape"])
        return cls(**j)

    @classmethod
    def from_manifest(cls, m: Manifest) -> "Job":
        """The job parameters a committed archive was written with (batch_size,
        which the manifest does not record, is left at its default)."""
        return cls(
            mode=m.mode,
            simulator=(m.simulator or {}).get("name"),
            simulator_config=(m.simulator or {}).get("config") or None,
            theta_fid=tuple(m.theta_fid),
            delta_theta=None if m.delta_theta is None else tuple(m.delta_theta),
            n_s=m.n_s,
            n_d=m.n_d if m.mode != "fiducial" else 0,
            n_devices=m.n_devices,
            records_per_shard=m.records_per_shard,
            base_seeds={s: m.base_seeds[s] for s in SPLITS if s in m.base_seeds},
            input_shape=tuple(m.input_shape),
            dtype=m.dtype,
        )

    def differences(self, other: "Job") -> list[str]:
        """Human-readable ``field: this != other`` for fields that change the data."""
        a, b = self.to_json()["job"], other.to_json()["job"]
        return [
            f"{k}: {b.get(k)!r} in the archive, {a.get(k)!r} now"
            for k in a
            if k not in self.EXECUTION_FIELDS and a.get(k) != b.get(k)
        ]


def make_job(
    mode,
    simulator,
    simulator_config,
    theta_fid,
    delta_theta,
    n_s,
    n_d,
    n_devices,
    records_per_shard,
    seeds,
    input_shape,
    batch_size,
    n_validation=None,
) -> Job:
    """Check the arguments of ``generate`` and build a :class:`Job`.

    Everything that can be refused without simulating is refused here, before
    any file is touched: unknown mode, n_s or n_d not divisible by n_devices,
    δθ missing or of the wrong length, unknown or duplicate splits/seeds.
    """
    if mode not in MODES:
        raise JobError(f"mode must be one of {MODES}, got {mode!r}")
    theta_fid = tuple(float(t) for t in theta_fid)
    if not theta_fid:
        raise JobError("theta_fid needs at least one parameter")
    if mode == "numerical":
        if delta_theta is None or len(delta_theta) != len(theta_fid):
            raise JobError(
                f"numerical mode needs delta_theta with {len(theta_fid)} values "
                f"(one per parameter), got {delta_theta!r}"
            )
        delta_theta = tuple(float(t) for t in delta_theta)
        if any(t <= 0 for t in delta_theta):
            raise JobError(f"delta_theta must be positive, got {delta_theta}")
    else:
        delta_theta = None  # not used: store nothing that does not describe the data
    n_s, n_d, n_devices = int(n_s), int(n_d or 0), int(n_devices)
    if mode == "fiducial":
        n_d = 0
    if n_devices < 1:
        raise JobError(f"n_devices must be >= 1, got {n_devices}")
    if n_s < 1 or (mode != "fiducial" and not 1 <= n_d <= n_s):
        raise JobError(f"need n_s >= 1 and 1 <= n_d <= n_s, got n_s={n_s}, n_d={n_d}")
    # The layout needs every kind to split evenly between devices; say so in the
    # user's terms (n_s, n_d) rather than in terms of kinds.
    bad = [
        f"{name}={v}"
        for name, v in (("n_s", n_s), ("n_d", n_d))
        if v % n_devices and not (name == "n_d" and mode == "fiducial")
    ]
    if bad:
        raise JobError(
            f"{' and '.join(bad)} not divisible by n_devices={n_devices}: every "
            "device must get the same number of seeds"
        )
    if int(records_per_shard) < 1:
        raise JobError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if int(batch_size) < 1:
        raise JobError(f"batch_size must be >= 1, got {batch_size}")
    seeds = dict(seeds if seeds is not None else {"train": 0, "validation": 1})
    if n_validation is not None:
        if int(n_validation) == 0:
            seeds.pop("validation", None)
        elif int(n_validation) != n_s:
            # manifest v1 (writers) keeps one n_s/n_d for all splits
            raise JobError(
                f"n_validation={n_validation}: the archive format stores one "
                f"n_s for every split, so the validation split has n_s={n_s} "
                "seeds (pass n_validation=None or 0 for none)"
            )
    unknown = [s for s in seeds if s not in SPLITS]
    if unknown or "train" not in seeds:
        raise JobError(f"seeds must name 'train' and optionally 'validation', got {seeds}")
    base_seeds = {s: int(seeds[s]) for s in SPLITS if s in seeds}
    if any(not 0 <= v < 2**32 for v in base_seeds.values()):
        # keys are built from uint32 seeds inside the jitted batch function
        raise JobError(f"base seeds must be in [0, 2**32), got {base_seeds}")
    if len(set(base_seeds.values())) != len(base_seeds):
        raise JobError(f"train and validation need different base seeds, got {base_seeds}")
    kinds(mode, n_s, max(n_d, 0), len(theta_fid))  # the layout's own checks
    return Job(
        mode=mode,
        simulator=simulator,
        simulator_config=simulator_config or None,
        theta_fid=theta_fid,
        delta_theta=delta_theta,
        n_s=n_s,
        n_d=n_d,
        n_devices=n_devices,
        records_per_shard=int(records_per_shard),
        base_seeds=base_seeds,
        input_shape=tuple(int(x) for x in input_shape),
        batch_size=int(batch_size),
    )


def load_job(root: str) -> Optional[Job]:
    """The job stored at ``root/job.json``, or None when there is none."""
    path = fs.join(root, JOB_NAME)
    if not fs.exists(path):
        return None
    try:
        return Job.from_json(json.loads(fs.read_bytes(path)))
    except (ValueError, KeyError, TypeError) as err:
        raise JobError(
            f"{path}: unreadable job description ({err}); refusing to touch this archive"
        ) from err


def store_or_check_job(root: str, job: Job) -> bool:
    """Write ``root/job.json``, or check that the one there describes ``job``.

    Returns True when the archive already belonged to this job (a resume).
    Raises :class:`JobError`, touching nothing, when the stored job differs or
    when ``root`` holds files of something else.
    """
    old = load_job(root)
    if old is not None:
        diff = job.differences(old)
        if diff:
            raise JobError(
                f"{root} holds an archive generated with different parameters; refusing "
                "to mix data (use another --out, or delete it first):\n  " + "\n  ".join(diff)
            )
        return True
    existing = [p for p in fs.list_files(root) if p != GENERATE_LOCK]
    if existing:
        raise JobError(
            f"{root} is not empty and has no {JOB_NAME} (it was not written by "
            f"this tool, e.g. {existing[0]}); refusing to mix data"
        )
    durable.write_atomic(fs.join(root, JOB_NAME), json.dumps(job.to_json(), indent=1).encode())
    return False
