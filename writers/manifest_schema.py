"""Types and values of every manifest field, and the manifest version rule.

:func:`field_errors` checks a manifest's JSON fields one by one (types,
ranges, finite θ, δθ > 0, known ``mode`` / ``dtype`` / ``record_format``,
the layout's nesting) and every listed file path against the archive
confinement rule :func:`writers.layout.relpath_problem`, naming the entry
(``layout.train.fiducial.devices[0].files[2]``).  Each problem is one line;
:func:`consistency_errors` (re-exported by ``writers.manifest``) relies on
these types and adds the cross-field rules.

Versions (see docs/archive-contract.md, "Manifest evolution"): ``version``
is the major version as an integer (``1``) or ``"MAJOR.MINOR"`` as a string
(``"1.1"``, what this package writes when it records ``input_statistics``,
the one optional field, added by 1.1: :data:`OPTIONAL`).  :func:`check_version`
accepts major 1 of any minor and refuses another major naming both versions.
"""

from __future__ import annotations

import math
from typing import Optional

from .errors import ArchiveError
from .input_stats import FIDUCIAL_KINDS, json_errors
from .layout import MODES, SPLITS, KindInfo, relpath_problem
from .layout import kinds as layout_kinds
from .schema import SUPPORTED_DTYPES

MAJOR = 1
MINOR = 1
#: optional fields and the minor version that added them (absent: null)
OPTIONAL = {"input_statistics": 1}
RECORD_FORMATS = ("imnn-stream", "imnn-0.3")
FILE_KEYS = ("path", "count", "first_seed", "last_seed", "bytes", "sha256")
_MAX_INT = 1 << 53  # JSON's exact integers
_MAX_RECORD_BYTES = 1 << 31  # a tf.train.Example is at most 2 GiB


def parse_version(v) -> Optional[tuple[int, int]]:
    """``(major, minor)`` of a manifest ``version`` value, None if malformed."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, 0) if v >= 0 else None
    if isinstance(v, str):
        parts = v.split(".")
        if 1 <= len(parts) <= 2 and all(p.isdigit() and p.isascii() for p in parts):
            return int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    return None


def check_version(v) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """``((major, minor), None)`` for a version this reader accepts, else
    ``(parsed or None, one-line error)``."""
    parsed = parse_version(v)
    if parsed is None:
        return None, f'version: expected {MAJOR} or "{MAJOR}.<minor>", got {v!r:.60}'
    if parsed[0] != MAJOR:
        newer = "newer than" if parsed[0] > MAJOR else "older than"
        return parsed, (
            f"manifest version {v} is {newer} this reader's version {MAJOR}.{MINOR} "
            f"(major {parsed[0]} ≠ {MAJOR}): use an imnn_stream that reads version {parsed[0]}"
        )
    return parsed, None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _short(x) -> str:
    return f"{x!r:.60}"


def field_errors(d: dict) -> list[str]:
    """One-line problems of the manifest fields in ``d`` (a dict with the
    Manifest's field names; absent optional keys are skipped)."""
    e: list[str] = []

    def integer(name, x, lo=0):
        if not _is_int(x):
            e.append(f"{name}: expected an integer, got {_short(x)}")
            return False
        if not lo <= x < _MAX_INT:
            e.append(
                f"{name}: expected an integer >= {lo}, got {x}"
                if x < lo
                else f"{name}: {x} is too large"
            )
            return False
        return True

    mode = d.get("mode")
    if not isinstance(mode, str) or mode not in MODES:
        e.append(f"mode: unknown mode {_short(mode)} (expected one of {list(MODES)})")
    for name, lo in (("n_params", 1), ("n_s", 1), ("n_d", 0), ("n_devices", 1)):
        integer(name, d.get(name), lo)
    if "records_per_shard" in d:
        integer("records_per_shard", d["records_per_shard"])
    if d.get("max_bytes") is not None:
        integer("max_bytes", d["max_bytes"], 1)
    theta = d.get("theta_fid")
    if not isinstance(theta, list) or not theta:
        e.append(f"theta_fid: expected a non-empty list of numbers, got {_short(theta)}")
    elif not all(_is_num(t) for t in theta):
        e.append(f"theta_fid: expected numbers, got {_short(theta)}")
    elif not all(math.isfinite(t) for t in theta):
        e.append(f"theta_fid: values must be finite, got {theta}")
    delta = d.get("delta_theta")
    if delta is not None:
        if not isinstance(delta, list) or not delta:
            e.append(f"delta_theta: expected a list of numbers or null, got {_short(delta)}")
        elif not all(_is_num(t) for t in delta):
            e.append(f"delta_theta: expected numbers, got {_short(delta)}")
        elif not all(math.isfinite(t) and t > 0 for t in delta):
            e.append(
                f"delta_theta: finite-difference widths δθ must be finite and > 0, got {delta}"
            )
    shape = d.get("input_shape")
    if not isinstance(shape, list) or not all(_is_int(x) and 0 < x < _MAX_INT for x in shape):
        e.append(f"input_shape: expected a list of positive integers, got {_short(shape)}")
    elif (
        math.prod(shape) * 8 * max(1, d.get("n_params", 1) if _is_int(d.get("n_params")) else 1)
        > _MAX_RECORD_BYTES
    ):
        e.append(f"input_shape: {shape} makes records over the 2 GiB limit of a tf.train.Example")
    dtype = d.get("dtype")
    if not isinstance(dtype, str) or dtype not in SUPPORTED_DTYPES:
        e.append(f"dtype: expected one of {list(SUPPORTED_DTYPES)}, got {_short(dtype)}")
    rf = d.get("record_format")
    if not isinstance(rf, str) or rf not in RECORD_FORMATS:
        e.append(
            f"record_format: unknown record format {_short(rf)} (expected one of {list(RECORD_FORMATS)})"
        )
    sim = d.get("simulator")
    if not isinstance(sim, dict):
        e.append(f"simulator: expected an object, got {_short(sim)}")
    elif not (sim.get("name") is None or isinstance(sim.get("name"), str)) or not isinstance(
        sim.get("config", {}), dict
    ):
        e.append(
            f"simulator: expected {{'name': string or null, 'config': object}}, got {_short(sim)}"
        )
    if not isinstance(d.get("rng"), dict):
        e.append(f"rng: expected an object, got {_short(d.get('rng'))}")
    splits = d.get("splits")
    if not (
        isinstance(splits, list)
        and splits
        and all(isinstance(s, str) and s in SPLITS for s in splits)
    ) or len(set(splits)) != len(splits):
        e.append(
            f"splits: expected a non-empty list of distinct names from {list(SPLITS)}, got {_short(splits)}"
        )
    seeds = d.get("base_seeds")
    if not isinstance(seeds, dict):
        e.append(f"base_seeds: expected an object, got {_short(seeds)}")
    else:
        for s, v in seeds.items():
            integer(f"base_seeds.{s}", v)
    stats = d.get("input_statistics")
    if stats is not None:
        version = parse_version(d.get("version"))
        if version is not None and version < (MAJOR, OPTIONAL["input_statistics"]):
            e.append(f'input_statistics: needs version "{MAJOR}.{OPTIONAL["input_statistics"]}"')
        if isinstance(shape, list) and all(_is_int(x) and x > 0 for x in shape):
            e.extend(json_errors(stats, shape))
    index = d.get("index")
    if index is not None:
        problem = relpath_problem(index)
        if problem:
            e.append(f"index: path {_short(index)} {problem}")
    layout = d.get("layout")
    if not isinstance(layout, dict):
        e.append(f"layout: expected an object, got {_short(layout)}")
        return e
    for split, kinds in layout.items():
        if not isinstance(kinds, dict):
            e.append(f"layout.{split}: expected an object of kinds, got {_short(kinds)}")
            continue
        for kind, k in kinds.items():
            e.extend(_kind_errors(f"layout.{split}.{kind}", k, split, kind))
    return e


def _kind_errors(where: str, k, split: str, kind: str) -> list[str]:
    e: list[str] = []
    if not isinstance(k, dict):
        return [f"{where}: expected an object, got {_short(k)}"]
    for key, lo in (("first_seed", 0), ("n_seeds", 0), ("records_per_seed", 1)):
        x = k.get(key)
        if not _is_int(x) or not lo <= x < _MAX_INT:
            e.append(f"{where}.{key}: expected an integer >= {lo}, got {_short(x)}")
    for key in ("finite_difference", "gradient"):
        if not isinstance(k.get(key, False), bool):
            e.append(f"{where}.{key}: expected true or false, got {_short(k.get(key))}")
    devices = k.get("devices")
    if not isinstance(devices, list):
        return e + [f"{where}.devices: expected a list, got {_short(devices)}"]
    for d, dev in enumerate(devices):
        dw = f"{where}.devices[{d}]"
        if not isinstance(dev, dict):
            e.append(f"{dw}: expected an object, got {_short(dev)}")
            continue
        for key in ("device", "first_seed", "last_seed"):
            x = dev.get(key)
            if not _is_int(x) or not -1 <= x < _MAX_INT:
                e.append(f"{dw}.{key}: expected an integer, got {_short(x)}")
        files = dev.get("files", [])
        if not isinstance(files, list):
            e.append(f"{dw}.files: expected a list, got {_short(files)}")
            continue
        for j, f in enumerate(files):
            e.extend(_file_errors(f"{dw}.files[{j}]", f, split, kind, d, j))
    return e


def _file_errors(fw: str, f, split, kind, device, j) -> list[str]:
    if not isinstance(f, dict):
        return [f"{fw}: expected an object, got {_short(f)}"]
    entry = f"{fw} (split {split}, kind {kind}, device {device}, file {j})"
    e: list[str] = []
    if "path" in f:
        problem = relpath_problem(f["path"])
        if problem:
            e.append(f"{entry}: path {_short(f['path'])} {problem}")
    for key in ("count", "first_seed", "last_seed", "bytes"):
        if key in f and (not _is_int(f[key]) or not 0 <= f[key] < _MAX_INT):
            e.append(f"{entry}.{key}: expected an integer >= 0, got {_short(f[key])}")
    if "sha256" in f and not isinstance(f["sha256"], str):
        e.append(f"{entry}.sha256: expected a hex string, got {_short(f['sha256'])}")
    return e


def consistency_errors(m, require_files: bool = True) -> list[str]:
    """Schema and internal-consistency problems of a manifest (empty if none);
    ``m`` a :class:`writers.manifest.Manifest`."""
    e = []

    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    e = field_errors({k: v for k, v in vars(m).items() if not k.startswith("_")})
    if e:
        return e
    if len(m.theta_fid) != m.n_params:
        e.append(f"theta_fid: expected {m.n_params} values, got {m.theta_fid!r}")
    if m.mode == "numerical" and (
        not isinstance(m.delta_theta, list) or len(m.delta_theta) != m.n_params
    ):
        e.append(f"delta_theta: numerical mode needs {m.n_params} values, got {m.delta_theta!r}")
    elif m.delta_theta is not None and len(m.delta_theta) != m.n_params:
        e.append(f"delta_theta: expected {m.n_params} values or null, got {m.delta_theta!r}")
    if set(m.layout) != set(m.splits):
        e.append(f"layout: splits {sorted(m.layout)} differ from splits {sorted(m.splits)}")
    if set(m.base_seeds) != set(m.splits):
        e.append(f"base_seeds: expected an integer for each of {m.splits}, got {m.base_seeds!r}")
    elif len(set(m.base_seeds.values())) != len(m.base_seeds):
        e.append(f"base_seeds: splits must use different seeds, got {m.base_seeds!r}")
    if e:
        return e
    try:
        expected = {k.kind: k for k in layout_kinds(m.mode, m.n_s, m.n_d, m.n_params)}
    except ArchiveError as err:
        return [str(err)]
    if m.record_format == "imnn-0.3" and m.mode == "gradient":
        # Adopted reference archives keep their fiducial/derivative files.
        expected = {
            "fiducial": KindInfo("fiducial", 0, m.n_s, 1),
            "derivative": KindInfo("derivative", 0, m.n_d, 1, gradient=True),
        }
    for split in m.splits:
        layout = m.layout[split]
        if set(layout) != set(expected):
            e.append(
                f"layout.{split}: kinds {sorted(layout)}, expected "
                f"{sorted(expected)} for mode {m.mode!r}"
            )
            continue
        for kind, info in expected.items():
            k = layout[kind]
            where = f"layout.{split}.{kind}"
            for key, want in (
                ("first_seed", info.first_seed),
                ("n_seeds", info.n_seeds),
                ("records_per_seed", info.records_per_seed),
            ):
                if k.get(key) != want:
                    e.append(f"{where}.{key}: expected {want}, got {k.get(key)!r}")
            devices = k.get("devices", [])
            if not devices:
                e.append(f"{where}.devices: empty")
                continue
            next_seed = info.first_seed
            for d, dev in enumerate(devices):
                dw = f"{where}.devices[{d}]"
                if dev.get("device") != d:
                    e.append(f"{dw}.device: expected {d}, got {dev.get('device')!r}")
                if dev.get("first_seed") != next_seed:
                    e.append(
                        f"{dw}.first_seed: expected {next_seed} (contiguous with the "
                        f"previous device), got {dev.get('first_seed')!r}"
                    )
                last = dev.get("last_seed")
                if not is_int(last) or not is_int(dev.get("first_seed")):
                    e.append(f"{dw}: seeds must be integers")
                    break
                files = dev.get("files", [])
                if require_files and not files:
                    e.append(f"{dw}.files: no files for seeds {dev['first_seed']}..{last}")
                fseed = dev["first_seed"]
                for j, f in enumerate(files):
                    fw = f"{dw}.files[{j}] ({f.get('path')})"
                    missing = [
                        x
                        for x in ("path", "count", "first_seed", "last_seed", "bytes", "sha256")
                        if x not in f
                    ]
                    if missing:
                        e.append(f"{fw}: missing {missing}")
                        continue
                    if f["first_seed"] != fseed:
                        e.append(f"{fw}.first_seed: expected {fseed}, got {f['first_seed']}")
                    n = (f["last_seed"] - f["first_seed"] + 1) * info.records_per_seed
                    if f["count"] != n:
                        e.append(
                            f"{fw}.count: seeds {f['first_seed']}..{f['last_seed']} need "
                            f"{n} records, manifest says {f['count']}"
                        )
                    fseed = f["last_seed"] + 1
                if files and fseed != last + 1:
                    e.append(f"{dw}: files end at seed {fseed - 1}, device ends at {last}")
                next_seed = last + 1
            if next_seed != info.first_seed + info.n_seeds:
                e.append(
                    f"{where}: devices cover seeds {info.first_seed}..{next_seed - 1}, "
                    f"expected {info.first_seed}..{info.first_seed + info.n_seeds - 1}"
                )
    if m.input_statistics is not None:
        e.extend(
            _statistics_errors(
                m.input_statistics, m.n_s, [k for k in expected if k in FIDUCIAL_KINDS]
            )
        )
    return e


def _statistics_errors(st: dict, n_s: int, kinds: list) -> list[str]:
    """``input_statistics`` against the manifest's fiducial training data."""
    e = []
    if st.get("split") != "train":
        e.append(f"input_statistics.split: expected 'train', got {_short(st.get('split'))}")
    if st.get("kinds") != kinds:
        e.append(f"input_statistics.kinds: expected {kinds}, got {_short(st.get('kinds'))}")
    if st.get("records") != n_s:
        e.append(
            f"input_statistics.records: expected n_s = {n_s} fiducial training inputs, "
            f"got {_short(st.get('records'))}"
        )
    return e
