"""The write fan-out on its own (``engine/fanout.py``), with in-memory replica links: every
replica gets the request in the same order, every answer is awaited, a replica that errs,
times out, misses a generation or is fenced is dropped, and ``min_replicas`` decides
whether the mutation stands. The same fan-out against real replica servers:
``tests/integration/test_engine.py``, ``tests/probe/test_engine_faults.py``."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pytest

from cargohold.engine.fanout import FanOut, answers
from cargohold.engine.replica_link import Mode, ReplicaLink, ReplicaSpec
from cargohold.errors import Fenced, NoSpace, ReplicaIOError, error_for_status
from cargohold.protocol.replica_wire import STATUS_OK, Op, Reply
from cargohold.settings import EngineSettings


class MemReplica:
    """An in-memory replica behind a connection: it stores the requests it gets in order
    and answers each with its generation, unless told to fail (``status``), to be silent
    (``silent``), to skip generations (``lag``) or that its connection is lost."""

    def __init__(self, status: int = STATUS_OK, silent: bool = False, lag: int = 0) -> None:
        self.status, self.silent, self.lag = status, silent, lag
        self.got: list[tuple[int, int, int]] = []  # (op, offset, generation)
        self.generation = 0
        self.lost: Exception | None = None
        self.closed = False
        self.pending: list[asyncio.Future[Reply]] = []

    def send(
        self, op: int, offset: int = 0, length: int = 0, payload: Any = b"", flags: int = 0,
        args: dict[str, Any] | None = None, generation: int = 0,
    ) -> asyncio.Future[Reply]:  # fmt: skip
        if self.lost is not None:
            raise self.lost
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.got.append((op, offset, generation))
        self.pending.append(fut)
        if not self.silent:
            if generation and self.status == STATUS_OK:
                self.generation = generation - self.lag
            asyncio.get_running_loop().call_soon(
                fut.set_result, Reply(self.status, len(self.got), self.generation, b"")
            )
        return fut

    def check(self, reply: Reply) -> Reply:
        if reply.status != STATUS_OK:
            raise error_for_status(reply.status, "refused")
        return reply

    def close_nowait(self) -> None:
        self.closed = True


def links(*replicas: MemReplica) -> list[ReplicaLink]:
    out = []
    for i, r in enumerate(replicas):
        link = ReplicaLink(ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i), mode=Mode.RW)
        link.client = r  # type: ignore[assignment]  # the in-memory twin of ReplicaClient
        out.append(link)
    return out


FENCES: list[str] = []  # the reasons the fan-outs below reported the engine fenced


def fanout(min_replicas: int = 1, timeout: float = 5.0) -> FanOut:
    settings = EngineSettings(min_replicas=min_replicas, replica_timeout=timeout)
    FENCES.clear()
    return FanOut("v", settings, collections.Counter(), FENCES.append)


def write(gen: int, offset: int = 0) -> Any:
    return lambda c: c.send(Op.WRITE, offset, 4096, b"x" * 4096, generation=gen)


async def test_every_replica_stores_it_in_the_same_order() -> None:
    reps = [MemReplica() for _ in range(3)]
    targets, fo = links(*reps), fanout(min_replicas=3)
    for gen in (1, 2, 3):
        stored, _ = await fo.send(targets, write(gen, offset=gen * 4096), gen)
        fo.require(stored, "write")
        assert stored == 3 and FENCES == []
    for r in reps:
        assert r.got == [(Op.WRITE, 4096, 1), (Op.WRITE, 8192, 2), (Op.WRITE, 12288, 3)]
    assert [lk.generation for lk in targets] == [3, 3, 3]
    assert all(lk.mode is Mode.RW for lk in targets)
    assert fo.counters["replica_errors"] == 0


async def test_a_failing_replica_is_dropped_and_the_rest_carry_the_write() -> None:
    bad = MemReplica(status=NoSpace.status)
    targets, fo = links(MemReplica(), bad, MemReplica()), fanout(min_replicas=2)
    stored, _ = await fo.send(targets, write(1), 1)
    fo.require(stored, "write")  # 2 stored it: enough
    assert stored == 2
    assert [lk.mode for lk in targets] == [Mode.RW, Mode.ERR, Mode.RW]
    assert targets[1].client is None and bad.closed and "NoSpace" in targets[1].error
    assert fo.counters["replica_errors"] == 1


async def test_below_min_replicas_the_write_fails() -> None:
    targets = links(MemReplica(), MemReplica(status=NoSpace.status))
    fo = fanout(min_replicas=2)
    stored, _ = await fo.send(targets, write(1), 1)
    with pytest.raises(ReplicaIOError, match="write done on 1 replicas, 2 needed"):
        fo.require(stored, "write")
    with pytest.raises(ReplicaIOError, match="1 replicas in the write set, 2 needed"):
        fo.enough([lk for lk in targets if lk.mode is not Mode.ERR])
    fo.enough(links(MemReplica(), MemReplica()))  # two: fine


async def test_a_silent_replica_times_out_with_one_timer_and_is_dropped() -> None:
    silent = MemReplica(silent=True)
    targets, fo = links(MemReplica(), silent), fanout(timeout=0.2)
    t0 = time.monotonic()
    stored, _ = await fo.send(targets, write(1), 1)
    took = time.monotonic() - t0
    assert 0.15 < took < 2.0, took
    assert stored == 1
    assert targets[1].mode is Mode.ERR and targets[1].error == "TimeoutError"
    assert isinstance(silent.pending[0].exception(), TimeoutError)


async def test_a_replica_that_missed_a_generation_is_dropped() -> None:
    targets, fo = links(MemReplica(), MemReplica(lag=1)), fanout()
    stored, _ = await fo.send(targets, write(5), 5)
    assert stored == 1
    assert targets[1].mode is Mode.ERR
    assert targets[1].error == "missed a mutation: generation 4, expected 5"
    assert fo.counters["replica_errors"] == 1  # a replica lost, like one that failed
    # a WO replica (being rebuilt) is not judged by its generation: it has gaps by design
    wo = links(MemReplica(lag=3))
    wo[0].mode = Mode.WO
    assert (await fo.send(wo, write(7), 7))[0] == 1 and wo[0].mode is Mode.WO


async def test_a_fenced_replica_is_dropped_and_the_reason_returned() -> None:
    targets, fo = links(MemReplica(), MemReplica(status=Fenced.status)), fanout()
    stored, _ = await fo.send(targets, write(1), 1)
    assert stored == 1
    assert len(FENCES) == 1 and "a newer engine owns replica r1@127.0.0.1:9001" in FENCES[0]
    assert targets[1].mode is Mode.ERR
    assert fo.counters["replica_errors"] == 0  # not a replica's fault


async def test_a_lost_connection_drops_the_replica_before_anything_is_sent() -> None:
    lost = MemReplica()
    lost.lost = ReplicaIOError("connection lost")
    targets, fo = links(MemReplica(), lost), fanout()
    stored, _ = await fo.send(targets, write(1), 1)
    assert stored == 1 and lost.got == []
    assert targets[1].mode is Mode.ERR and targets[1].error == "connection lost"
    # counted like a failed answer: one replica lost is one replica error, however it showed
    assert fo.counters["replica_errors"] == 1


async def test_a_flush_answer_never_moves_a_generation_back() -> None:
    r = MemReplica()
    targets, fo = links(r), fanout()
    await fo.send(targets, write(4), 4)
    r.generation = 2  # an earlier FLUSH's answer, overtaken by later writes' answers
    stored, _ = await fo.send(targets, lambda c: c.send(Op.FLUSH), 0)
    assert stored == 1 and targets[0].generation == 4


async def test_cancelled_waits_cancel_the_answers_nobody_waits_for() -> None:
    silent = MemReplica(silent=True)
    fut = silent.send(Op.WRITE)
    task = asyncio.get_running_loop().create_task(answers([fut], 30))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.cancelled()
