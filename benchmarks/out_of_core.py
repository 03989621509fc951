"""Out of core, end to end: an archive larger than this machine's memory is
generated with Beam, validated and stream-fitted, against the same on a 1/32-size
archive; prints JSON and writes a plot. As root it drops the page cache (so the
raw read and the fit read from disk).

    python benchmarks/out_of_core.py                 # archive ≥ 1.5 × MemTotal
    python benchmarks/out_of_core.py --scale-down    # CI-sized (0.5 GB vs 1/8), minutes

Everything goes through the ``imnn-stream`` command (``python -m imnn_stream``,
else the ``imnn-stream`` executable beside this interpreter), each step in its
own process; this script only samples those processes:

* every 0.5 s: resident memory of the process (``/proc/PID/smaps_rollup``:
  Rss and anonymous), its children's too, and ``/proc/PID/io`` ``rchar``
  (bytes the fit read);
* per size: generation (simulations/s, MB/s, elapsed, driver peak RSS),
  validation time, a plain sequential read of the shard files (page cache
  dropped first when run as root; otherwise O_DIRECT; otherwise noted as
  cached), the fit's read rate per pass, its s/iteration and peak RSS.

The numerical archive holds a 64×64 (``--size``) Gaussian random field, or
what ``--simulator`` (any ``imnn-stream generate --simulator``: a module's
function or a file's, with ``--input-shape``, ``--theta-fid``, ``--delta-theta``
and ``--simulator-config``) simulates, train split only (an iteration reads it
twice: the two passes), cut for ``--devices`` devices. Results: ``benchmarks/results/out_of_core.json`` and
``.png``. The archives are deleted at the end unless ``--keep``.

Read rates per pass are taken from the fit's ``rchar`` counter: the bytes it
read beyond the passes (imports, the manifest) are assumed to come before the
first pass, so the pass boundaries are approximate by that much.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def records_per_seed(n_params: int) -> int:
    """Numerical mode: the fiducial record and one at θ_fid ∓ δθ/2 for each parameter."""
    return 1 + 2 * n_params


SMALL_FRACTION = 32


# ----------------------------------------------------------------------------- the command


def command() -> list[str]:
    """How to call the ``imnn-stream`` command from here."""
    probe = subprocess.run(
        [sys.executable, "-m", "imnn_stream", "--help"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "imnn_stream"]
    exe = Path(sys.executable).parent / "imnn-stream"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("imnn-stream")
    if found:
        return [found]
    raise SystemExit(
        "out_of_core: neither `python -m imnn_stream` nor an `imnn-stream` "
        "executable is available (install the project: pip install -e .)"
    )


# ----------------------------------------------------------------------------- sampling


def _proc_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                for c in f.read().split():
                    pids += _proc_tree(int(c))
    except OSError:
        pass
    return pids


def _smaps(pid: int) -> tuple[int, int]:
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss = int(rest.split()[0]) * 1024
                elif key == "Anonymous":
                    anon = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return rss, anon


def _rchar(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_sampled(cmd: list[str], interval: float = 0.5, log: Path | None = None) -> dict:
    """Run ``cmd``; sample RSS (process, and with its children) and rchar."""
    t0 = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    samples = []
    while True:
        rss, anon = _smaps(p.pid)
        tree = sum(_smaps(q)[0] for q in _proc_tree(p.pid))
        samples.append((time.perf_counter() - t0, rss, anon, tree, _rchar(p.pid)))
        try:
            p.wait(timeout=interval)
            break
        except subprocess.TimeoutExpired:
            pass
    elapsed = time.perf_counter() - t0
    if log:
        out.close()
    text = log.read_text(errors="replace") if log else ""
    if p.returncode != 0:
        raise SystemExit(
            f"out_of_core: `{' '.join(cmd)}` failed (exit {p.returncode}):\n" + text[-3000:]
        )
    samples = [s for s in samples if s[1] > 0] or [(elapsed, 0, 0, 0, 0)]
    return {
        "elapsed_s": elapsed,
        "samples": samples,
        "output": text,
        "peak_rss": max(s[1] for s in samples),
        "peak_anon": max(s[2] for s in samples),
        "peak_tree_rss": max(s[3] for s in samples),
    }


# ----------------------------------------------------------------------------- machine


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("out_of_core: no MemTotal in /proc/meminfo")


def drop_caches() -> bool:
    """Drop the page cache (root only); True when done."""
    if os.geteuid() != 0:
        return False
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def shard_files(archive: Path) -> list[Path]:
    return sorted(
        p
        for p in archive.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "index.parquet", "job.json")
    )


def raw_read(files: list[Path]) -> dict:
    """A plain sequential read of ``files`` (1 MiB at a time): from disk when the
    cache could be dropped or O_DIRECT works, else noted as possibly cached."""
    chunk = 1 << 20
    dropped = drop_caches()
    method = "buffered, page cache dropped" if dropped else None
    total = 0
    t0 = time.perf_counter()
    if not dropped:
        buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
        try:
            for path in files:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
                try:
                    while True:
                        n = os.readv(fd, [buf])
                        total += n
                        if n < chunk:
                            break
                finally:
                    os.close(fd)
            method = "O_DIRECT" if hasattr(os, "O_DIRECT") else "buffered (may be cached)"
        except OSError:  # a file system without O_DIRECT (tmpfs, some overlays)
            method, total, t0 = None, 0, time.perf_counter()
        finally:
            buf.close()
    if method is None or dropped:
        method = method or "buffered, page cache NOT dropped (not root, no O_DIRECT)"
        b = bytearray(chunk)
        for path in files:
            with open(path, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(b)
                    total += n
                    if n < chunk:
                        break
    seconds = time.perf_counter() - t0
    return {"bytes": total, "seconds": seconds, "mb_per_s": total / seconds / 1e6, "method": method}


# ----------------------------------------------------------------------------- one size


def archive_bytes(archive: Path) -> int:
    return sum(p.stat().st_size for p in shard_files(archive))


def fit_rates(samples, pass_bytes: int, n_passes_expected: int) -> list[dict]:
    """Read rate of each pass from the fit's rchar samples (see module docstring)."""
    total = samples[-1][4]
    n = min(n_passes_expected, total // max(pass_bytes, 1)) if pass_bytes else 0
    base = total - n * pass_bytes
    out = []
    for k in range(int(n)):
        lo, hi = base + k * pass_bytes, base + (k + 1) * pass_bytes
        t_lo = next((s[0] for s in samples if s[4] >= lo), None)
        t_hi = next((s[0] for s in samples if s[4] >= hi), samples[-1][0])
        if t_lo is None or t_hi <= t_lo:
            continue
        out.append(
            {
                "pass": k + 1,
                "start_s": t_lo,
                "seconds": t_hi - t_lo,
                "mb_per_s": pass_bytes / (t_hi - t_lo) / 1e6,
            }
        )
    return out


def s_per_iteration(output: str) -> float | None:
    """The fit's own per-iteration timing (its progress line, ``s/it=...``)."""
    import re

    values = [float(v) for v in re.findall(r"s/it=([0-9.eE+-]+)", output)]
    return statistics.median(values[1:] if len(values) > 1 else values) if values else None


def one_size(label, cmd, archive: Path, n_s: int, args, work: Path) -> dict:
    per_seed = records_per_seed(len(args.theta))
    iterations = args.iterations if label == "large" else args.small_iterations
    print(
        f"[{label}] generating n_s = n_d = {n_s} ({n_s * per_seed} records) into {archive}",
        file=sys.stderr,
        flush=True,
    )
    gen = run_sampled(
        cmd
        + [
            "generate",
            "--simulator",
            args.simulator,
            "--simulator-config",
            json.dumps(args.simulator_config),
            "--theta-fid",
            ",".join(map(str, args.theta)),
            "--delta-theta",
            ",".join(map(str, args.delta)),
            "--n-s",
            str(n_s),
            "--n-devices",
            str(args.devices),
            "--mode",
            "numerical",
            "--no-validation",
            "--records-per-shard",
            str(args.records_per_shard),
            "--input-shape",
            ",".join(map(str, args.input_shape)),
            "--out",
            str(archive),
            "--no-progress",
        ]
        + args.beam_args,
        log=work / f"{label}_generate.log",
    )
    nbytes = archive_bytes(archive)
    records = n_s * per_seed
    print(
        f"[{label}] {nbytes / 1e9:.2f} GB in {gen['elapsed_s']:.1f} s; validating",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    val = subprocess.run(cmd + ["validate", str(archive), "--json"], capture_output=True, text=True)
    validate_s = time.perf_counter() - t0
    if val.returncode != 0:
        raise SystemExit(
            f"out_of_core: validate failed on {archive}:\n{val.stdout[-2000:]}{val.stderr[-2000:]}"
        )
    print(f"[{label}] raw sequential read", file=sys.stderr, flush=True)
    raw = raw_read(shard_files(archive))
    drop_caches()  # the fit reads from disk too where we can make it
    print(f"[{label}] fitting {iterations} iterations", file=sys.stderr, flush=True)
    fit = run_sampled(
        cmd
        + [
            "fit",
            str(archive),
            "--model",
            args.model,
            "--devices",
            str(args.devices),
            "--n-per-device",
            str(args.n_per_device),
            "--max-iterations",
            str(iterations),
            "--min-iterations",
            str(iterations),
            "--cache-mib",
            str(args.cache_mib),
            "--out",
            str(work / f"{label}_run"),
        ],
        log=work / f"{label}_fit.log",
    )
    # train split only: each iteration is two passes, plus the final statistics pass
    passes = fit_rates(fit["samples"], nbytes, 2 * iterations + 1)
    rates = [p["mb_per_s"] for p in passes]
    steady = rates[1:] if len(rates) > 1 else rates  # the first pass includes compilation
    spi = s_per_iteration(fit["output"])
    # the fit's own account of the time it waited for its readers (run folder summary)
    try:
        with open(work / f"{label}_run" / "summary.json") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        summary = {}
    result = {
        "archive_bytes": nbytes,
        "records": records,
        "n_s": n_s,
        "n_d": n_s,
        "input_shape": list(args.input_shape),
        "dtype": "float32",
        "generation": {
            "elapsed_s": gen["elapsed_s"],
            "sims_per_s": records / gen["elapsed_s"],
            "mb_per_s": nbytes / gen["elapsed_s"] / 1e6,
            "driver_peak_rss_mib": gen["peak_rss"] / 2**20,
            "all_processes_peak_rss_mib": gen["peak_tree_rss"] / 2**20,
        },
        "validate_s": validate_s,
        "raw_read": raw,
        "fit": {
            "elapsed_s": fit["elapsed_s"],
            "iterations": iterations,
            "s_per_iteration": spi,
            "peak_rss_mib": fit["peak_rss"] / 2**20,
            "peak_anon_mib": fit["peak_anon"] / 2**20,
            "read_mb_per_s_per_pass": passes,
            "read_mb_per_s": statistics.median(steady) if steady else None,
            "read_vs_raw": (statistics.median(steady) / raw["mb_per_s"]) if steady else None,
            "input_wait_fraction": summary.get("input_wait_fraction"),
            "rss_samples": [(round(s[0], 2), s[1], s[2]) for s in fit["samples"]],
        },
    }
    if not args.keep:
        shutil.rmtree(archive, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- plot


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, r in results["sizes"].items():
        s = r["fit"]["rss_samples"]
        a.plot(
            [x[0] for x in s],
            [x[1] / 2**20 for x in s],
            label=f"{label}: {r['archive_bytes'] / 1e9:.2f} GB archive",
        )
        p = r["fit"]["read_mb_per_s_per_pass"]
        (line,) = b.plot(
            [x["pass"] for x in p], [x["mb_per_s"] for x in p], "o-", label=f"{label}: fit"
        )
        b.axhline(
            r["raw_read"]["mb_per_s"],
            ls="--",
            color=line.get_color(),
            label=f"{label}: raw read ({r['raw_read']['method']})",
        )
    a.axhline(1024, color="grey", ls=":", label="1 GiB")
    a.set(
        xlabel="s since the fit started",
        ylabel="RSS (MiB)",
        ylim=(0, None),
        title=f"streaming fit: resident memory (MemTotal "
        f"{results['mem_total_bytes'] / 2**30:.1f} GiB)",
    )
    a.legend(fontsize=8)
    b.xaxis.get_major_locator().set_params(integer=True)
    b.set(
        xlabel="pass (1: includes compilation)",
        ylabel="MB/s",
        ylim=(0, None),
        title="read rate per pass",
    )
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ram-factor",
        type=float,
        default=1.5,
        help="large archive size as a multiple of MemTotal (default 1.5)",
    )
    p.add_argument(
        "--scale-down",
        action="store_true",
        help="CI-sized run: large archive of --scale-down-mib instead",
    )
    p.add_argument("--scale-down-mib", type=float, default=512)
    p.add_argument(
        "--size", type=int, default=64, help="field side (≥ 64) of the default simulator"
    )
    p.add_argument(
        "--simulator",
        default="grf",
        help="what `imnn-stream generate --simulator` takes (default grf, the Gaussian random "
        "field); another needs --input-shape, --theta-fid and --delta-theta",
    )
    p.add_argument(
        "--simulator-config",
        type=json.loads,
        default=None,
        help='JSON keyword arguments of the simulator (default for grf: {"size": --size})',
    )
    p.add_argument("--input-shape", default=None, help="e.g. 64,64 (default for grf: --size²)")
    p.add_argument("--theta-fid", default="1,2", help="fiducial parameters (default 1,2)")
    p.add_argument("--delta-theta", default="0.1,0.1", help="finite-difference steps")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument(
        "--n-per-device",
        type=int,
        default=512,
        help="records per batch per device (default 512: a batch of 64×64 fields "
        "is one whole 8 MiB transfer group, so both sizes run the same "
        "compiled groups and only the archive size differs)",
    )
    p.add_argument(
        "--small-fraction",
        type=int,
        default=None,
        help="the small archive is 1/this of the large one (default 32; 8 with "
        "--scale-down, so that the small one still fills whole groups)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="what `imnn-stream fit --model` takes (default: the small CNN cnn:8,16 for 2-D "
        "inputs, the command's `auto` for other ranks)",
    )
    p.add_argument(
        "--cache-mib",
        type=int,
        default=0,
        help="the fit's decoded-epoch cache (default 0: every pass is read from disk, "
        "which is what this measures; a cache would hold the small archive in memory)",
    )
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument(
        "--small-iterations",
        type=int,
        default=None,
        help="iterations of the small archive's fit (default: --iterations × "
        "--small-fraction, so both fits read the same bytes: a 2-iteration fit of the "
        "small archive ends in seconds, before its RSS has reached the steady level that "
        "the large one's peak is compared with)",
    )
    p.add_argument(
        "--reuse-large",
        default=None,
        help="take the large archive's results from this earlier JSON (re-measure only "
        "the small one)",
    )
    p.add_argument("--records-per-shard", type=int, default=1000)
    p.add_argument(
        "--dir", default=None, help="where the archives go (default: a temporary folder in $TMPDIR)"
    )
    p.add_argument("--keep", action="store_true", help="keep the archives and run folders")
    p.add_argument("--json", default=str(RESULTS / "out_of_core.json"))
    p.add_argument("--png", default=str(RESULTS / "out_of_core.png"))
    args, beam_args = p.parse_known_args(argv)
    args.beam_args = beam_args  # unknown flags go to Beam, as with `imnn-stream generate`
    if args.small_fraction is None:
        args.small_fraction = 8 if args.scale_down else SMALL_FRACTION
    if args.small_iterations is None:
        args.small_iterations = args.iterations * args.small_fraction
    grf = args.simulator == "grf"
    if grf and args.size < 64:
        p.error("--size must be at least 64 (the benchmark is about 64×64 or larger fields)")
    if not grf and args.input_shape is None:
        p.error("--input-shape is needed with --simulator (it sizes the archive)")
    try:
        args.theta = [float(v) for v in args.theta_fid.split(",")]
        args.delta = [float(v) for v in args.delta_theta.split(",")]
        args.input_shape = (
            [args.size, args.size]
            if args.input_shape is None
            else [int(v) for v in args.input_shape.split(",")]
        )
    except ValueError as e:
        p.error(f"--theta-fid, --delta-theta and --input-shape take comma-separated numbers: {e}")
    if len(args.theta) != len(args.delta):
        p.error(f"--theta-fid has {len(args.theta)} values, --delta-theta {len(args.delta)}")
    if args.model is None:
        args.model = "cnn:8,16" if len(args.input_shape) in (2, 3) else "auto"
    if args.simulator_config is None:
        args.simulator_config = {"size": args.size} if grf else {}

    ram = mem_total()
    # bytes per record, a lower bound (so the archive is at least the target): the
    # float32 field, 16 bytes of TFRecord framing and at least 64 bytes of features
    # (64×64: 16 475 bytes per record measured; the old estimate, + 200 and rounding to
    # the nearest batch, gave a 36.9 GB archive for 1.5 × 23.5 GiB = 1.46×)
    record_bytes = math.prod(args.input_shape) * 4 + 16 + 64
    seed_bytes = record_bytes * records_per_seed(len(args.theta))
    target = (args.scale_down_mib * 2**20) if args.scale_down else args.ram_factor * ram
    # whole batches on every device in both archives, the large one exactly 32× the small;
    # rounded up, so the large one is never below the target
    unit = args.devices * args.n_per_device
    n_small = max(unit, math.ceil(target / args.small_fraction / seed_bytes / unit) * unit)
    n_big = args.small_fraction * n_small
    need = (n_big + n_small) * seed_bytes * 1.05 + (1 << 30)

    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base).free
    if free < need:
        print(
            f"out_of_core: refusing: {base} has {free / 1e9:.1f} GB free, the archives need "
            f"about {need / 1e9:.1f} GB ({n_big * seed_bytes / 1e9:.1f} GB for "
            f"{args.ram_factor if not args.scale_down else 'a scaled-down'}× RAM "
            f"= {ram / 2**30:.1f} GiB, plus the 1/{args.small_fraction} archive and 1 GB spare). "
            "Free space, choose another --dir, or lower --ram-factor.",
            file=sys.stderr,
        )
        return 2
    cmd = command()
    work = Path(tempfile.mkdtemp(prefix="out_of_core_", dir=base))
    results = {
        "benchmark": "out_of_core",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": cmd,
        "mem_total_bytes": ram,
        "mem_total_gib": ram / 2**30,
        "cpus": os.cpu_count(),
        "scale_down": args.scale_down,
        "ram_factor": None if args.scale_down else args.ram_factor,
        "config": {
            "model": args.model,
            "devices": args.devices,
            "n_per_device": args.n_per_device,
            "iterations": args.iterations,
            "small_iterations": args.small_iterations,
            "simulator": args.simulator,
            "simulator_config": args.simulator_config,
            "theta_fid": args.theta,
            "delta_theta": args.delta,
            "input_shape": list(args.input_shape),
            "mode": "numerical",
            "splits": ["train"],
            "records_per_shard": args.records_per_shard,
        },
        "small_fraction": args.small_fraction,
        "root": os.geteuid() == 0,
        "sizes": {},
    }
    try:
        results["sizes"]["small"] = one_size("small", cmd, work / "small", n_small, args, work)
        if args.reuse_large:
            earlier = json.loads(Path(args.reuse_large).read_text())
            results["sizes"]["large"] = earlier["sizes"]["large"]
            results["large_from"] = f"{args.reuse_large} ({earlier['date']})"
        else:
            results["sizes"]["large"] = one_size("large", cmd, work / "large", n_big, args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    s, l = results["sizes"]["small"], results["sizes"]["large"]
    results["archive_over_ram"] = l["archive_bytes"] / ram
    results["size_ratio"] = l["archive_bytes"] / s["archive_bytes"]
    results["peak_rss_ratio_large_over_small"] = l["fit"]["peak_rss_mib"] / s["fit"]["peak_rss_mib"]
    results["summary"] = (
        f"{l['archive_bytes'] / 1e9:.1f} GB archive on a {ram / 2**30:.1f} GiB machine "
        f"({results['archive_over_ram']:.2f}× RAM): peak RSS {l['fit']['peak_rss_mib']:.0f} MiB "
        f"(1/{results['small_fraction']}-size archive: {s['fit']['peak_rss_mib']:.0f} MiB), "
        f"read {l['fit']['read_mb_per_s'] or float('nan'):.0f} MB/s vs "
        f"{l['raw_read']['mb_per_s']:.0f} MB/s raw ({l['raw_read']['method']}), "
        f"{l['fit']['s_per_iteration'] or float('nan'):.1f} s/iteration; generated at "
        f"{l['generation']['sims_per_s']:.0f} simulations/s "
        f"({l['generation']['mb_per_s']:.0f} MB/s, {l['generation']['elapsed_s']:.0f} s)"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    plot(results, Path(args.png))
    printable = json.loads(json.dumps(results))
    for r in printable["sizes"].values():  # the samples are in the file and the plot
        r["fit"]["rss_samples"] = f"{len(r['fit']['rss_samples'])} samples (in {args.json})"
    print(json.dumps(printable, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
