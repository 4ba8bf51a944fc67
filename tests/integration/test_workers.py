"""A replica server with several worker processes: replicas sharded by id, sockets handed
over without losing a byte, a killed worker restarted, fencing unchanged."""

from __future__ import annotations

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
