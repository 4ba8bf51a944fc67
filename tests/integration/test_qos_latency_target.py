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

About 30 s of load on a shared host: ``long``.
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
    before = served(victim)
    p = fio(victim.uri, 1, seconds)
    _, err = p.communicate(timeout=seconds + 60)
    assert p.returncode == 0, err
    return mean_us(before, served(victim))


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
            q0, a0 = aggressor.ctl(op="status")["qos"], served(aggressor)
            start = time.monotonic()
            got = measure_victim(victim, 5.0)
            q1, a1 = aggressor.ctl(op="status")["qos"], served(aggressor)
        finally:
            if share is not None:
                share.stop()
            agg.wait(timeout=60)
        waited = q1["throttled_requests_total"] - q0["throttled_requests_total"]
        return {
            "victim_us": got,
            "aggressor_us": mean_us(a0, a1),
            "throttled": waited,
            "gate_wait_us": (q1["throttled_seconds_total"] - q0["throttled_seconds_total"])
            * 1e6
            / max(1, waited),
            "looks": [h for h in (share.history if share else []) if h["at"] >= start],
        }

    free = contended(None)
    target = max(4 * solo, 500.0)  # an operator's setting: a few times the solo latency
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
    assert held["victim_us"] < 0.75 * free["victim_us"], report
    # the gate's wait is not service: a held aggressor waited far longer there
    assert held["aggressor_us"] < held["gate_wait_us"], report
