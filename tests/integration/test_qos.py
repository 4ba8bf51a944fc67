"""Per-volume QoS in a real engine (three replica servers on loopback, ``cargohold engine
--qos``), measured by real NBD clients: fio's nbd engine (libnbd) for the rates, and our
own NBD client (tests/support/nbd_load.py) where every request has a 5 s deadline and
completion times are needed.

- accuracy: an IOPS limit with 4 KiB and 1 MiB requests (one op per 256 KiB), a bandwidth
  limit with 1 MiB requests: within ±10% over 5 s (the ``long`` variants: ±5% over 20 s);
- no timeouts: QD64 against 100 IOPS, every request within its 5 s deadline, no error;
- online change under load: the new limit holds within 1 s of the control op, no error;
- the throttle counters in the engine's status grow only while requests wait.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from cargohold.cli import fio
from cargohold.constants import MIB
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need
from tests.support.nbd_load import run_load
from tests.support.replica_cluster import ReplicaCluster

SIZE = 128 * MIB


@pytest.fixture(scope="module")
def engine(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One engine for the module (starting three replica servers and an engine costs
    seconds on a loaded machine); each test sets the limits it needs first."""
    tmp_path = tmp_path_factory.mktemp("qos")
    cluster = ReplicaCluster(tmp_path, SIZE)
    e = EngineProc(
        "vol",
        cluster.specs(),
        1,
        str(tmp_path),
        local="r0",
        extra=["--qos", json.dumps({"max_iops": 100})],
    ).start()
    yield e
    e.stop()
    cluster.stop()
    assert "Traceback" not in e.output(), e.output()


def fio_rate(e: EngineProc, rw: str, bs: str, qd: int, seconds: float) -> dict:  # type: ignore[type-arg]
    need("fio")
    w = fio.Workload("qos", "qos", rw, bs, qd)
    return fio.run(fio.fio_command(e.uri, w, seconds, 0.0, size=64 * MIB), rw, seconds)


def set_qos(e: EngineProc, **limits: object) -> dict:  # type: ignore[type-arg]
    answer = e.ctl(op="qos", limits=limits)
    assert answer["ok"], answer
    return answer["qos"]  # type: ignore[no-any-return]


def check_accuracy(e: EngineProc, seconds: float, tolerance: float) -> None:
    set_qos(e, max_iops=400)
    row = fio_rate(e, "randread", "4k", 16, seconds)
    assert row["ops_per_s"] == pytest.approx(400, rel=tolerance), row
    set_qos(e, max_iops=200)  # 1 MiB = 4 ops: 50 requests/s
    row = fio_rate(e, "randread", "1M", 8, seconds)
    assert row["ops_per_s"] == pytest.approx(50, rel=tolerance), row
    set_qos(e, max_read_bandwidth=30 * MIB)
    row = fio_rate(e, "randread", "1M", 8, seconds)
    assert row["mb_per_s"] == pytest.approx(30 * MIB / 1e6, rel=tolerance), row
    set_qos(e, max_write_iops=200)
    row = fio_rate(e, "randwrite", "4k", 16, seconds)
    assert row["ops_per_s"] == pytest.approx(200, rel=tolerance), row


def test_limits_hold_within_10_percent_over_5_s(engine: EngineProc) -> None:
    check_accuracy(engine, 5.0, 0.10)


@pytest.mark.long
def test_limits_hold_within_5_percent_over_20_s(engine: EngineProc) -> None:
    check_accuracy(engine, 20.0, 0.05)


def test_qd64_against_100_iops_never_times_out(engine: EngineProc) -> None:
    """Each request waits about 64 / 100 s in the gate: far below a 5 s deadline. The
    throttle delays taking requests up, never a reply: nothing fails."""
    set_qos(engine, max_iops=100)
    before = engine.ctl(op="status")["qos"]
    load = asyncio.run(run_load(engine.port, "vol", depth=64, seconds=4.0, timeout=5.0))
    assert load.timeouts == 0 and load.errors == 0
    assert load.rate(1.0, 4.0) == pytest.approx(100, rel=0.15)
    assert max(load.latencies) < 2.0, max(load.latencies)
    after = engine.ctl(op="status")["qos"]
    assert after["throttled_requests_total"] - before["throttled_requests_total"] >= 300
    assert after["throttled_seconds_total"] > before["throttled_seconds_total"] + 10


def test_an_online_change_applies_within_a_second_without_errors(engine: EngineProc) -> None:
    set_qos(engine, max_iops=100)

    async def scenario():  # type: ignore[no-untyped-def]
        loading = asyncio.create_task(run_load(engine.port, "vol", depth=16, seconds=5.0))
        await asyncio.sleep(2.0)
        t = asyncio.get_running_loop().time()
        await asyncio.to_thread(set_qos, engine, max_iops=300)
        return await loading, t

    load, changed = asyncio.run(scenario())
    assert load.errors == 0 and load.timeouts == 0
    at = changed - load.started  # the change, in the load's time
    assert load.rate(0.5, at) == pytest.approx(100, rel=0.15)
    assert load.rate(at + 1.0, 5.0) == pytest.approx(300, rel=0.15)
    set_qos(engine)  # no limits: everything goes
    status = engine.ctl(op="status")["qos"]
    assert status["limits"] == {} and status["queued"] == 0


def test_bad_limits_are_refused_naming_them_and_change_nothing(engine: EngineProc) -> None:
    before = engine.ctl(op="status")["qos"]["limits"]
    answer = engine.ctl(op="qos", limits={"max_iops": 1})
    assert not answer["ok"] and answer["type"] == "InvalidArgument"
    assert "max_iops=1 is not valid" in answer["error"]
    assert engine.ctl(op="status")["qos"]["limits"] == before
