"""Background work yields to the consumer (engine/background.py), measured with real
processes: two replica servers, ``cargohold engine``, and a real NBD client keeping one
4 KiB write in flight (QD1) while the engine rebuilds a replica at full speed
(``rebuild_bandwidth`` 0: the pipelined copy, which holds its write window across chunks).

The same rebuild runs twice, with yielding off (``background_yield_max`` 0) and on (the
default): with it on, the rebuild reports that it stood back (``yields``), and the
consumer completes several times as many writes per second of rebuild. Both are ratios of
counts measured side by side in one test, not absolute latencies, so a loaded machine
slows both runs alike. The rebuilt replica must equal its source byte for byte.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

from cargohold.constants import MIB
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io
from tests.support.nbd_load import Load, run_load
from tests.support.replica_cluster import ReplicaCluster

SIZE = 64 * MIB
DATA = SIZE  # what the rebuild copies: 16 chunks


def _rebuild_under_load(cluster, tmp_path, monkeypatch, epoch, target, yield_max):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CARGOHOLD_ENGINE_BACKGROUND_YIELD_MAX", str(yield_max))
    e = EngineProc("vol", [cluster.spec(0)], epoch, str(tmp_path), local="r0").start()
    stop = threading.Event()
    got: dict[str, Load] = {}
    try:
        if epoch == 1:
            qemu_io(e.uri, f"write -P 0x5a 0 {DATA}")

        def load() -> None:
            got["load"] = asyncio.run(
                run_load(
                    e.port, "vol", depth=1, seconds=120, write=True, span=SIZE, until=stop.is_set
                )
            )

        th = threading.Thread(target=load)
        th.start()
        base = e.ctl(op="status")["counters"].get("write", 0)
        e.wait_for(lambda s: s["counters"].get("write", 0) > base + 20, 30, "the load to start")
        target_spec = f"{target}@127.0.0.1:{cluster.servers[1].port}"
        assert e.ctl(op="add-replica", replica=target_spec)["ok"]
        st = e.wait_for(lambda s: s["robustness"] == "healthy", 120, "the rebuild")
        stop.set()
        th.join(timeout=30)
        load = got["load"]
        assert load.errors == 0 and load.timeouts == 0
        rb = st["replicas"][1]["rebuild"]
        assert rb["copied_bytes"] >= DATA
        # the copy phase (the verify after it holds windows of its own), on our clock
        skew = time.time() - time.monotonic()
        t0 = rb["started"] - skew
        t1 = rb["finished"] - rb["verify_seconds"] - skew
        during = [
            lat
            for t, lat in zip(load.done, load.latencies, strict=True)
            if t0 <= t - lat and t <= t1
        ]
        return {
            "rebuild": rb,
            "seconds": t1 - t0,
            "writes": len(during),
            "rate": len(during) / (t1 - t0),
            "median_ms": 1000 * statistics.median(during) if during else None,
            "counters": st["counters"],
            "engine": e,
        }
    except BaseException:
        stop.set()
        e.stop()
        raise


def test_a_full_speed_rebuild_yields_to_the_consumers_writes(tmp_path, monkeypatch):
    need("qemu-io")
    cluster = ReplicaCluster(tmp_path, SIZE, n=2)
    engines: list[EngineProc] = []
    try:
        cluster.create_replica(1, "r1b", SIZE)
        on = _rebuild_under_load(cluster, tmp_path, monkeypatch, 1, "r1", 0.05)
        engines.append(on["engine"])
        assert len(set(cluster.digests(1, (0, 1)))) == 1  # the rebuilt replica is its source's
        on["engine"].stop()
        off = _rebuild_under_load(cluster, tmp_path, monkeypatch, 2, "r1b", 0)
        engines.append(off["engine"])
        off["engine"].stop()
        figures = {k: (on[k], off[k]) for k in ("seconds", "writes", "rate", "median_ms")}
        print("yield on / off:", figures, on["rebuild"], off["rebuild"])
        assert on["rebuild"]["yields"] >= 1 and on["counters"]["background_yields"] >= 1
        assert off["rebuild"]["yields"] == 0 and off["counters"].get("background_yields", 0) == 0
        # the consumer's writes per second of rebuild: several times more when it yields
        assert on["rate"] > 3 * off["rate"], figures
    finally:
        for e in engines:
            e.stop()
        cluster.stop()
