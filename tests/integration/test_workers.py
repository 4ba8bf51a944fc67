"""A replica server with several worker processes: replicas sharded by id, sockets handed
over without losing a byte, a killed worker restarted, fencing unchanged."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import Busy, Fenced
from cargohold.replica.client import ReplicaClient
from cargohold.replica.workers import owner
from tests.support.processes import ServerProc


@pytest.fixture
def wserver(tmp_path):
    (tmp_path / "d").mkdir()
    s = ServerProc([str(tmp_path / "d")], unix=str(tmp_path / "w.sock"), workers=2).start()
    yield s
    s.stop()


def _ids_per_worker() -> tuple[str, str]:
    a = next(f"r{i}" for i in range(100) if owner(f"r{i}", 2) == 0)
    b = next(f"r{i}" for i in range(100) if owner(f"r{i}", 2) == 1)
    return a, b


async def test_replicas_are_sharded_over_worker_processes(wserver):
    a, b = _ids_per_worker()
    pids = {}
    for rid in (a, b):
        c = await ReplicaClient.connect("127.0.0.1", wserver.port)
        assert (await c.hello())["workers"] == 2  # answered by the parent
        await c.create(rid, 16 * MIB)
        info = await c.open(rid, 1)
        pids[rid] = info["pid"]
        await c.write(0, rid.encode().ljust(BLOCK_SIZE, b"."), fua=True)
        # the same connection cannot open a replica of the other worker
        other = b if rid == a else a
        with pytest.raises(Busy, match="another worker"):
            await c.open(other, 1)
        await c.close()
    assert len(set(pids.values())) == 2 and wserver.pid not in pids.values()
    c = await ReplicaClient.connect(unix=wserver.unix)
    assert sorted(r["id"] for r in await c.list()) == sorted([a, b])
    await c.close()


async def test_pipelined_frames_after_open_are_not_lost_in_the_hand_over(wserver):
    a, _ = _ids_per_worker()
    c = await ReplicaClient.connect("127.0.0.1", wserver.port)
    await c.create(a, 16 * MIB)
    await c.close()
    c = await ReplicaClient.connect("127.0.0.1", wserver.port)
    from cargohold.protocol.replica_wire import Op

    futs = [c.send(Op.OPEN, args={"replica": a, "epoch": 1})]
    futs += [
        c.send(Op.WRITE, i * BLOCK_SIZE, BLOCK_SIZE, bytes([i]) * BLOCK_SIZE, generation=i + 1)
        for i in range(200)
    ]
    for f in futs:
        c.check(await f)
    data = bytes(await c.read(0, 200 * BLOCK_SIZE))
    assert all(data[i * BLOCK_SIZE] == i for i in range(200))
    await c.close()


async def test_a_killed_worker_is_restarted_and_its_replicas_recover(wserver):
    a, _ = _ids_per_worker()
    c = await ReplicaClient.connect("127.0.0.1", wserver.port)
    await c.create(a, 16 * MIB)
    pid = (await c.open(a, 1))["pid"]
    await c.write(0, b"k" * BLOCK_SIZE)
    await c.flush()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        try:
            c2 = await ReplicaClient.connect("127.0.0.1", wserver.port)
            info = await c2.open(a, 2)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert info["pid"] != pid
    assert bytes(await c2.read(0, BLOCK_SIZE)) == b"k" * BLOCK_SIZE
    c3 = await ReplicaClient.connect("127.0.0.1", wserver.port)
    with pytest.raises(Fenced):
        await c3.open(a, 1)
    for x in (c, c2, c3):
        await x.close()


def _cpu_seconds(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_slow_first_frame_neither_spins_the_parent_nor_gets_lost(wserver):
    import socket

    from cargohold.protocol import replica_wire as wire
    from cargohold.protocol.replica_wire import Op

    frame = b"".join(bytes(b) for b in wire.encode_request(Op.HELLO, 7, payload=b"{}"))
    s = socket.create_connection(("127.0.0.1", wserver.port))
    s.sendall(frame[:10])  # part of the header only
    before = _cpu_seconds(wserver.pid)
    time.sleep(1.0)
    spent = _cpu_seconds(wserver.pid) - before
    assert spent < 0.3, f"the parent spent {spent:.2f} s of CPU waiting for a header"
    s.sendall(frame[10:])
    s.settimeout(10)
    (reply,) = wire.ReplyDecoder().feed(s.recv(4096))
    assert reply.id == 7 and reply.status == 0
    s.close()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


async def test_after_a_machine_crash_nothing_listens_till_every_worker_recovered(tmp_path):
    """As a single process (``replica/daemon.py`` ``serve``), a parent of workers listens
    only once every worker has recovered its replicas after a machine crash: an engine's
    OPEN finds nothing listening instead of waiting, unserved, past its timeout; the agent
    waits on the recovery's log lines (docs/formats/replica-store.md, "Machine crashes").
    A replica of 96 MiB written is crashed (every process SIGKILLed, workers first) and its
    server started again in a new boot: when it says it listens, the recovery has ended."""
    from cargohold.constants import RECOVERED, RECOVERING
    from tests.support.power_loss import new_boot, new_boot_unavailable

    why = new_boot_unavailable()
    if why:
        pytest.skip(why)
    disk = tmp_path / "d"
    disk.mkdir()
    s = ServerProc([str(disk)], workers=2).start()
    a, b = _ids_per_worker()
    try:
        for rid in (a, b):
            c = await ReplicaClient.connect("127.0.0.1", s.port, replica=rid)
            await c.create(rid, 128 * MIB)
            await c.open(rid, 1)
            chunk = MIB
            for off in range(0, 96 * MIB, chunk):
                await c.write(off, bytes([off // chunk + 1]) * chunk)
            await c.flush()
            await c.close()
        for pid in _children(s.pid):  # the workers first: a parent's death stops them cleanly
            os.kill(pid, signal.SIGKILL)
    finally:
        s.kill()
    again = ServerProc([str(disk)], workers=2, prefix=new_boot(str(tmp_path))).start(timeout=120)
    try:
        out = again.output()  # read when it says it listens
        assert out.count(RECOVERING) == 2, out
        assert out.count(RECOVERED) == 2, f"it listens before the workers recovered:\n{out}"
        for rid in (a, b):
            c = await ReplicaClient.connect("127.0.0.1", again.port, replica=rid)
            await asyncio.wait_for(c.open(rid, 2), 5.0)
            assert bytes(await c.read(95 * MIB, BLOCK_SIZE)) == bytes([96]) * BLOCK_SIZE
            await c.close()
    finally:
        again.stop()
