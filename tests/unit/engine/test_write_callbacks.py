"""Writes without a task (``engine/write_callbacks.py``, ``FanOut.start``): the same rules
as ``Volume.write`` with in-memory replicas — a write is answered only when every replica
of the write set answered and ``min_replicas`` stored it, a failing, silent, lagging or
fenced replica is dropped as the awaited path drops it, ``hold`` waits for these writes,
and what cannot start at once (held, a rebuild window over it, fenced) starts nothing.
The same path against real replica servers and NBD clients: tests/integration/test_engine.py,
tests/e2e/test_fault_matrix.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from cargohold.engine.replica_link import Mode
from cargohold.errors import Fenced, NoSpace, ReplicaIOError
from cargohold.protocol.replica_wire import STATUS_OK, Op, Reply
from tests.support.done_recorder import Done
from tests.unit.engine.test_fanout import FENCES, MemReplica, fanout, links, write
from tests.unit.engine.test_interface import _until, volume

BLOCK = memoryview(b"w" * 4096)


async def start(fo: Any, targets: Any, send: Any, gen: int) -> tuple[int, float]:
    got: list[tuple[int, float]] = []
    fo.start(targets, send, gen, lambda stored, t0: got.append((stored, t0)))
    assert got == []  # never called before start returns
    await _until(lambda: got)
    return got[0]


async def test_start_judges_every_answer_like_send() -> None:
    bad = MemReplica(status=NoSpace.status)
    targets, fo = links(MemReplica(), bad, MemReplica(lag=1), MemReplica()), fanout()
    stored, _ = await start(fo, targets, write(3), 3)
    assert stored == 2
    assert [lk.mode for lk in targets] == [Mode.RW, Mode.ERR, Mode.ERR, Mode.RW]
    assert "NoSpace" in targets[1].error and "missed a mutation" in targets[2].error
    assert [lk.generation for lk in targets if lk.mode is Mode.RW] == [3, 3]


async def test_start_times_out_a_silent_replica_with_one_timer() -> None:
    silent = MemReplica(silent=True)
    targets, fo = links(MemReplica(), silent), fanout(timeout=0.2)
    t0 = time.monotonic()
    stored, _ = await start(fo, targets, write(1), 1)
    assert 0.15 < time.monotonic() - t0 < 2.0
    assert stored == 1 and targets[1].error == "TimeoutError"


async def test_writes_started_together_share_one_timer_and_an_answered_one_leaves_it() -> None:
    """The timers of ``FanOut.start`` (``_Deadlines``): the writes of one slice of time
    (timeout / 64) share one timer; a silent replica is still dropped after the timeout
    (and before the timeout and its slice), and a write answered in time leaves its
    cohort at once, so the cohort keeps nothing of it until the timer fires."""
    silent = MemReplica(silent=True)
    targets, fo = links(MemReplica(), silent), fanout(timeout=0.64)
    loop = asyncio.get_running_loop()
    got: list[tuple[int, float]] = []
    t0 = loop.time()
    for gen in (1, 2, 3):
        fo.start(targets, write(gen), gen, lambda stored, t: got.append((stored, t)))
    cohort = fo.deadlines.cohort
    assert len(cohort) == 3  # one cohort, one timer for the three
    await _until(lambda: len(got) == 3)
    elapsed = loop.time() - t0
    assert 0.64 <= elapsed < 0.64 + 0.01 + 0.5, elapsed
    assert [stored for stored, _ in got] == [1, 1, 1]
    assert targets[1].mode is Mode.ERR and targets[1].error == "TimeoutError"
    assert not cohort  # the expired ones left it too
    # a write every replica answers leaves its cohort when it is judged
    ok = links(MemReplica(), MemReplica())
    stored, _ = await start(fo, ok, write(1), 1)
    assert stored == 2 and not fo.deadlines.cohort


async def test_start_with_every_connection_lost_still_calls_back() -> None:
    lost = MemReplica()
    lost.lost = ReplicaIOError("connection lost")
    targets, fo = links(lost), fanout()
    assert (await start(fo, targets, write(1), 1))[0] == 0
    assert targets[0].mode is Mode.ERR and FENCES == []
    assert fo.counters["replica_errors"] == 1


async def test_write_nowait_is_answered_when_every_replica_stored_it() -> None:
    reps = [MemReplica(silent=True) for _ in range(3)]
    vol = volume(*reps)
    done = Done()
    assert vol.write_nowait(8192, BLOCK, False, done)
    assert all(r.got == [(Op.WRITE, 8192, 1)] for r in reps)
    for r in reps[:2]:
        r.pending[0].set_result(Reply(STATUS_OK, 1, 1, b""))
    await asyncio.sleep(0.05)
    assert done.calls == []  # one replica has not answered: not acknowledged (invariant 1)
    reps[2].pending[0].set_result(Reply(STATUS_OK, 1, 1, b""))
    assert await done.wait() is None
    assert vol.counters["written_bytes"] == 4096 and vol.current() == (1, 1)


async def test_write_nowait_below_min_replicas_fails_with_eio() -> None:
    vol = volume(MemReplica(), MemReplica(status=NoSpace.status))
    vol.settings = vol.fanout.settings = dataclasses.replace(vol.settings, min_replicas=2)
    done = Done()
    assert vol.write_nowait(0, BLOCK, False, done)
    err = await done.wait()
    assert isinstance(err, ReplicaIOError) and "write done on 1 replicas, 2 needed" in str(err)
    assert vol.counters["written_bytes"] == 0
    # the write set is now too small: nothing starts; the awaited path raises
    assert not vol.write_nowait(0, BLOCK, False, Done())
    with pytest.raises(ReplicaIOError):
        await vol.write(0, BLOCK, False)


async def test_write_nowait_fenced_fails_and_then_starts_nothing() -> None:
    vol = volume(MemReplica(), MemReplica(status=Fenced.status))
    done = Done()
    assert vol.write_nowait(0, BLOCK, False, done)
    assert isinstance(await done.wait(), Fenced)
    assert vol.fenced and not vol.write_nowait(0, BLOCK, False, Done())


async def test_write_nowait_starts_nothing_while_held_or_in_a_rebuild_window() -> None:
    r = MemReplica()
    vol = volume(r)
    vol.window(0, 8192)
    assert not vol.write_nowait(4096, BLOCK, False, Done())
    done = Done()
    assert vol.write_nowait(8192, BLOCK, False, done)  # outside the window
    assert await done.wait() is None
    vol.window_done()
    async with vol.hold():
        assert not vol.write_nowait(0, BLOCK, False, Done())
    assert [g for _, _, g in r.got] == [1]


async def test_hold_waits_for_a_write_without_a_task() -> None:
    r = MemReplica(silent=True)
    vol = volume(r)
    done = Done()
    assert vol.write_nowait(0, BLOCK, True, done)
    inside = asyncio.Event()

    async def holder() -> None:
        async with vol.hold():
            inside.set()

    held = asyncio.get_running_loop().create_task(holder())
    await asyncio.sleep(0.05)
    assert not inside.is_set()
    r.generation = 1
    r.pending[0].set_result(Reply(STATUS_OK, 1, 1, b""))
    await done.wait()
    await asyncio.wait_for(held, 5)


def ordered(*reps: MemReplica) -> list[MemReplica]:
    for r in reps:
        r.stop_on_failure = True  # type: ignore[attr-defined]  # as a server of this release says
    return list(reps)


async def test_write_ordered_queues_every_write_back_to_back_and_judges_them_all() -> None:
    reps = ordered(MemReplica(), MemReplica(status=NoSpace.status), MemReplica())
    vol = volume(*reps)
    calls: list[int] = []

    def ready(back_to_back: bool) -> list[tuple[int, Any]]:
        assert back_to_back
        calls.append(sum(len(r.got) for r in reps))  # before anything was queued
        return [(65 * 4096, BLOCK), (4096, BLOCK)]

    await vol.write_ordered([(65 * 4096, BLOCK), (4096, BLOCK)], ready)
    assert calls == [0]
    for r in reps:  # each replica: the two in order, consecutive generations
        assert r.got == [(Op.WRITE, 65 * 4096, 1), (Op.WRITE, 4096, 2)]
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.ERR, Mode.RW]
    assert vol.gen == 2 and vol.counters["written_bytes"] == 2 * 4096
    # fewer than min_replicas stored them all: an error
    vol2 = volume(*ordered(MemReplica(), MemReplica(status=NoSpace.status)))
    vol2.settings = dataclasses.replace(vol2.settings, min_replicas=2)
    vol2.fanout.settings = vol2.settings
    with pytest.raises(ReplicaIOError, match="done on 1 replicas"):
        await vol2.write_ordered([(0, BLOCK), (4096, BLOCK)])


async def test_write_ordered_waits_for_a_window_over_any_of_them_then_queues_all() -> None:
    reps = ordered(MemReplica(), MemReplica())
    vol = volume(*reps)
    vol.window(8192, 12288)  # covers the second write only
    task = asyncio.ensure_future(vol.write_ordered([(0, BLOCK), (8192, BLOCK)]))
    await asyncio.sleep(0.01)
    assert not task.done() and all(r.got == [] for r in reps)  # neither went
    vol.window_done()
    await asyncio.wait_for(task, 5)
    assert all(r.got == [(Op.WRITE, 0, 1), (Op.WRITE, 8192, 2)] for r in reps)
    assert vol.counters["window_waits"] == 1


async def test_write_ordered_goes_one_at_a_time_to_a_server_that_does_not_stop() -> None:
    old = MemReplica(silent=True)  # a server of an older release: no stop_on_failure
    vol = volume(*ordered(MemReplica()), old)
    seen: list[bool] = []

    def ready(back_to_back: bool) -> list[tuple[int, Any]]:
        seen.append(back_to_back)
        return [(0, BLOCK), (4096, BLOCK)]

    task = asyncio.ensure_future(vol.write_ordered([(0, BLOCK), (4096, BLOCK)], ready))
    await _until(lambda: old.got)
    await asyncio.sleep(0.01)
    assert seen == [False] and old.got == [(Op.WRITE, 0, 1)]  # the second waits for it
    old.silent = False
    old.pending[0].set_result(Reply(STATUS_OK, 1, 1, b""))
    await asyncio.wait_for(task, 5)
    assert old.got == [(Op.WRITE, 0, 1), (Op.WRITE, 4096, 2)]


async def test_write_ordered_nowait_queues_back_to_back_and_calls_back_once_all_answered() -> None:
    reps = ordered(MemReplica(silent=True), MemReplica(silent=True), MemReplica(silent=True))
    vol = volume(*reps)
    vol.settings = vol.fanout.settings = dataclasses.replace(vol.settings, min_replicas=2)
    done = Done()
    calls: list[bool] = []

    def ready(back_to_back: bool) -> list[tuple[int, Any]]:
        assert all(r.got == [] for r in reps)  # called right before they are queued
        calls.append(back_to_back)
        return [(65 * 4096, BLOCK), (4096, BLOCK)]

    assert vol.write_ordered_nowait([(65 * 4096, BLOCK), (4096, BLOCK)], ready, done)
    assert calls == [True] and done.calls == []
    for r in reps:  # each replica: the two in order, consecutive generations
        assert r.got == [(Op.WRITE, 65 * 4096, 1), (Op.WRITE, 4096, 2)]
    assert vol.gen == 2
    # replica 1 fails the first: it is dropped and did not store the second
    reps[1].pending[0].set_result(Reply(NoSpace.status, 1, 0, b"full"))
    reps[1].pending[1].set_exception(ReplicaIOError("stopped after a failed mutation"))
    for r in (reps[0], reps[2]):
        r.pending[0].set_result(Reply(STATUS_OK, 1, 1, b""))
    await asyncio.sleep(0.02)
    assert done.calls == []  # answers missing: not acknowledged (invariant 1)
    for r in (reps[0], reps[2]):
        r.pending[1].set_result(Reply(STATUS_OK, 2, 2, b""))
    assert await done.wait() is None
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.ERR, Mode.RW]
    assert vol.counters["written_bytes"] == 2 * 4096
    # now two replicas: one more failure is below min_replicas, an error
    reps[2].silent = False
    reps[2].status = NoSpace.status
    reps[0].silent = False
    failed = Done()
    assert vol.write_ordered_nowait([(0, BLOCK)], lambda _: [(0, BLOCK)], failed)
    err = await failed.wait()
    assert isinstance(err, ReplicaIOError) and "done on 1 replicas, 2 needed" in str(err)


async def test_write_ordered_nowait_starts_nothing_it_cannot_start_at_once() -> None:
    def never(_: bool) -> list[tuple[int, Any]]:
        raise AssertionError("ready called although nothing starts")

    reps = ordered(MemReplica(), MemReplica())
    vol = volume(*reps)
    vol.window(8192, 12288)  # a rebuild step over the second write
    assert not vol.write_ordered_nowait([(0, BLOCK), (8192, BLOCK)], never, Done())
    vol.window_done()
    async with vol.hold():
        assert not vol.write_ordered_nowait([(0, BLOCK)], never, Done())
    old = volume(*ordered(MemReplica()), MemReplica())  # a server without stop_on_failure
    assert not old.write_ordered_nowait([(0, BLOCK)], never, Done())
    assert all(r.got == [] for r in reps) and vol.gen == 0
    silent = ordered(MemReplica(silent=True))
    slow = volume(*silent)
    slow.settings = slow.fanout.settings = dataclasses.replace(slow.settings, replica_timeout=0.1)
    timed_out = Done()
    assert slow.write_ordered_nowait([(0, BLOCK)], lambda _: [(0, BLOCK)], timed_out)
    assert isinstance(await timed_out.wait(), ReplicaIOError)
    assert slow.links[0].error == "TimeoutError"


@pytest.mark.parametrize("op", ["write", "trim"])
async def test_a_checked_mutation_calls_ready_right_before_it_queues_and_nothing_if_it_raises(
    op: str,
) -> None:
    """``write_checked`` and ``trim_checked`` (the encrypting device's ciphertext and
    trims after their acknowledged tag blocks, frontend/encrypted_tags_first.py and
    encrypted_zeroes.py): ``ready`` runs once the mutation can go (after a hold or a
    rebuild window over it), right before it is queued; raising there queues nothing."""
    reps = [MemReplica(), MemReplica()]
    vol = volume(*reps)
    kind = Op.WRITE if op == "write" else Op.TRIM

    def checked(offset: int, ready: Any) -> Any:
        if op == "write":
            return vol.write_checked(offset, BLOCK, False, ready)
        return vol.trim_checked(offset, 4096, ready)

    vol.window(8192, 12288)
    calls: list[int] = []
    task = asyncio.ensure_future(checked(8192, lambda: calls.append(sum(len(r.got) for r in reps))))
    await asyncio.sleep(0.01)
    assert not task.done() and calls == []  # waits for the window, ready not called yet
    vol.window_done()
    await asyncio.wait_for(task, 5)
    assert calls == [0] and all(r.got == [(kind, 8192, 1)] for r in reps)
    async with vol.hold():  # held: it waits, and looks again once the hold ends
        task = asyncio.ensure_future(checked(0, lambda: calls.append(-1)))
        await asyncio.sleep(0.01)
        assert not task.done() and calls == [0]
    await asyncio.wait_for(task, 5)
    assert calls == [0, -1] and all(r.got[-1] == (kind, 0, 2) for r in reps)

    def refuse() -> None:
        raise ReplicaIOError("reverted")

    with pytest.raises(ReplicaIOError, match="reverted"):
        await checked(0, refuse)
    assert vol.gen == 2 and all(len(r.got) == 2 for r in reps)  # nothing queued
