"""``cargohold bench``'s figures from its runs: pure functions, no I/O (tests/unit/cli/
test_bench_report.py). The method is the benchmarks' (cli/bench_method.py): every workload
runs on every system in turn, repeated; reported are the medians and their spread, the
baselines' verdict (the local file's and nbdkit's runs in band, or INVALID), the ratios of
the target to the local file and to nbdkit of the same run, CPU µs per operation, and for
4 KiB random write at QD16 the ratio to Ceph RBD's recorded figure.

``runs``: workload key -> system -> one row per repeat (cli/fio.py's row, with
``cpu_us_per_op`` where the system's processes are known, and ``load1``). Systems: ``target``
(the volume, the NBD URI or the throwaway local engine), ``local`` (a local file, O_DIRECT,
libaio: the disk's limit), ``nbdkit`` (nbdkit's file plugin, C, on a file beside it).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from cargohold.cli.bench_method import CEPH_ANCHOR, band_check, spread

SYSTEMS = ("target", "local", "nbdkit")
MEDIAN_KEYS = (
    "ops_per_s",
    "mb_per_s",
    "lat_mean_us",
    "lat_p50_us",
    "lat_p99_us",
    "lat_p999_us",
    "cpu_us_per_op",
    "load1",
)


def median_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One system's figures over its repeats: the median of each number (of the rows that
    have it), the spread of ops/s, and the repeats' ops/s themselves."""
    if not rows:
        raise ValueError("no runs")
    out: dict[str, Any] = {}
    for k in MEDIAN_KEYS:
        vals = [float(r[k]) for r in rows if r.get(k) is not None]
        if vals:
            out[k] = statistics.median(vals)
    out["ops_spread"] = spread([float(r["ops_per_s"]) for r in rows])
    out["runs"] = [round(float(r["ops_per_s"]), 1) for r in rows]
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per workload: each system's medians, the baselines' verdict and the target's ratios.

    ``verdict``: ``valid`` True (in band), False (INVALID: its ratios are no result, the
    ``reasons`` say why) or None (no baseline measured: nothing to check)."""
    out: dict[str, dict[str, Any]] = {}
    for wk, per in runs.items():
        systems = {s: median_row(rows) for s, rows in per.items() if rows}
        baselines = {
            s: [float(r["ops_per_s"]) for r in per[s]] for s in ("local", "nbdkit") if per.get(s)
        }
        verdict: dict[str, Any] = {"valid": None, "reasons": []}
        if baselines:
            v = band_check(baselines)
            verdict = {"valid": v.valid, "reasons": v.reasons}
        tgt = systems.get("target", {})
        ops = tgt.get("ops_per_s")
        ratios = {
            "vs_local": ratio(ops, systems.get("local", {}).get("ops_per_s")),
            "vs_nbdkit": ratio(ops, systems.get("nbdkit", {}).get("ops_per_s")),
            "p99_vs_nbdkit": ratio(
                tgt.get("lat_p99_us"), systems.get("nbdkit", {}).get("lat_p99_us")
            ),
            "vs_ceph": ratio(ops, float(CEPH_ANCHOR["iops"]))
            if wk == CEPH_ANCHOR["workload"]
            else None,
        }
        out[wk] = {"systems": systems, "verdict": verdict, "ratios": ratios}
    return out


def all_valid(summary: dict[str, dict[str, Any]]) -> bool | None:
    """False if any workload's baselines are out of band; None if none was checked."""
    verdicts = [w["verdict"]["valid"] for w in summary.values()]
    if all(v is None for v in verdicts):
        return None
    return all(v is not False for v in verdicts)


def verdict_text(v: dict[str, Any]) -> str:
    if v["valid"] is None:
        return "not checked (no baselines)"
    return "in band" if v["valid"] else "INVALID: " + "; ".join(v["reasons"])


def order(n_systems: int, repeat: int) -> list[int]:
    """The systems' order in repeat ``repeat``: rotated by one each time, so no system is
    always the first after the fill (the method's interleaving)."""
    k = repeat % n_systems if n_systems else 0
    idx = list(range(n_systems))
    return idx[k:] + idx[:k]
