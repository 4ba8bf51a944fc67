"""A WRITE_BATCH whose k-th write fails, through a replica server's session in this process
(a real ``ReplicaServer`` and ``Session``, a transport that records what is sent): for
every k and every way a write fails — the disk full when its data is written (the first
``pwrite``/``pwritev`` that fails) or when its block map needs space, a generation the
replica has seen, a write beyond the end, an unnumbered write — the writes before k are
stored and answered with their generations, the k-th is answered with its own error, every
later one is answered "not applied" and none of them reaches the replica; the replica's
generation (complete through) stays before k, and a delta rebuild from it (``CHANGED``
from the replica's generation, served by a source that took every write) makes the replica
equal to the source. Until OPEN again the session refuses mutations (replica-wire.md,
"Rules")."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from cargohold.replica.server import ReplicaServer
from cargohold.replica.session import Session
from cargohold.settings import ReplicaServerSettings
from cargohold.store.layer import Layer, io_error
from cargohold.store.memory_store import MemoryStore

SIZE = 4 * MIB
# (block, blocks, generation): lone writes, a run of two adjacent ones (one pwritev), lone
WRITES = [(0, 1, 2), (5, 1, 3), (6, 2, 4), (10, 1, 5), (20, 1, 6), (30, 1, 7)]
SYSCALL_OF = [0, 1, 1, 2, 3, 4]  # which data write system call stores each write


def data(g: int, n: int) -> bytes:
    return bytes([g]) * (n * BLOCK_SIZE)


class _Transport:
    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000)}.get(key, default)

    def writelines(self, parts: list[Any]) -> None:
        for p in parts:
            self.sent += p

    def abort(self) -> None:
        self.closed = True

    close = abort


class _Conn:
    """One session of the server, spoken to frame by frame."""

    def __init__(self, server: ReplicaServer) -> None:
        self.session = Session(server)
        self.t = _Transport()
        self.session.connection_made(self.t)  # type: ignore[arg-type]
        self.decoder = wire.ReplyDecoder()
        self.ids = 0

    def ask(self, frame: list[Any]) -> wire.Reply:
        self.session.data_received(b"".join(bytes(p) for p in frame))
        replies = self.decoder.feed(bytes(self.t.sent))
        self.t.sent.clear()
        assert len(replies) == 1, replies
        return replies[0]

    def op(self, op: int, args: dict[str, Any] | None = None, **kw: Any) -> wire.Reply:
        self.ids += 1
        payload = json.dumps(args).encode() if args is not None else kw.pop("payload", b"")
        return self.ask(wire.encode_request(op, self.ids, payload=payload, **kw))

    def batch(self, writes: list[tuple[int, bytes, int, int]]) -> list[wire.Reply]:
        self.ids += 1
        r = self.ask(wire.encode_write_batch(self.ids, writes))
        assert r.status == wire.STATUS_OK, bytes(r.payload)
        return wire.decode_batch_results(r.payload, len(writes), self.ids)

    def info(self) -> dict[str, Any]:
        r = self.op(Op.INFO)
        assert r.status == wire.STATUS_OK
        out: dict[str, Any] = json.loads(bytes(r.payload))
        return out

    def read(self, block: int, n: int) -> bytes:
        r = self.op(Op.READ, offset=block * BLOCK_SIZE, length=n * BLOCK_SIZE)
        assert r.status == wire.STATUS_OK, bytes(r.payload)
        return bytes(r.payload)


def _error(r: wire.Reply) -> dict[str, Any]:
    assert r.status != wire.STATUS_OK
    out: dict[str, Any] = json.loads(bytes(r.payload))
    return out


@pytest.fixture
async def conn(tmp_path):
    (tmp_path / "disk").mkdir()
    server = ReplicaServer(
        ReplicaServerSettings(
            host="127.0.0.1", port=0, disks=[str(tmp_path / "disk")], plaintext=True
        )
    )
    c = _Conn(server)
    assert c.op(Op.CREATE, {"replica": "vol-r1", "size": SIZE}).status == 0
    assert c.op(Op.OPEN, {"replica": "vol-r1", "epoch": 1}).status == 0
    r = c.ask(wire.encode_request(Op.WRITE, 99, 0, BLOCK_SIZE, data(1, 1), generation=1))
    assert r.status == 0 and r.generation == 1  # epoch 1 recorded: the batch's short way
    yield c
    server.registry.close_all()


def _fail_syscall(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """The k-th data write system call (from 0) of the store fails: the disk is full."""
    calls = [0]
    for name in ("pwrite", "pwritev"):
        real = getattr(Layer, name)

        def failing(self: Layer, lba: int, buf: Any, _real: Any = real) -> None:
            calls[0] += 1
            if calls[0] == k + 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            _real(self, lba, buf)

        monkeypatch.setattr(Layer, name, failing)


def _fail_map_space(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    real = Layer.ensure_map_space

    def failing(self: Layer, lba: int, n: int) -> None:
        if lba <= block < lba + n:
            raise io_error(OSError(errno.ENOSPC, "No space left on device"), "block map")
        real(self, lba, n)

    monkeypatch.setattr(Layer, "ensure_map_space", failing)


CASES = [(how, k) for how in ("data", "map", "seen", "beyond", "unnumbered") for k in range(6)]


@pytest.mark.parametrize(("how", "k"), CASES, ids=[f"{h}-{k}" for h, k in CASES])
async def test_the_kth_write_fails_nothing_after_it_lands_and_a_delta_rebuild_heals(
    conn, monkeypatch, how, k
):
    writes = [(b * BLOCK_SIZE, data(g, n), 0, g) for b, n, g in WRITES]
    first = k
    if how == "data":  # a run's one pwritev fails every write of the run: the first
        # answers the error, the others "not applied" as the rest of the batch
        first = SYSCALL_OF.index(SYSCALL_OF[k])
        _fail_syscall(monkeypatch, SYSCALL_OF[k])
    elif how == "map":
        _fail_map_space(monkeypatch, WRITES[k][0])
    elif how == "seen":
        writes[k] = (*writes[k][:3], 1)
    elif how == "beyond":
        writes[k] = (SIZE, *writes[k][1:])
    else:
        writes[k] = (*writes[k][:3], 0)
    got = conn.batch(writes)
    monkeypatch.undo()

    for i, r in enumerate(got):
        if i < first:
            assert r.status == 0 and r.generation == WRITES[i][2], (i, r)
        elif i == first:
            want = {"data": "NoSpace", "map": "NoSpace", "beyond": "InvalidArgument"}
            err = _error(r)
            assert err["type"] == want.get(how, "InvalidArgument"), err
            assert "not applied" not in err["error"]
        else:
            err = _error(r)
            assert err["type"] == "ReplicaIOError" and "not applied" in err["error"], err
    # what landed: the writes before the failed one, and nothing else
    source = MemoryStore.create(SIZE)
    source.write(0, data(1, 1), generation=1)
    for b, n, g in WRITES:
        source.write(b * BLOCK_SIZE, data(g, n), generation=g)
    for i, (b, n, _) in enumerate(WRITES):
        want = data(WRITES[i][2], n) if i < first else bytes(n * BLOCK_SIZE)
        if b == 0 and i >= first:
            want = data(1, 1)
        assert conn.read(b, n) == want, f"write {i} (block {b})"
    info = conn.info()
    complete = WRITES[first - 1][2] if first else 1
    assert info["generation"] == complete, info
    assert info["seen"] >= complete
    # the session refuses mutations until OPEN
    r = conn.op(Op.WRITE_ZEROES, offset=0, length=BLOCK_SIZE, generation=50)
    assert "not applied" in _error(r)["error"]
    # a delta rebuild from the replica's generation (the engine's: CHANGED on the source,
    # IMPORT-like writes of what it lists) makes it equal to the source
    assert conn.op(Op.OPEN, {"replica": "vol-r1", "epoch": 1}).status == 0
    delta = source.changed_since(info["generation"])
    gen = max(info["seen"], 7) + 1
    for off, length in delta:
        r = conn.ask(
            wire.encode_request(
                Op.WRITE, 1000 + gen, off, length, bytes(source.read(off, length)), generation=gen
            )
        )
        assert r.status == 0, bytes(r.payload)
        gen += 1
    assert conn.read(0, 64) == bytes(source.read(0, 64 * BLOCK_SIZE))


async def test_no_newer_open_lands_between_a_batchs_epoch_check_and_its_writes(conn):
    """Epoch fencing is checked once per batch (replica-wire.md): that is safe only because
    nothing runs between the check and the writes. ``op_write_batch`` answers at once (no
    await before the store has every write; only a FUA flush is awaited, after them), so a
    newer engine's OPEN lands before the batch — which then fails whole, ``Fenced`` — or
    after it, and then its OPEN reports the batch's writes in ``seen``. Here the newer
    OPEN comes while the old engine's FUA batch waits for its flush: the batch is answered
    (it was applied before the OPEN), the OPEN saw it, and the old engine's next batch is
    fenced whole."""
    import asyncio
    import inspect

    from cargohold.replica.write_ops import WriteOps

    assert not inspect.iscoroutinefunction(WriteOps.op_write_batch)
    server = conn.session.server
    new = _Conn(server)
    blk = data(9, 1)
    conn.ids += 1
    conn.session.data_received(
        b"".join(
            bytes(p)
            for p in wire.encode_write_batch(
                conn.ids, [(40 * BLOCK_SIZE, blk, wire.FLAG_FUA, 2), (41 * BLOCK_SIZE, blk, 0, 3)]
            )
        )
    )
    assert not conn.t.sent  # waiting for its flush
    r = new.op(Op.OPEN, {"replica": "vol-r1", "epoch": 2})
    assert r.status == 0 and json.loads(bytes(r.payload))["seen"] == 3  # it sees the batch
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not conn.t.sent and loop.time() < deadline:
        await asyncio.sleep(0.01)
    (reply,) = conn.decoder.feed(bytes(conn.t.sent))
    conn.t.sent.clear()
    got = wire.decode_batch_results(reply.payload, 2, conn.ids)
    assert [(x.status, x.generation) for x in got] == [(0, 2), (0, 3)]
    conn.ids += 1
    r = conn.ask(wire.encode_write_batch(conn.ids, [(50 * BLOCK_SIZE, blk, 0, 4)]))
    assert r.status != 0 and _error(r)["type"] == "Fenced"  # the whole batch
    assert new.read(50, 1) == bytes(BLOCK_SIZE)
    assert new.read(40, 2) == blk * 2
