#!/usr/bin/env python3
"""Benchmark: noisy neighbours. Two volumes share one "node" — the same three replica
servers, the same disk, the same two cores — and the victim's tail latency is measured
with the aggressor absent, unlimited, held to a QoS limit, and held to its weight's share
(docs/qos.md).

    victim     4 KiB random read/write (50/50) at QD1, fio's nbd engine
    aggressor  4 KiB random read/write (50/50) at QD32, fio's nbd engine

One round is six phases, each ``--seconds`` long, the victim measured while the
aggressor runs:

    solo        no aggressor
    unlimited   the aggressor without limits
    limited     the aggressor's engine given max_iops = --limit online (control op qos)
    weighted    both given the IOPS limits the agent's fair share (agent/fair_share.py)
                computes for a node budget of --budget-fraction (0.9) x what the node did
                in this round's unlimited phase (victim + aggressor), weights --victim-weight and
                --aggressor-weight, the victim counted as wanting 1.5 x its solo rate +
                50 (NodeShare's headroom for a volume that is not held back); and each
                engine (all its threads) reniced to its weight's nice value, as the node's
                agent does (agent/cpu_priority.py nice_for: weight 25 -> nice 6), and
                put back after the phase
    protected   a node latency target (docs/qos.md, "A latency target"): the agent's own
                NodeShare with a LatencyTarget of --latency-target runs live once a second
                against the two engines' statuses (tests/support/live_share.py), weights
                --victim-weight and --aggressor-weight, no node_iops, and pushes its limits
                through the engines' op qos; the engines reniced as in weighted. The
                aggressor runs --warmup seconds before the victim is measured, so the
                controller has settled (the victim at QD1 too, not measured: alone, a
                volume is never shared); the budget it held and the aggressor's IOPS are
                recorded. Skipped without --latency-target.
    solo-again  no aggressor again: how far the host itself drifted within the round

``--repeats N`` runs N rounds, the phases interleaved in that order every round, so slow
drift of this shared machine hits every phase alike. Reported per phase: the medians over
the rounds of the victim's read and write p99 and IOPS, the aggressor's IOPS, the victim's
p99 relative to the same round's solo (the worse of read and write; median and spread
over rounds), and the host's load average at the end of every phase. Before every phase
the page cache's dirty data is written back (benchmarks/method.py ``settle_writeback``:
the aggressor's writes would otherwise be flushed during the next phase). Per phase also:
the CPU each of our processes used (% of one CPU, with its worker processes), fio's own
CPU, and the time our processes spent runnable but waiting for a CPU, per victim request
(``/proc/PID/task/*/schedstat``) — on a shared machine that is where a tail latency
comes from when our processes are mostly idle.

``--profile DIR``: during the first round's limited phase, py-spy records the victim's and
the aggressor's engines and the replica servers (with their worker processes) to
DIR/NAME.txt (collapsed stacks, one line a stack with its sample count).

    .venv/bin/python benchmarks/qos.py [--seconds 10] [--repeats 3] [--limit 200] [--no-cpu-priority]
        [--latency-target 1500us] [--warmup 5] [--json FILE] [--profile DIR]

Every phase also records the victim engine's mean service latency (engine status:
past the QoS gate to the replicas' answer; agent/latency_target.py ``service``) and, with
an aggressor, the node's (both engines'): the figure to choose a latency target from.

Every process started here (replica servers, engines, fio, py-spy) is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.method import (  # noqa: E402
    CLK_TCK,
    cpu_ticks,
    host_load,
    run_queue_wait_ns,
    settle_writeback,
    spread,
)
from cargohold.agent.cpu_priority import nice_for, renice  # noqa: E402
from cargohold.agent.fair_share import GROW, HEADROOM, Claim, shares  # noqa: E402
from cargohold.agent.latency_target import service  # noqa: E402
from cargohold.agent.settings import parse_latency_target  # noqa: E402
from cargohold.cli import fio  # noqa: E402
from tests.support.engine import EngineProc  # noqa: E402
from tests.support.live_share import LiveShare  # noqa: E402
from tests.support.replica_cluster import ReplicaServers  # noqa: E402

MIB = 1 << 20
SIZE = 256 * MIB
PHASES = ("solo", "unlimited", "limited", "weighted", "protected", "solo-again")


def fio_cmd(uri: str, qd: int, seconds: float, name: str) -> list[str]:
    cmd = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", "--rw=randrw"]
    cmd += ["--rwmixread=50", "--bs=4k", f"--iodepth={qd}", "--time_based"]
    cmd += [f"--runtime={int(seconds * 1000)}ms", f"--size={SIZE}", "--randrepeat=0"]
    cmd += ["--norandommap", "--output-format=json", "--lat_percentiles=1"]
    return [*cmd, "--percentile_list=50:99:99.9"]


def sides(out: str) -> dict[str, Any]:
    job = fio.parse_report(out)["jobs"][0]
    r, w = fio.job_figures(job, "read"), fio.job_figures(job, "write")
    return {
        "iops": round(r["ops_per_s"] + w["ops_per_s"]),
        "fio_cpu_pct": round(float(job.get("usr_cpu", 0)) + float(job.get("sys_cpu", 0)), 1),
        "read_p50_us": round(r["lat_p50_us"]),
        "read_p99_us": round(r["lat_p99_us"]),
        "write_p50_us": round(w["lat_p50_us"]),
        "write_p99_us": round(w["lat_p99_us"]),
    }


def profile(pids: dict[str, int], seconds: float, into: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy record each process (and its children) for ``seconds``, collapsed stacks."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    into.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
        cmd += ["--format", "raw", "--subprocesses", "--nonblocking", "--idle"]
        cmd += ["--output", str(into / f"{name}.txt")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def phase(
    victim: EngineProc,
    aggressor: EngineProc | None,
    seconds: float,
    pids: dict[str, int],
    spy: bool = False,
    spy_dir: Path | None = None,
    nice: int = 0,
    warmup: float = 1.0,
    victim_warmup: bool = False,
) -> dict[str, Any]:
    """One phase; with the page cache's dirty data written back first (the aggressor's
    writes would otherwise be flushed during the next phase), and the CPU seconds each of
    our processes (``pids``, with their workers) used while the victim ran."""
    writeback = settle_writeback()
    agg = None
    spies: list[subprocess.Popen[bytes]] = []
    if aggressor is not None:  # starts first and runs past the victim's window
        agg = subprocess.Popen(
            [
                "nice",
                "-n",
                str(nice),
                *fio_cmd(aggressor.uri, 32, seconds + warmup + 1, "aggressor"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if victim_warmup:  # both busy while a controller settles; not measured
            subprocess.run(
                fio_cmd(victim.uri, 1, warmup, "victim-warmup"), capture_output=True, check=True
            )
        else:
            time.sleep(warmup)
    try:
        if spy and spy_dir is not None:
            spies = profile(pids, seconds, spy_dir)
        before = cpu_ticks(list(pids.values()))
        waited = run_queue_wait_ns(list(pids.values()))
        engines = [e for e in (victim, aggressor) if e is not None]
        served = [service(e.ctl(op="status")) for e in engines]
        t0 = time.monotonic()
        v = subprocess.run(
            fio_cmd(victim.uri, 1, seconds, "victim"), capture_output=True, text=True, check=True
        )
        took = time.monotonic() - t0
        after = cpu_ticks(list(pids.values()))
        waited = {p: n - waited[p] for p, n in run_queue_wait_ns(list(pids.values())).items()}
        out: dict[str, Any] = {"victim": sides(v.stdout)}
        served = [
            (n1 - n0, us1 - us0)
            for (n0, us0), (n1, us1) in zip(
                served, [service(e.ctl(op="status")) for e in engines], strict=True
            )
        ]
        out["service_mean_us"] = {  # past the QoS gate to the replicas' answer
            "victim": round(served[0][1] / max(1.0, served[0][0])),
            "node": round(sum(u for _, u in served) / max(1.0, sum(n for n, _ in served))),
        }
        ops = max(1, out["victim"]["iops"] * took)
        out["run_queue_us_per_victim_op"] = {  # waited for a CPU, per victim request
            name: round(waited[p] / 1000 / ops, 1) for name, p in pids.items()
        }
        out["cpu_pct"] = {  # % of one CPU while the victim ran
            name: round(100 * (after[p] - before[p]) / CLK_TCK / took, 1)
            for name, p in pids.items()
        }
        out["writeback"] = {k: round(v, 1) for k, v in writeback.items()}
        if agg is not None:
            a_out, _ = agg.communicate(timeout=seconds + 60)
            out["aggressor"] = sides(a_out)
        out["load"] = host_load()
        return out
    finally:
        for p in spies:
            try:
                p.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if agg is not None and agg.poll() is None:
            agg.terminate()
            agg.wait()


def weighted_limits(
    budget: float, victim_solo: float, victim_weight: int, aggressor_weight: int
) -> dict[str, int]:
    """The IOPS limits NodeShare gives the two on a contended node: the aggressor is held
    back (wants all it can get), the victim wants 1.5 x its rate + 50."""
    given = shares(
        budget,
        {
            "victim": Claim(weight=victim_weight, demand=victim_solo * HEADROOM + GROW),
            "aggressor": Claim(weight=aggressor_weight, demand=math.inf),
        },
    )
    return {k: max(10, round(v)) for k, v in given.items()}


def p99_vs_solo(v: dict[str, Any], solo: dict[str, Any]) -> float:
    return max(v["read_p99_us"] / solo["read_p99_us"], v["write_p99_us"] / solo["write_p99_us"])


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase: medians over rounds and the spread of the p99 ratio."""
    out: dict[str, Any] = {}
    for name in PHASES:
        have = [rd for rd in rounds if name in rd]
        if not have:
            continue
        rows = [rd[name] for rd in have]
        ratios = [p99_vs_solo(rd[name]["victim"], rd["solo"]["victim"]) for rd in have]
        s: dict[str, Any] = {
            "victim_iops": spread([r["victim"]["iops"] for r in rows]),
            "read_p99_us": spread([r["victim"]["read_p99_us"] for r in rows]),
            "write_p99_us": spread([r["victim"]["write_p99_us"] for r in rows]),
            "p99_vs_solo": spread(ratios),
            "load_1min": spread([r["load"][0] for r in rows]),
            "run_queue_us_per_victim_op": spread(
                [sum(r["run_queue_us_per_victim_op"].values()) for r in rows]
            ),
        }
        if all("aggressor" in r for r in rows):
            s["aggressor_iops"] = spread([r["aggressor"]["iops"] for r in rows])
        s["node_service_mean_us"] = spread([r["service_mean_us"]["node"] for r in rows])
        held = [r["controller"]["budget_iops"] for r in rows if "controller" in r]
        if held and all(held):
            s["budget_iops"] = spread([b["median"] for b in held])
        out[name] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the five phases")
    ap.add_argument("--limit", type=int, default=200, help="the aggressor's max_iops (limited)")
    # 4:1 as before, with the victim at the default weight: the aggressor's weight is the
    # low one, so the agent lowers its engine's CPU priority (nice_for(25) = 6)
    ap.add_argument("--victim-weight", type=int, default=100)
    ap.add_argument("--aggressor-weight", type=int, default=25)
    ap.add_argument(
        "--budget-fraction",
        type=float,
        default=0.9,
        help="weighted: the node budget as a fraction of what the unlimited phase did",
    )
    ap.add_argument(
        "--aggressor-nice",
        type=int,
        default=0,
        help="run the aggressor's engine and fio at this nice value (0-19): how much of the "
        "victim's tail is CPU scheduling",
    )
    ap.add_argument(
        "--no-cpu-priority",
        action="store_true",
        help="weighted: leave the engines at nice 0 (the A/B of the agent's CPU priority)",
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--profile", help="py-spy the first limited phase into this directory")
    ap.add_argument(
        "--latency-target",
        help="protected: the node latency target (2ms, 1500us; a plain number is µs), the "
        "agent setting node_latency_target; none: no protected phase",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="protected: seconds the aggressor runs under the controller before the victim",
    )
    args = ap.parse_args()
    target_us = parse_latency_target(args.latency_target) if args.latency_target else 0
    fio.check_fio()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qos-bench-") as tmp:
        servers = ReplicaServers(Path(tmp), 3)
        engines: list[EngineProc] = []
        try:
            for vol in ("victim", "aggressor"):
                for i in range(3):
                    servers.create_replica(i, f"{vol[0]}{i}", SIZE)
            specs = {
                vol: [f"{vol[0]}{i}@127.0.0.1:{servers.servers[i].port}" for i in range(3)]
                for vol in ("victim", "aggressor")
            }
            victim = EngineProc("victim", specs["victim"], 1, tmp, local="v0").start()
            engines.append(victim)
            aggressor = EngineProc("aggressor", specs["aggressor"], 1, tmp, local="a0").start()
            engines.append(aggressor)
            for e in engines:  # fill: reads of holes measure nothing
                subprocess.run(
                    ["fio", "--name=fill", "--ioengine=nbd", f"--uri={e.uri}", "--rw=write",
                     "--bs=1M", "--iodepth=4", f"--size={SIZE}", "--output-format=json"],
                    capture_output=True, check=True,
                )  # fmt: skip
            pids = {"victim-engine": victim.proc.pid, "aggressor-engine": aggressor.proc.pid}  # type: ignore[union-attr]
            for i, s in enumerate(servers.servers):
                pids[f"replica-server-{i}"] = s.proc.pid  # type: ignore[union-attr]
            if args.aggressor_nice:
                renice(aggressor.proc.pid, args.aggressor_nice)  # type: ignore[union-attr]
            nice = args.aggressor_nice
            for n in range(args.repeats):
                rd: dict[str, Any] = {}
                rd["solo"] = phase(victim, None, args.seconds, pids)
                rd["unlimited"] = phase(victim, aggressor, args.seconds, pids, nice=nice)
                aggressor.ctl(op="qos", limits={"max_iops": args.limit})
                before = aggressor.ctl(op="status")["qos"]
                rd["limited"] = phase(
                    victim,
                    aggressor,
                    args.seconds,
                    pids,
                    bool(args.profile) and n == 0,
                    Path(args.profile) if args.profile else None,
                    nice,
                )
                rd["limited"]["throttled"] = _throttled(before, aggressor.ctl(op="status")["qos"])
                budget = args.budget_fraction * (
                    rd["unlimited"]["victim"]["iops"] + rd["unlimited"]["aggressor"]["iops"]
                )
                lim = weighted_limits(
                    budget, rd["solo"]["victim"]["iops"], args.victim_weight, args.aggressor_weight
                )
                victim.ctl(op="qos", limits={"max_iops": lim["victim"]})
                aggressor.ctl(op="qos", limits={"max_iops": lim["aggressor"]})
                before = aggressor.ctl(op="status")["qos"]
                cpu = not args.no_cpu_priority
                engine_nice = {  # the CPU priority the agent gives each weight
                    "victim": renice(victim.proc.pid, nice_for(args.victim_weight) if cpu else 0),  # type: ignore[union-attr]
                    "aggressor": renice(
                        aggressor.proc.pid,  # type: ignore[union-attr]
                        nice_for(args.aggressor_weight) if cpu else args.aggressor_nice,
                    ),
                }
                rd["weighted"] = phase(victim, aggressor, args.seconds, pids, nice=nice)
                renice(victim.proc.pid, 0)  # type: ignore[union-attr]
                renice(aggressor.proc.pid, args.aggressor_nice)  # type: ignore[union-attr]
                rd["weighted"].update(
                    budget_iops=round(budget), limits=lim, engine_nice=engine_nice
                )
                rd["weighted"]["throttled"] = _throttled(before, aggressor.ctl(op="status")["qos"])
                for e in engines:
                    e.ctl(op="qos", limits={})
                if target_us:
                    rd["protected"] = _protected(victim, aggressor, args, target_us, pids, nice)
                rd["solo-again"] = phase(victim, None, args.seconds, pids)
                rounds.append(rd)
                _print_round(n, rd)
        finally:
            for e in engines:
                e.stop()
            servers.stop()
    out = {
        "seconds": args.seconds,
        "repeats": args.repeats,
        "limit_iops": args.limit,
        "weights": {"victim": args.victim_weight, "aggressor": args.aggressor_weight},
        "aggressor_nice": args.aggressor_nice,
        "cpu_priority": not args.no_cpu_priority,
        "latency_target_us": target_us,
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "summary": summary(rounds),
    }
    print(f"\nmedians over {args.repeats} rounds ({os.cpu_count()} CPUs):")
    print(
        f"{'phase':<11} {'victim IOPS':>11} {'r p99 us':>9} {'w p99 us':>9} "
        f"{'p99/solo (min-max)':>20} {'aggr IOPS':>9} {'load':>5} {'rq us/op':>8}"
    )
    for name, s in out["summary"].items():
        ratio = s["p99_vs_solo"]
        agg = round(s["aggressor_iops"]["median"]) if "aggressor_iops" in s else "-"
        print(
            f"{name:<11} {s['victim_iops']['median']:>11.0f} {s['read_p99_us']['median']:>9.0f} "
            f"{s['write_p99_us']['median']:>9.0f} "
            f"{ratio['median']:>6.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}) "
            f"{agg:>9} {s['load_1min']['median']:>5.1f} "
            f"{s['run_queue_us_per_victim_op']['median']:>8.0f}"
        )
    for name, s in out["summary"].items():
        b = s.get("budget_iops")
        print(
            f"{name:<11} node service latency (mean) {s['node_service_mean_us']['median']:.0f} us"
            + (f"; budget held {b['median']:.0f} IOPS ({b['min']:.0f}-{b['max']:.0f})" if b else "")
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def _protected(
    victim: EngineProc,
    aggressor: EngineProc,
    args: argparse.Namespace,
    target_us: int,
    pids: dict[str, int],
    nice: int,
) -> dict[str, Any]:
    """The protected phase: NodeShare with the latency target live against both engines
    (tests/support/live_share.py), the engines reniced by weight as in weighted."""
    cpu = not args.no_cpu_priority
    vpid, apid = victim.proc.pid, aggressor.proc.pid  # type: ignore[union-attr]
    renice(vpid, nice_for(args.victim_weight) if cpu else 0)
    renice(apid, nice_for(args.aggressor_weight) if cpu else args.aggressor_nice)
    share = LiveShare(
        {
            "victim": (victim, {"weight": args.victim_weight}),
            "aggressor": (aggressor, {"weight": args.aggressor_weight}),
        },
        target_us,
    ).start()
    before = aggressor.ctl(op="status")["qos"]
    try:
        start = time.monotonic() + args.warmup
        out = phase(
            victim, aggressor, args.seconds, pids, nice=nice, warmup=args.warmup, victim_warmup=True
        )
    finally:
        share.stop()
        renice(vpid, 0)
        renice(apid, args.aggressor_nice)
    out["throttled"] = _throttled(before, aggressor.ctl(op="status")["qos"])
    during = [h for h in share.history if start <= h["at"] <= start + args.seconds]
    budgets = [h["budget"] for h in during if h["budget"] is not None]
    out["controller"] = {
        "latency_target_us": target_us,
        "budget_iops": spread(budgets) if budgets else None,  # while the victim ran
        "held_budget_looks": f"{len(budgets)}/{len(during)}",
        "aggressor_limit": spread(
            [h["limits"]["aggressor"] for h in during if h["limits"].get("aggressor")]
        )
        if any(h["limits"].get("aggressor") for h in during)
        else None,
        "history": share.history,
        "errors": share.errors[:5],
    }
    return out


def _throttled(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """The aggressor's throttle counters during the phase."""
    return {
        k: round(after.get(k, 0) - before.get(k, 0), 3)
        for k in ("throttled_requests_total", "throttled_seconds_total")
    }


def _print_round(n: int, rd: dict[str, Any]) -> None:
    solo = rd["solo"]["victim"]
    for name, r in rd.items():
        v = r["victim"]
        agg = r.get("aggressor", {})
        cpu = " ".join(
            f"{k.split('-')[0][:3]}{k[-1] if k[-1].isdigit() else ''}={c:g}"
            for k, c in r["cpu_pct"].items()
        )
        print(
            f"round {n + 1} {name:<11} victim {v['iops']:>6} IOPS  p99 r/w "
            f"{v['read_p99_us']:>6}/{v['write_p99_us']:>6} us  {p99_vs_solo(v, solo):5.2f}x solo  "
            f"aggressor {agg.get('iops', '-'):>6} (fio {agg.get('fio_cpu_pct', '-')}% CPU)  "
            f"load {r['load'][0]}  CPU% {cpu}  run-queue us/victim op "
            f"{sum(r['run_queue_us_per_victim_op'].values()):.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
