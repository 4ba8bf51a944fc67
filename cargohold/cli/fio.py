"""fio against an NBD endpoint: the standard workloads, the command line, and the parsing of
fio's JSON into one row of figures. ``cargohold bench`` runs it; the benchmarks in
``benchmarks/`` import it too, so every table reports the same columns the same way.

A row: ``ops_per_s``, ``mb_per_s`` (10^6 bytes per second), total latency (submission to
completion) ``lat_mean_us``, ``lat_p50_us``, ``lat_p99_us``, ``lat_p999_us``, and ``ios``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cargohold.errors import CargoholdError, ConfigError


class FioError(CargoholdError):
    """fio failed, or printed something that is not its JSON report."""


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    rw: str  # fio's --rw
    bs: str
    qd: int


# issue 6's workloads; the order they run in (a sequential write first fills the volume,
# so the reads after it read data, not holes)
WORKLOADS = [
    Workload("seqwrite-1m-qd4", "1 MiB seqwrite QD4", "write", "1M", 4),
    Workload("randwrite-4k-qd1", "4 KiB randwrite QD1", "randwrite", "4k", 1),
    Workload("randwrite-4k-qd16", "4 KiB randwrite QD16", "randwrite", "4k", 16),
    Workload("randread-4k-qd1", "4 KiB randread QD1", "randread", "4k", 1),
    Workload("randread-4k-qd16", "4 KiB randread QD16", "randread", "4k", 16),
    Workload("seqread-1m-qd4", "1 MiB seqread QD4", "read", "1M", 4),
]


@dataclass(frozen=True)
class Profile:
    name: str
    seconds: float  # measured, per workload
    ramp: float  # before measuring


PROFILES = {
    "standard": Profile("standard", 20.0, 2.0),
    "quick": Profile("quick", 2.0, 0.5),
}

PERCENTILES = {"lat_p50_us": "50.000000", "lat_p99_us": "99.000000", "lat_p999_us": "99.900000"}


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def fio_command(
    uri: str,
    w: Workload,
    seconds: float,
    ramp: float,
    size: int | None = None,
    name: str = "cargohold",
) -> list[str]:
    """fio's nbd engine (libnbd) against ``uri``, time-based, JSON output with latency
    percentiles 50/99/99.9. ``size`` limits the region (default: the export's size)."""
    cmd = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}"]
    cmd += [f"--rw={w.rw}", f"--bs={w.bs}", f"--iodepth={w.qd}"]
    cmd += ["--time_based", f"--runtime={_ms(seconds)}"]
    if ramp > 0:
        cmd.append(f"--ramp_time={_ms(ramp)}")
    if size:
        cmd.append(f"--size={size}")
    cmd += ["--randrepeat=0", "--norandommap", "--output-format=json"]
    cmd += ["--lat_percentiles=1", "--percentile_list=50:99:99.9"]
    return cmd


def file_command(
    path: str,
    w: Workload,
    seconds: float,
    ramp: float,
    size: int | None = None,
    name: str = "local",
) -> list[str]:
    """The same workload on a local file through the kernel (libaio, O_DIRECT): the disk's
    limit, ``cargohold bench``'s baseline beside the NBD targets."""
    cmd = fio_command("-", w, seconds, ramp, size=size, name=name)
    i = cmd.index("--ioengine=nbd")
    cmd[i : i + 2] = ["--ioengine=libaio", "--direct=1", f"--filename={path}"]
    return cmd


def parse_report(out: str) -> dict[str, Any]:
    """fio's JSON report (the nbd engine may print lines before it); FioError if none."""
    start = out.find("{")
    if start < 0:
        raise FioError(f"fio printed no JSON report: {out.strip()[:300]!r}")
    try:
        report = json.loads(out[start:])
    except ValueError as e:
        raise FioError(
            f"fio's report is not valid JSON ({e}): {out[start : start + 200]!r}"
        ) from None
    if not isinstance(report, dict) or not report.get("jobs"):
        raise FioError("fio's report has no jobs")
    return report


def job_figures(job: dict[str, Any], rw: str) -> dict[str, Any]:
    """One row from one fio job: the read side for reads, the write side for writes."""
    if job.get("error"):
        raise FioError(f"fio job {job.get('jobname')!r} ended with error {job['error']}")
    side = job["write"] if "write" in rw else job["read"]
    lat = side.get("lat_ns") or {}
    pct = lat.get("percentile") or {}
    row = {
        "ops_per_s": float(side.get("iops", 0.0)),
        "mb_per_s": float(side.get("bw_bytes", 0)) / 1e6,
        "lat_mean_us": float(lat.get("mean", 0.0)) / 1000,
        "ios": int(side.get("total_ios", 0)),
    }
    for key, p in PERCENTILES.items():
        row[key] = float(pct.get(p, 0.0)) / 1000
    return row


def figures(out: str, rw: str) -> dict[str, Any]:
    """The row of fio's stdout ``out`` (its first job)."""
    return job_figures(parse_report(out)["jobs"][0], rw)


def check_fio() -> str:
    """fio's version; ConfigError when fio, or its nbd engine, is missing."""
    if shutil.which("fio") is None:
        raise ConfigError("fio is not installed (Debian: apt install fio)")
    p = subprocess.run(["fio", "--enghelp"], capture_output=True, text=True)
    if "nbd" not in p.stdout.split():
        raise ConfigError("this fio has no nbd ioengine (it needs fio 3.19+ built with libnbd)")
    return subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()


def run(
    cmd: list[str],
    rw: str,
    expected: float | None = None,
    on_tick: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Run fio; its row. ``on_tick(elapsed_seconds)`` is called about 5 times a second
    while it runs. fio is stopped (SIGTERM, then SIGKILL) if this is interrupted."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timeout = None if expected is None else expected * 3 + 60
    try:
        while True:
            try:
                out, err = p.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if on_tick is not None:
                    on_tick(time.monotonic() - t0)
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise FioError(
                        f"fio ran for more than {timeout:.0f} s: {' '.join(cmd)}"
                    ) from None
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if p.returncode != 0:
        raise FioError(f"fio exited {p.returncode}: {' '.join(cmd)}\n{(err or out).strip()[-800:]}")
    return figures(out, rw)
