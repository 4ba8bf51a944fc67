"""Faults around the volume engine, against real processes (issue 3, "Fault tests").

Three real replica servers on loopback, one replica each; a real ``cargohold engine`` serving
the volume over NBD; real NBD clients (fio, qemu-io, and a pipelined libnbd writer under
Debian's Python, ``engine_support.NbdWriter``). Faults: SIGKILL of a replica server, SIGKILL
of the engine, a second engine with a higher epoch, a full disk under one replica, a slow
link to one replica (a delaying TCP proxy). Each test checks bytes (patterns, fio's crc32c,
every replica's full content compared), the engine's status (modes, errors, rebuild progress,
fencing) and its counters. Waiting is polling with a deadline, never a bare sleep; every
process is stopped by its PID, every loop device and mount undone, in ``finally`` blocks.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.probe.engine_support import (
    MIB,
    OK,
    DelayProxy,
    NbdWriter,
    WriterLog,
    allowed_values,
    check_blocks,
    libnbd_missing,
    loop_ext4,
    loop_ext4_unavailable,
    nbd_read,
)
from tests.probe.support import BLOCK
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io, qemu_io_ok
from tests.support.polling import wait_until
from tests.support.replica_cluster import ReplicaCluster

StartEngine = Callable[..., EngineProc]


def need_libnbd() -> None:
    why = libnbd_missing()
    if why:
        pytest.skip(why)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[StartEngine]:
    """Start ``cargohold engine`` processes; each one is stopped (by PID) at the end."""
    started: list[EngineProc] = []

    def start(replicas: list[str], epoch: int, **kw: Any) -> EngineProc:
        e = EngineProc("vol", replicas, epoch, str(tmp_path), **kw).start()
        started.append(e)
        return e

    try:
        yield start
    finally:
        for e in started:
            e.stop()


def replica(status: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(r for r in status["replicas"] if r["id"] == rid)


def modes(status: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["mode"] for r in status["replicas"]}


def healthy(status: dict[str, Any]) -> bool:
    return status["robustness"] == "healthy"


# --- 1. a replica server SIGKILLed under fio, then a delta rebuild --------------------------
FIO_SIZE = 16 * MIB  # fio works on [0, 16 MiB)
PREFILL = (16 * MIB, 64 * MIB)  # offset, length: written before the kill
WRITER_LBA = 96 * MIB // 4096  # the second client's 8 MiB, in the second rebuild window
REGION = 2048  # blocks the NbdWriter works on (8 MiB)


def fio_job(uri: str) -> list[str]:
    return [
        "fio",
        "--name=v",
        "--ioengine=nbd",
        f"--uri={uri}",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        f"--size={FIO_SIZE}",
        "--randrepeat=1",
        "--verify=crc32c",
        "--verify_state_save=0",
    ]


def test_replica_sigkilled_under_fio_then_delta_rebuilt(
    tmp_path: Path, engines: StartEngine
) -> None:
    """fio (crc32c verify) writes 16 MiB at random; one of three replica servers is
    SIGKILLed in the middle. fio sees no error; the volume is degraded. The server restarts
    and the replica is added back while a second client writes elsewhere in the volume: it
    is delta-rebuilt online (from its persisted generation; only the blocks changed since
    are copied, not the 64 MiB it already held), then all three replicas are identical and
    fio's verify-only pass and the second client's data check out."""
    need("fio", "qemu-io")
    need_libnbd()
    size = 128 * MIB
    cluster = ReplicaCluster(tmp_path, size)
    writer: NbdWriter | None = None
    try:
        # r2 is the engine's local replica; the rebuild is slowed to 32 MiB/s so that live
        # writes run during it
        e = engines(cluster.specs(), 1, local="r2", extra=["--rebuild-bandwidth", "32MiB"])
        # history the delta rebuild must not copy again: 64 MiB r2 holds before the kill
        qemu_io_ok(e.uri, f"write -P 0x7e {PREFILL[0]} {PREFILL[1]}", "flush")
        g0 = e.ctl(op="status")["generation"]
        fio = subprocess.Popen(
            [*fio_job(e.uri), "--do_verify=1", "--verify_fatal=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            e.wait_for(lambda s: s["generation"] > g0 + 1000, 60, "fio's writes to flow")
            cluster.kill(2)  # SIGKILL, mid-workload
            out, _ = fio.communicate(timeout=120)
        finally:
            if fio.poll() is None:
                fio.kill()
                fio.wait()
        assert fio.returncode == 0 and "err= 0" in out, out  # the client saw no error

        st = e.ctl(op="status")
        assert st["robustness"] == "degraded", st
        assert modes(st) == {"r0": "RW", "r1": "RW", "r2": "ERR"}, st
        assert "connection to the replica server lost" in replica(st, "r2")["error"], st
        assert st["counters"]["replica_errors"] >= 1, st["counters"]
        recorded = replica(st, "r2")["generation"]  # the last reply the engine had from it
        assert g0 < recorded < st["generation"] - 500, (g0, recorded, st["generation"])

        cluster.restart(2)
        persisted = cluster.opened(2, epoch=1)  # what it holds
        stale = persisted["generation"]
        # it may have applied writes whose replies the SIGKILL swallowed, never fewer
        assert recorded <= stale < st["generation"], (recorded, persisted, st["generation"])
        assert persisted["epoch"] == 1
        delta = cluster.changed_bytes(0, epoch=1, since=stale)  # what changed since then
        allocated = cluster.stats(0, epoch=1)["allocated_bytes"]
        assert 0 < delta <= FIO_SIZE and allocated >= PREFILL[1] + delta, (delta, allocated)

        # a second client writes elsewhere (another rebuild window) all through the rebuild
        writer = NbdWriter(tmp_path, e.uri, WRITER_LBA, REGION, seed=11)
        g1 = e.ctl(op="status")["generation"]
        e.wait_for(lambda s: s["generation"] > g1 + 200, 60, "the second client's writes")
        back = e.ctl(op="add-replica", replica=cluster.spec(2))
        assert back["ok"] and modes(back)["r2"] == "WO", back
        st = e.wait_for(healthy, 60, "the rebuild of r2")
        writer.stop()
        log = writer.result()
        assert not log.failed and log.end == "stopped", log.summary()
        assert modes(st) == {"r0": "RW", "r1": "RW", "r2": "RW"}, st
        rb = replica(st, "r2")["rebuild"]
        assert rb["since"] == stale, rb  # a delta from the generation it had persisted
        assert rb["done_bytes"] == rb["total_bytes"] == size, rb
        wall = time.time() - time.monotonic()
        during = [w for w in log.acked if rb["started"] < w.sent_t + wall < rb["finished"]]
        assert len(during) >= 50, f"{len(during)} writes during the rebuild ({rb})"
        # only the changed blocks were copied: fio's delta, what the second client wrote
        # meanwhile, the extent streams' framing; not the 80 MiB r2 held, nor 128 MiB
        live = min(sum(w.n for w in log.writes), REGION) * BLOCK  # at most its region
        assert delta <= rb["copied_bytes"] <= delta + live + 256 * 1024, (rb, delta, live)
        assert rb["copied_bytes"] < allocated // 3, (rb, allocated)
        assert st["counters"]["rebuilds"] == 1, st["counters"]
        assert st["counters"]["rebuild_bytes"] == rb["copied_bytes"], st["counters"]
        # nothing in flight now; one FLUSH, alone, brings every replica's reported generation
        # up to date (a FLUSH reply carries the generation from when the FLUSH was taken, and
        # may overtake later writes' replies: the engine then reports an older generation)
        qemu_io_ok(e.uri, "flush")
        quiet = e.ctl(op="status")
        assert [r["generation"] for r in quiet["replicas"]] == [quiet["generation"]] * 3, quiet
        print(
            f"r2 persisted generation {stale} (engine saw {recorded}); delta {delta} bytes, "
            f"copied {rb['copied_bytes']} in {rb['seconds']} s with {len(during)} live writes; "
            f"{log.summary()}"
        )

        # fio's data verifies; the rebuilt replica serves reads again (its share of them: see
        # test_a_returning_local_replica_is_read_first_again for why not all of them)
        # (r2 is local: the engine reads its files directly, docs/engine.md "Local reads")
        before = e.ctl(op="status")["counters"].get("local_reads", 0)
        p = subprocess.run(
            [*fio_job(e.uri), "--verify_only"], capture_output=True, text=True, timeout=120
        )
        assert p.returncode == 0 and "err= 0" in p.stdout, p.stdout + p.stderr
        served = e.ctl(op="status")["counters"].get("local_reads", 0) - before
        assert served > 0, "the rebuilt replica served none of fio's verify pass"
        qemu_io_ok(e.uri, f"read -P 0x7e {PREFILL[0]} {PREFILL[1]}")  # what r2 kept
        data = nbd_read(e.uri, WRITER_LBA * BLOCK, REGION * BLOCK, tmp_path)
        _, wrong = check_blocks(data, WRITER_LBA, allowed_values(log, {}, "acked"))
        assert not wrong, "the second client's data:\n" + "\n".join(wrong[:20])
        digests = cluster.digests(1)
        assert len(set(digests)) == 1, digests
    finally:
        if writer is not None:
            writer.kill()
        cluster.close()


# --- 2. the engine SIGKILLed during pipelined writes and flushes -------------------------


def check_after_crash(
    uri: str, log: WriterLog, base: dict[int, int], workdir: Path, what: str
) -> dict[int, int]:
    """Read the region through the engine: every write acknowledged before the last
    acknowledged FLUSH reads back unless a later write overwrote it; every block holds its
    last flushed value or a value written after. And, since the replica servers never died,
    the same for every acknowledged write. -> the values read (the next round's base)."""
    data = nbd_read(uri, 0, REGION * BLOCK, workdir)
    values, problems = check_blocks(data, 0, allowed_values(log, base, "flushed"), base)
    assert not problems, f"{what}: {len(problems)} blocks wrong:\n" + "\n".join(problems[:20])
    _, lost = check_blocks(data, 0, allowed_values(log, base, "acked"), base)
    assert not lost, (
        f"{what}: acknowledged writes lost although every replica server lived on:\n"
        + "\n".join(lost[:20])
    )
    assert all(isinstance(v, int) for v in values.values())
    unacked = {w.seq for w in log.writes if w.status != OK}
    print(
        f"{what}: {log.summary()}; {sum(v in unacked for v in values.values())} blocks "
        f"hold writes never acknowledged"
    )
    return {b: v for b, v in values.items() if isinstance(v, int)}


def writes_stopped_by_the_kill(log: WriterLog, what: str) -> None:
    assert len(log.acked) > 500 and log.last_flush() is not None, f"{what}: {log.summary()}"
    assert "connection lost" in log.end or "ENOTCONN" in log.end or log.failed, log.summary()
    unanswered = [w for w in log.writes if w.status != OK]
    assert unanswered, f"{what}: nothing was in flight at the kill: {log.summary()}"
    # the client saw no error before the engine died: only the lost connection
    refused = [w for w in log.failed if "ENOTCONN" not in w.error]
    assert not refused, f"{what}: writes refused: {[w.error for w in refused[:5]]}"


def test_engine_sigkilled_during_writes_then_restarted(
    tmp_path: Path, engines: StartEngine
) -> None:
    """A pipelined NBD client (32 writes in flight, a FLUSH every 16) loses its engine to
    SIGKILL; the engine restarts with a higher epoch. Through it, every block holds the value
    of the last write acknowledged before the last acknowledged FLUSH or of a write sent
    after that one (and, as the replica servers lived on, nothing acknowledged at all is
    lost); all replicas are identical. Twice: the second time one replica server was
    SIGKILLed first, so that replica is behind and the new engine rebuilds it at start."""
    need_libnbd()
    cluster = ReplicaCluster(tmp_path, 64 * MIB)
    writer: NbdWriter | None = None
    try:
        # round 1: SIGKILL the engine with writes and flushes in flight
        e1 = engines(cluster.specs(), 1, local="r0")
        writer = NbdWriter(tmp_path, e1.uri, 0, REGION, seed=1)
        last = e1.wait_for(lambda s: s["generation"] > 1500, 60, "writes to flow")
        e1.stop(signal.SIGKILL)
        log1 = writer.result()
        writes_stopped_by_the_kill(log1, "round 1")

        e2 = engines(cluster.specs(), 2, local="r0")
        st = e2.wait_for(healthy, 60, "the engine at epoch 2 to be healthy")
        print(
            "rebuilt at the start of epoch 2:", [r["id"] for r in st["replicas"] if "rebuild" in r]
        )
        # what every current replica had stored when the writes were seen flowing is never
        # lost; "generation" counts what the engine had issued, and the mutations it issued
        # last may have died with it, unsent and unacknowledged
        assert st["epoch"] == 2 and st["generation"] >= last["current_generation"], (st, last)
        assert all(r["generation"] == st["generation"] for r in st["replicas"]), st
        base = check_after_crash(e2.uri, log1, {}, tmp_path, "after the first engine crash")
        digests = cluster.digests(2)
        assert len(set(digests)) == 1, digests

        # round 2: a replica server dies first, then the engine: r1 is behind at the restart
        writer = NbdWriter(tmp_path, e2.uri, 0, REGION, seed=2)
        g = e2.wait_for(lambda s: s["generation"] > st["generation"] + 1000, 60, "writes")
        cluster.kill(1)
        gone = e2.wait_for(lambda s: modes(s)["r1"] == "ERR", 30, "r1 to be dropped")
        e2.wait_for(lambda s: s["generation"] > gone["generation"] + 1000, 60, "writes on two")
        e2.stop(signal.SIGKILL)
        log2 = writer.result()
        writes_stopped_by_the_kill(log2, "round 2")
        assert g["robustness"] == "healthy" and gone["robustness"] == "degraded"

        cluster.restart(1)
        stale = cluster.opened(1, epoch=2)["generation"]
        ahead = max(cluster.opened(i, epoch=2)["generation"] for i in (0, 2))
        assert stale < ahead, (stale, ahead)
        e3 = engines(cluster.specs(), 3, local="r0")
        st = e3.wait_for(healthy, 60, "the engine at epoch 3 to rebuild r1")
        rb = replica(st, "r1")["rebuild"]
        assert rb["since"] == stale and rb["done_bytes"] == rb["total_bytes"], rb
        assert st["counters"]["rebuilds"] >= 1, st["counters"]
        assert all(r["generation"] == st["generation"] for r in st["replicas"]), st
        check_after_crash(e3.uri, log2, base, tmp_path, "after the second engine crash")
        digests = cluster.digests(3)
        assert len(set(digests)) == 1, digests
    finally:
        if writer is not None:
            writer.kill()
        cluster.close()


# --- 3. fencing: a second engine with a higher epoch while the first runs ------------------
def test_a_second_engine_fences_the_first(tmp_path: Path, engines: StartEngine) -> None:
    """A second engine with a higher epoch starts on the same replicas while a client
    writes through the first without pause. Once the second serves, every write sent to the
    first fails; the first reports itself fenced; everything it acknowledged, before or
    during the takeover, reads back through the second; the replicas agree."""
    need_libnbd()
    need("qemu-io")
    cluster = ReplicaCluster(tmp_path, 64 * MIB)
    writer: NbdWriter | None = None
    try:
        old = engines(cluster.specs(), 1, local="r0")
        # the writer goes on after errors, until 300 writes after we tell it to stop
        writer = NbdWriter(tmp_path, old.uri, 0, REGION, seed=3, max_failures=10**9, tail=300)
        old.wait_for(lambda s: s["generation"] > 1000, 60, "writes to flow")
        t0 = time.monotonic()
        new = engines(cluster.specs(), 2, local="r1")  # returns once it serves NBD
        t1 = time.monotonic()
        writer.stop()
        log = writer.result()
        writer = None
        assert log.end == "stopped", log.summary()
        before = [w for w in log.writes if w.sent_t < t0]
        after = [w for w in log.writes if w.sent_t > t1]
        assert sum(w.status == OK for w in before) > 500, log.summary()
        late = [w for w in after if w.status == OK]
        assert after and not late, f"{len(late)} of {len(after)} writes acknowledged after t1"
        print(f"takeover took {t1 - t0:.2f} s; {log.summary()}; {len(after)} sent after it")

        st = old.ctl(op="status")
        assert st["fenced"] and "newer engine" in st["fenced"], st
        assert st["robustness"] == "faulted", st
        p = qemu_io(old.uri, "write -P 0x22 0 4k", check=False)
        assert p.returncode != 0 and "write failed" in p.stdout, p.stdout + p.stderr

        st = new.wait_for(healthy, 60, "the new engine to be healthy")
        assert st["epoch"] == 2 and not st["fenced"], st
        # nothing the old engine acknowledged is lost: read through the new one
        data = nbd_read(new.uri, 0, REGION * BLOCK, tmp_path)
        _, lost = check_blocks(data, 0, allowed_values(log, {}, "acked"))
        assert not lost, f"{len(lost)} blocks lost or wrong:\n" + "\n".join(lost[:20])
        qemu_io_ok(new.uri, "write -P 0x33 16M 1M", "flush", "read -P 0x33 16M 1M")
        digests = cluster.digests(2)
        assert len(set(digests)) == 1, digests
    finally:
        if writer is not None:
            writer.kill()
        cluster.close()


# --- 4. a full disk under one replica -------------------------------------------------------
FS_BYTES = 48 * MIB


@pytest.mark.root
def test_a_replica_on_a_full_disk_is_dropped_and_the_volume_serves_on(
    tmp_path: Path, engines: StartEngine
) -> None:
    """r2's disk is a 48 MiB ext4 under a 128 MiB thin replica. The client writes 8 MiB
    chunks until r2 runs out of space: it never sees an error; r2 is dropped (ERR, NoSpace)
    and its server lives on; the volume goes on taking writes; everything reads back."""
    why = loop_ext4_unavailable()
    if why:
        pytest.skip(why)
    need("qemu-io")
    size = 128 * MIB
    chunk = 8 * MIB
    with loop_ext4(tmp_path, FS_BYTES) as mnt:
        cluster = ReplicaCluster(tmp_path, size, disks={2: mnt / "disk"})
        try:
            e = engines(cluster.specs(), 1, local="r0")
            written = []
            st = e.ctl(op="status")
            for k, off in enumerate(range(0, size - chunk, chunk)):
                qemu_io_ok(e.uri, f"write -P {k + 1} {off} {chunk}", "flush")  # no error
                written.append((off, k + 1))
                st = e.ctl(op="status")
                if modes(st)["r2"] == "ERR":
                    break
            assert modes(st) == {"r0": "RW", "r1": "RW", "r2": "ERR"}, st
            assert 16 * MIB < len(written) * chunk < size - chunk, written  # the disk filled
            err = replica(st, "r2")["error"]
            assert "NoSpace" in err, err
            assert st["robustness"] == "degraded" and st["counters"]["replica_errors"] == 1, st

            # the volume keeps serving: more writes, then everything reads back
            off = len(written) * chunk
            qemu_io_ok(e.uri, f"write -P 0xee {off} {chunk}", "flush")
            written.append((off, 0xEE))
            qemu_io_ok(e.uri, *(f"read -P {v} {o} {chunk}" for o, v in written))
            st = e.ctl(op="status")
            assert modes(st)["r2"] == "ERR" and st["counters"]["replica_errors"] == 1, st
            # the full replica's server lives on and answers; it holds less than the others
            assert cluster.servers[2].alive()
            held = cluster.opened(2, epoch=1)
            assert held["generation"] < st["generation"], (held, st)
            digests = cluster.digests(1, which=(0, 1))
            assert digests[0] == digests[1], digests
        finally:
            cluster.close()


# --- 5. a slow replica ------------------------------------------------------------------
def test_a_slow_replica_is_dropped_and_rebuilt(tmp_path: Path, engines: StartEngine) -> None:
    """r2 sits behind a proxy that starts delaying every byte by 2.5 s; the engine runs
    with --replica-timeout 1. A write completes in about a second, not 5 s or never; r2 is
    dropped with a timeout; without the delay it is added back and delta-rebuilt to RW."""
    need("qemu-io")
    cluster = ReplicaCluster(tmp_path, 64 * MIB)
    proxy = DelayProxy("127.0.0.1", cluster.servers[2].port).start()
    try:
        specs = cluster.specs(ports={2: proxy.port})
        e = engines(specs, 1, local="r0", extra=["--replica-timeout", "1"])
        qemu_io_ok(e.uri, "write -P 0x11 0 4M", "flush")
        st = e.ctl(op="status")
        assert healthy(st) and proxy.connections == 1, st

        proxy.delay = 2.5  # every byte to and from r2 now arrives 2.5 s late
        t = time.monotonic()
        qemu_io_ok(e.uri, "write -P 0x22 4M 1M", "flush", timeout=30)
        took = time.monotonic() - t
        assert took < 4.0, f"a write took {took:.1f} s with one replica slow"
        print(f"qemu-io write + flush with r2 slow: {took:.2f} s")
        st = e.ctl(op="status")
        assert modes(st) == {"r0": "RW", "r1": "RW", "r2": "ERR"}, st
        assert "Timeout" in replica(st, "r2")["error"], st
        assert st["counters"]["replica_errors"] == 1, st["counters"]
        slowest = max(int(b) for b in st["latency_log2_us"]["write"])
        assert slowest < 22, st["latency_log2_us"]  # no write took 4 s (2**22 us) or more
        t = time.monotonic()
        qemu_io_ok(e.uri, "write -P 0x33 5M 1M", "flush")  # without r2: no wait at all
        assert time.monotonic() - t < 2.0

        # remove the delay; let the old connection deliver what it held and close
        proxy.delay = 0.0
        wait_until(proxy.idle, 10, "the proxy to drain the dropped connection")
        assert proxy.delayed >= 1
        stale = cluster.opened(2, epoch=1)["generation"]
        back = e.ctl(op="add-replica", replica=specs[2])
        assert back["ok"], back
        st = e.wait_for(healthy, 30, "the rebuild of r2")
        assert modes(st)["r2"] == "RW" and proxy.connections == 2, st
        rb = replica(st, "r2")["rebuild"]
        assert 0 < rb["since"] == stale and rb["copied_bytes"] < 4 * MIB, rb
        qemu_io_ok(e.uri, "read -P 0x11 0 4M", "read -P 0x22 4M 1M", "read -P 0x33 5M 1M")
        digests = cluster.digests(1)
        assert len(set(digests)) == 1, digests
    finally:
        proxy.close()
        cluster.close()


# --- minimal reproductions of engine bugs found by the tests above (they fail until fixed) --
def test_a_returning_local_replica_is_read_first_again(
    tmp_path: Path, engines: StartEngine
) -> None:
    """The engine's local replica dies and comes back (add-replica): once rebuilt it should
    be read first again, as before (it once lost its local flag: ``control.handle`` parsed
    the add-replica address with ``local=False`` and ``Volume.add_replica`` replaced the
    link's spec with it, so reads went over the network until the engine restarted)."""
    need("qemu-io")
    cluster = ReplicaCluster(tmp_path, 16 * MIB)
    try:
        e = engines(cluster.specs(), 1, local="r0")
        qemu_io_ok(e.uri, "write -P 0x5a 0 1M", "flush")
        assert replica(e.ctl(op="status"), "r0")["local"] is True
        cluster.kill(0)  # SIGKILL the local replica's server
        qemu_io_ok(e.uri, "write -P 0x5b 1M 1M", "flush")
        assert modes(e.ctl(op="status"))["r0"] == "ERR"
        cluster.restart(0)
        assert e.ctl(op="add-replica", replica=cluster.spec(0))["ok"]
        st = e.wait_for(healthy, 30, "the rebuild of r0")
        # r0 is local: the engine reads its files directly (docs/engine.md "Local reads"),
        # so its server sees none of these reads and the engine counts them
        before = cluster.stats(0, epoch=1)["read_bytes"]
        local = e.ctl(op="status")["counters"].get("local_reads", 0)
        qemu_io_ok(e.uri, "read -P 0x5a 0 1M", "read -P 0x5b 1M 1M")
        served = cluster.stats(0, epoch=1)["read_bytes"] - before
        local = e.ctl(op="status")["counters"].get("local_reads", 0) - local
        others = sum(cluster.stats(i, epoch=1)["read_bytes"] for i in (1, 2))
        assert replica(st, "r0")["local"] and local >= 2 and served == 0, (
            f"after add-replica r0 is local={replica(st, 'r0')['local']}; {local} local "
            f"reads, {served} bytes through its server, {others} through the others"
        )
    finally:
        cluster.close()


def test_a_replica_from_a_forked_history_is_not_delta_rebuilt(
    tmp_path: Path, engines: StartEngine
) -> None:
    """A replica that went on taking writes from an old engine after the others had been
    dropped, and was unreachable when the next engine started, holds a history the volume
    forked away from. Its generation numbers mean nothing in the new history: it must be
    copied in full (or from the fork point, on both sides), never delta-rebuilt from its
    generation. FAILS today: ``Volume.start`` numbers the new epoch's mutations from the
    generations of the reachable replicas only, so the new history reuses the numbers the
    unreachable one already holds, and ``rebuild`` copies only what changed after them:
    the replica becomes RW holding the old engine's blocks and missing the new one's."""
    need("qemu-io")
    cluster = ReplicaCluster(tmp_path, 16 * MIB)
    try:
        e1 = engines(cluster.specs(), 1, local="r0")
        qemu_io_ok(e1.uri, "write -P 0x11 0 1M", "write -P 0x11 1M 1M", "flush")
        cluster.kill(0)
        cluster.kill(1)
        # e1 goes on with r2 alone (min_replicas 1): generations 3..10 exist only on r2
        qemu_io_ok(e1.uri, *["write -P 0x22 0 64k"] * 8, "flush")
        assert modes(e1.ctl(op="status")) == {"r0": "ERR", "r1": "ERR", "r2": "RW"}
        e1.stop()
        cluster.kill(2)
        cluster.restart(0)
        cluster.restart(1)
        e2 = engines(cluster.specs(), 2, local="r0")  # r2 is unreachable: r0, r1 go on
        st = e2.ctl(op="status")
        assert modes(st) == {"r0": "RW", "r1": "RW", "r2": "ERR"}, st
        # the new history: generations 3.. again, 14 mutations, past r2's 10
        qemu_io_ok(e2.uri, *["write -P 0x33 1M 64k"] * 4, *["write -P 0x44 8M 4k"] * 10, "flush")
        cluster.restart(2)
        held = cluster.opened(2, epoch=1)
        assert e2.ctl(op="add-replica", replica=cluster.spec(2))["ok"]
        st = e2.wait_for(lambda s: modes(s)["r2"] != "WO", 30, "r2's rebuild to end")
        digests = cluster.digests(2)
        rb = replica(st, "r2").get("rebuild")
        assert modes(st)["r2"] == "ERR" or len(set(digests)) == 1, (
            f"r2 (generation {held['generation']} from epoch 1) was rebuilt as {rb} and is "
            f"{modes(st)['r2']}, but its content differs from r0's and r1's: {digests}"
        )
    finally:
        cluster.close()


def test_a_throttled_rebuild_does_not_hold_writes_for_a_whole_window(
    tmp_path: Path, engines: StartEngine
) -> None:
    """While a rebuild runs at a limited rate (--rebuild-bandwidth), a client's write into
    the region being copied should wait for one chunk at most, not for the whole window.
    FAILS today: ``rebuild.rebuild`` takes a 64 MiB window (``vol.window``) and sleeps for
    the bandwidth limit (``_throttle``) while holding it, so every write into that window
    waits until all of the window's delta has been copied at the limited rate: 24 MiB at
    8 MiB/s here, about 3 s for a 4 KiB write."""
    need("qemu-io")
    cluster = ReplicaCluster(tmp_path, 64 * MIB)
    try:
        e = engines(cluster.specs(), 1, local="r0", extra=["--rebuild-bandwidth", "8MiB"])
        qemu_io_ok(e.uri, "write -P 0x11 0 32M", "flush")
        cluster.kill(2)
        qemu_io_ok(e.uri, "write -P 0x12 0 24M", "flush")  # r2 misses 24 MiB
        cluster.restart(2)
        assert e.ctl(op="add-replica", replica=cluster.spec(2))["ok"]
        e.wait_for(
            lambda s: modes(s)["r2"] == "WO" and replica(s, "r2")["rebuild"]["copied_bytes"],
            10,
            "the rebuild to copy",
        )
        t = time.monotonic()
        qemu_io_ok(e.uri, "write -P 0x13 1M 4k")
        took = time.monotonic() - t
        still = e.ctl(op="status")
        st = e.wait_for(healthy, 30, "the rebuild of r2")
        qemu_io_ok(e.uri, "read -P 0x12 0 1M", "read -P 0x13 1M 4k", "read -P 0x12 2M 22M")
        digests = cluster.digests(1)
        assert len(set(digests)) == 1, digests
        assert took < 1.0, (
            f"a 4 KiB write took {took:.2f} s during the rebuild (r2 {modes(still)['r2']} "
            f"after it; rebuild {replica(st, 'r2')['rebuild']})"
        )
    finally:
        cluster.close()
