"""A node latency target (docs/qos.md, "A latency target") against real processes: three
replica servers, two engines, fio's nbd engine as the clients, and the agent's NodeShare
with a LatencyTarget driving the engines live through their control op ``qos``
(tests/support/live_share.py), as the agent's sharing loop does.

A QD32 aggressor (weight 25) and a QD1 victim (weight 100), 4 KiB random read/write:
without a target the victim's service latency (engine status: past the QoS gate to the
replicas' answer) is that of a full node; with a target of a few times the node's solo
service latency the controller holds the aggressor back and the victim's service latency
drops. The aggressor's own wait in its QoS gate is not in its service latency (else a
throttled volume's queue would look like node latency and the controller would hold it
ever tighter).

About 30 s of load on a shared host: ``long``. Measured (two runs, load 6-7): the victim's
mean write service time 1,452 -> 569 µs and 1,872 -> 608 µs, the node's 2,682 -> 1,056
and 2,344 -> 706 µs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.agent.latency_target import service
from tests.support.engine import EngineProc
from tests.support.live_share import LiveShare
from tests.support.replica_cluster import ReplicaServers

pytestmark = pytest.mark.long

SIZE = 64 << 20


def fio(uri: str, qd: int, seconds: float) -> subprocess.Popen[bytes]:
    cmd = ["fio", "--name=load", "--ioengine=nbd", f"--uri={uri}", "--rw=randrw"]
    cmd += ["--rwmixread=50", "--bs=4k", f"--iodepth={qd}", "--time_based"]
    cmd += [f"--runtime={int(seconds * 1000)}ms", f"--size={SIZE}", "--norandommap"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def served(e: EngineProc) -> tuple[float, float]:
    return service(e.ctl(op="status"))


def writes(e: EngineProc) -> tuple[float, float]:
    """The engine's writes: (served, µs summed). Its reads come from its local replica's
    files without a replica server, and dilute what the aggressor does to it."""
    st = e.ctl(op="status")
    n = sum(st.get("latency_log2_us", {}).get("write", {}).values())
    return n, st.get("latency_sum_us", {}).get("write", 0)


def mean_us(before: tuple[float, float], after: tuple[float, float]) -> float:
    n = after[0] - before[0]
    assert n > 0, "no requests served"
    return (after[1] - before[1]) / n


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[EngineProc, EngineProc]]:
    servers = ReplicaServers(tmp_path, 3)
    started: list[EngineProc] = []
    try:
        for vol in ("victim", "aggressor"):
            for i in range(3):
                servers.create_replica(i, f"{vol[0]}{i}", SIZE)
            spec = [f"{vol[0]}{i}@127.0.0.1:{servers.servers[i].port}" for i in range(3)]
            started.append(EngineProc(vol, spec, 1, str(tmp_path), local=f"{vol[0]}0").start())
        yield started[0], started[1]
    finally:
        for e in started:
            e.stop()
        servers.stop()


def measure_victim(victim: EngineProc, seconds: float) -> float:
    """The victim's mean write service time (µs) while it runs ``seconds`` at QD1."""
    before = writes(victim)
    p = fio(victim.uri, 1, seconds)
    _, err = p.communicate(timeout=seconds + 60)
    assert p.returncode == 0, err
    return mean_us(before, writes(victim))


def test_a_latency_target_holds_the_aggressor_and_the_victim_is_served_faster(
    engines: tuple[EngineProc, EngineProc],
) -> None:
    victim, aggressor = engines
    solo = measure_victim(victim, 3.0)

    def contended(share: LiveShare | None) -> dict[str, Any]:
        agg = fio(aggressor.uri, 32, 11.0)
        try:
            if share is not None:
                share.start()
            measure_victim(victim, 4.0)  # warm-up: both busy, the controller settles
            q0, a0, v0 = aggressor.ctl(op="status")["qos"], served(aggressor), served(victim)
            start = time.monotonic()
            got = measure_victim(victim, 5.0)
            q1, a1, v1 = aggressor.ctl(op="status")["qos"], served(aggressor), served(victim)
        finally:
            if share is not None:
                share.stop()
            agg.wait(timeout=60)
        waited = q1["throttled_requests_total"] - q0["throttled_requests_total"]
        return {
            "victim_us": got,
            "aggressor_us": mean_us(a0, a1),
            "node_us": mean_us((a0[0] + v0[0], a0[1] + v0[1]), (a1[0] + v1[0], a1[1] + v1[1])),
            "throttled": waited,
            "gate_wait_us": (q1["throttled_seconds_total"] - q0["throttled_seconds_total"])
            * 1e6
            / max(1, waited),
            "looks": [h for h in (share.history if share else []) if h["at"] >= start],
        }

    free = contended(None)
    target = max(3 * solo, 500.0)  # an operator's setting: a few times the solo latency
    share = LiveShare(
        {"victim": (victim, {"weight": 100}), "aggressor": (aggressor, {"weight": 25})},
        target,
    )
    held = contended(share)
    report = f"solo {solo:.0f} us, target {target:.0f} us, unheld {free}, held {held}"
    print(report)
    assert free["throttled"] == 0, report
    assert held["throttled"] > 0 and not share.errors, report
    assert any(h["budget"] is not None for h in held["looks"]), report
    assert held["node_us"] < 0.5 * free["node_us"], report  # the node is held ...
    assert held["victim_us"] < 0.8 * free["victim_us"], report  # ... and the victim served faster
    # the gate's wait is not service: a held aggressor waited far longer there
    assert held["aggressor_us"] < held["gate_wait_us"], report
