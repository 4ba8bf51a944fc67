"""Crash safety of the replica server: SIGKILL at random moments with requests in flight.

Each iteration starts a real ``cargohold replica-server`` on the same disk directory, opens
the replica with a new epoch, checks what the previous iteration left behind, then runs a
pipelined random workload (writes of 1-8 blocks, some FUA, FLUSH every few writes, the odd
WRITE_ZEROES or TRIM, the odd snapshot) and SIGKILLs the server from a timer while requests
are in flight. Every block a write puts down names its block and the write's sequence number
(``support.pattern``), so each value read back is traced to one write.

Rules checked after every restart (F = the last FLUSH whose OK reply arrived, or the FLUSH
done at the start of the iteration):
- each block reads as the value of the last write/zeroing to it acknowledged before F was
  sent (or what it held at the start of the iteration), or as the value of any write/zeroing
  to it sent after that one. Anything else (an older value, garbage, a torn mix, a checksum
  error) fails, naming the block, the allowed values and what was read;
- scrub finds no bad block;
- INFO's generation is >= the generation of every reply acknowledged before F was sent and of
  F's own reply, and never goes down from one restart to the next; the epoch is the one opened,
  and an older epoch is refused (fencing survives the crash);
- every snapshot whose create reply arrived is listed, no unknown one is; a snapshot reads as
  the volume did when it was taken (same rule, bounded by its reply) and never changes later.

Reproduce a failure with CARGOHOLD_PROBE_SEED=<seed printed in the message>; the timing of the
kill still varies, so a seed narrows the workload down but does not replay the crash exactly.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from cargohold.errors import ChecksumError, Fenced, ReplicaIOError
from cargohold.protocol.replica_wire import FLAG_FUA, STATUS_OK, Op, Reply
from cargohold.replica.client import ReplicaClient
from tests.probe.support import BLOCK, ProbeServer, identify, patterns

REPLICA = "crashvol"
SIZE = 64 << 20
EXTENT = 64
# The working set: 8 extents of 64 blocks (512 blocks), scattered over the volume (unaligned
# starts, the last one ending at the end of the volume), small enough that writes overwrite.
EXTENTS = (0, 1000, 2047, 4096, 7777, 9000, 12000, SIZE // BLOCK - EXTENT)
QUEUE_DEPTH = 32
KILL_AFTER = (0.03, 0.35)  # seconds of workload before the SIGKILL
WORKLOAD_TIMEOUT = 20.0  # after the kill, every request must have resolved within this


@dataclass
class Req:
    kind: str  # "write", "zero" (WRITE_ZEROES or TRIM), "flush", "snapshot"
    seq: int = 0  # writes and zeroings: a unique number (a write's value id is its seq)
    lba: int = 0
    nblocks: int = 0
    op: int = 0
    fua: bool = False
    name: str = ""
    iteration: int = 0
    sent: int = 0  # logical clock when sent
    acked: int | None = None  # logical clock when its OK reply arrived
    gen: int | None = None  # generation carried by the OK reply

    @property
    def value(self) -> int:
        """What the block holds after this request: the write's seq, or 0 for zeros."""
        return self.seq if self.kind == "write" else 0


@dataclass
class Totals:
    requests: int = 0
    acked_writes: int = 0
    acked_zeroes: int = 0
    acked_flushes: int = 0
    acked_snapshots: int = 0
    kills_in_flight: int = 0
    unacked_visible: int = 0  # blocks that read as a write whose reply never came
    kill_inflight: list[int] = field(default_factory=list)


class CrashProbe:
    def __init__(self, disk: str, seed: int) -> None:
        self.disk = disk
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = 0
        self.seq = 0
        self.epoch = 0
        self.baseline: dict[int, int] = {}  # block -> value durable at the start of the workload
        self.history: dict[int, Req] = {}  # seq -> write/zeroing, for messages
        self.reqs: list[Req] = []  # the current (or last) workload's requests
        self.by_block: dict[int, list[Req]] = {}
        self.f0_gen = 0  # generation of the FLUSH that opened the last workload
        self.last_info_gen = 0
        self.snap_sent: set[str] = set()
        self.snap_acked: set[str] = set()
        self.snap_content: dict[str, dict[int, int]] = {}  # verified content of each snapshot
        self.errors: list[str] = []  # error replies (not a lost connection) during a workload
        self.totals = Totals()
        self.server: ProbeServer | None = None

    # --- driving ------------------------------------------------------------------
    async def run(self, iterations: int) -> Totals:
        try:
            for it in range(iterations + 1):
                self.server = ProbeServer([self.disk]).start()
                client = await ReplicaClient.connect(self.server.host, self.server.port)
                try:
                    if it == 0:
                        await client.create(REPLICA, SIZE)
                    else:
                        await self.check_fencing(it)
                    self.epoch += 1
                    opened = await client.open(REPLICA, self.epoch)
                    if opened["epoch"] != self.epoch:
                        self.fail(
                            f"restart {it}", [f"OPEN with epoch {self.epoch} answered {opened}"]
                        )
                    if it > 0:
                        await self.verify(client, it)
                    if it == iterations:
                        break
                    self.f0_gen = await client.flush()  # what was verified is now durable
                    await self.workload(client, it)
                finally:
                    await client.close()
                    self.server.kill()
        finally:
            if self.server is not None:
                self.server.kill()
        return self.totals

    async def workload(self, client: ReplicaClient, it: int) -> None:
        loop = asyncio.get_running_loop()
        rng = self.rng
        self.reqs, self.by_block, self.errors = [], {}, []
        slots = asyncio.Semaphore(QUEUE_DEPTH)
        futs: list[asyncio.Future[Reply]] = []
        in_flight_at_kill: list[int] = []
        server = self.server
        assert server is not None

        def kill(retries: int = 200) -> None:
            # the random moment, or the first one after it with requests in flight
            if client.in_flight == 0 and retries > 0:
                timer[0] = loop.call_later(0.001, kill, retries - 1)
                return
            in_flight_at_kill.append(client.in_flight)
            server.kill_now()

        delay = rng.uniform(*KILL_AFTER)
        timer = [loop.call_later(delay, kill)]
        deadline = loop.time() + delay + WORKLOAD_TIMEOUT
        snap_at = rng.randrange(5, 300) if rng.random() < 0.4 else -1
        flush_every = rng.randint(2, 8)
        since_flush = 0
        n = 0
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise AssertionError(f"iteration {it}: workload did not end after the kill")
                await asyncio.wait_for(slots.acquire(), left)
                if n == snap_at:
                    req = Req("snapshot", name=f"s{it}-{n}", op=Op.SNAPSHOT_CREATE)
                elif since_flush >= flush_every:
                    req = Req("flush", op=Op.FLUSH)
                    since_flush, flush_every = 0, rng.randint(2, 8)
                else:
                    start = rng.choice(EXTENTS)
                    if rng.random() < 0.06:
                        nb = rng.randint(1, 16)
                        op = Op.TRIM if rng.random() < 0.3 else Op.WRITE_ZEROES
                        req = Req("zero", nblocks=nb, op=op)
                    else:
                        nb = rng.randint(1, 8)
                        req = Req("write", nblocks=nb, op=Op.WRITE, fua=rng.random() < 0.05)
                    req.lba = start + rng.randrange(EXTENT - nb + 1)
                    since_flush += 1
                try:
                    fut = self.send(client, req, it)
                except ReplicaIOError:  # the connection is gone: the server was killed
                    slots.release()
                    break
                futs.append(fut)
                fut.add_done_callback(functools.partial(self.on_reply, client, req, slots))
                n += 1
            if futs:
                _, pending = await asyncio.wait(futs, timeout=max(0.1, deadline - loop.time()))
                if pending:
                    raise AssertionError(
                        f"iteration {it}: {len(pending)} requests never resolved after the kill"
                    )
            await asyncio.sleep(0)  # let the last done-callbacks run
        finally:
            timer[0].cancel()
            server.kill()
        if self.errors:
            self.fail(f"workload of iteration {it}", ["error replies:", *self.errors[:20]])
        self.totals.requests += len(self.reqs)
        self.totals.kill_inflight += in_flight_at_kill
        if in_flight_at_kill and in_flight_at_kill[0] > 0:
            self.totals.kills_in_flight += 1

    def send(self, client: ReplicaClient, req: Req, it: int) -> asyncio.Future[Reply]:
        req.iteration = it
        if req.kind == "write":
            self.seq += 1
            req.seq = self.seq
            data = patterns(req.lba, req.nblocks, req.seq)
            fut = client.send(
                Op.WRITE,
                req.lba * BLOCK,
                len(data),
                data,
                FLAG_FUA if req.fua else 0,
                generation=client.number(),
            )
        elif req.kind == "zero":
            self.seq += 1
            req.seq = self.seq
            fut = client.send(
                req.op, req.lba * BLOCK, req.nblocks * BLOCK, generation=client.number()
            )
        elif req.kind == "flush":
            fut = client.send(Op.FLUSH)
        else:
            fut = client.send(Op.SNAPSHOT_CREATE, args={"name": req.name, "labels": {}})
            self.snap_sent.add(req.name)
        self.clock += 1
        req.sent = self.clock
        self.reqs.append(req)
        if req.seq:
            self.history[req.seq] = req
            for b in range(req.lba, req.lba + req.nblocks):
                self.by_block.setdefault(b, []).append(req)
        return fut

    def on_reply(
        self, client: ReplicaClient, req: Req, slots: asyncio.Semaphore, fut: asyncio.Future
    ) -> None:
        slots.release()
        self.clock += 1
        if fut.cancelled() or fut.exception() is not None:
            return  # the connection was lost: outcome unknown, the request stays in flight
        reply: Reply = fut.result()
        if reply.status != STATUS_OK:
            self.errors.append(
                f"{self.describe_req(req)}: status {reply.status}: {bytes(reply.payload)[:200]!r}"
            )
            return
        client.check(reply)
        req.acked, req.gen = self.clock, reply.generation
        t = self.totals
        if req.kind == "write":
            t.acked_writes += 1
        elif req.kind == "zero":
            t.acked_zeroes += 1
        elif req.kind == "flush":
            t.acked_flushes += 1
        else:
            t.acked_snapshots += 1
            self.snap_acked.add(req.name)

    # --- checking -----------------------------------------------------------------
    async def check_fencing(self, it: int) -> None:
        """The epoch accepted before the crash still fences older engines after it."""
        if self.epoch < 2:
            return
        assert self.server is not None
        old = await ReplicaClient.connect(self.server.host, self.server.port)
        try:
            await old.open(REPLICA, self.epoch - 1)
        except Fenced:
            return
        finally:
            await old.close()
        self.fail(
            f"after the kill in iteration {it - 1}",
            [f"OPEN with epoch {self.epoch - 1} accepted after a crash at epoch {self.epoch}"],
        )

    def candidates(self, block: int, before: int, until: int | None = None) -> set[int]:
        """Values ``block`` may hold for a durability point sent at clock ``before``: the last
        write acknowledged before it, and every write sent after that one (and before
        ``until``, the reply of a snapshot)."""
        reqs = self.by_block.get(block, [])
        acked = [r for r in reqs if r.acked is not None and r.acked < before]
        if acked:
            last = max(acked, key=lambda r: r.sent)
            out, floor = {last.value}, last.sent
        else:
            out, floor = {self.baseline.get(block, 0)}, 0
        out |= {r.value for r in reqs if r.sent > floor and (until is None or r.sent < until)}
        return out

    async def read_blocks(self, client: ReplicaClient, snapshot: str | None = None) -> dict:
        got: dict[int, int | str] = {}
        for start in EXTENTS:
            try:
                data = await client.read(start * BLOCK, EXTENT * BLOCK, snapshot)
            except ChecksumError:
                for b in range(start, start + EXTENT):  # name every bad block
                    try:
                        one = await client.read(b * BLOCK, BLOCK, snapshot)
                    except ChecksumError as e:
                        got[b] = f"checksum error ({e}; blocks {e.detail.get('blocks')})"
                    else:
                        got[b] = identify(b, one)
                continue
            for k in range(EXTENT):
                got[start + k] = identify(start + k, data[k * BLOCK : (k + 1) * BLOCK])
        return got

    def compare(self, got: dict, before: int, until: int | None, what: str) -> list[str]:
        problems = []
        for b, v in sorted(got.items()):
            allowed = self.candidates(b, before, until)
            if v not in allowed:
                problems.append(
                    f"{what} block {b} (offset {b * BLOCK}): read {self.describe(v, b)}; "
                    f"allowed: {'; '.join(self.describe(c, b) for c in sorted(allowed))}"
                )
        return problems

    async def verify(self, client: ReplicaClient, it: int) -> None:
        problems: list[str] = []
        acked_flushes = [r for r in self.reqs if r.kind == "flush" and r.acked is not None]
        flush = max(acked_flushes, key=lambda r: r.acked or 0) if acked_flushes else None
        f_sent = flush.sent if flush is not None else 0

        info = await client.info()
        gen = info["generation"]
        need = max(
            [self.f0_gen, flush.gen if flush and flush.gen else 0]
            + [r.gen for r in self.reqs if r.acked is not None and r.acked < f_sent and r.gen]
        )
        if gen < need:
            problems.append(f"generation after restart {gen} < {need}, acknowledged before F")
        if gen < self.last_info_gen:
            problems.append(f"generation went down across a restart: {self.last_info_gen} -> {gen}")
        self.last_info_gen = gen

        got = await self.read_blocks(client)
        problems += self.compare(got, f_sent, None, "head")
        self.totals.unacked_visible += sum(
            1
            for v in got.values()
            if isinstance(v, int) and v in self.history and self.history[v].acked is None
        )

        scrub = await client.scrub()
        if scrub["bad"]:
            problems.append(f"scrub after restart found bad blocks: {scrub['bad'][:20]}")

        listed = {s["name"] for s in await client.snapshot_list()}
        if self.snap_acked - listed:
            problems.append(f"acknowledged snapshots missing: {sorted(self.snap_acked - listed)}")
        if listed - self.snap_sent:
            problems.append(f"snapshots nobody created: {sorted(listed - self.snap_sent)}")
        for r in self.reqs:
            if r.kind == "snapshot" and r.name in listed:
                content = await self.read_blocks(client, r.name)
                problems += self.compare(content, r.sent, r.acked, f"snapshot {r.name}")
                self.snap_content[r.name] = content
        older = sorted(n for n in self.snap_content if n in listed and n not in self.reqs_names())
        if older:
            name = self.rng.choice(older)
            now = await self.read_blocks(client, name)
            for b, v in sorted(now.items()):
                if v != self.snap_content[name][b]:
                    was = self.snap_content[name][b]
                    problems.append(
                        f"snapshot {name} block {b} changed: was {self.describe(was, b)}, "
                        f"now {self.describe(v, b)}"
                    )

        if problems:
            fl = self.describe_req(flush) if flush else "the FLUSH at the start of the workload"
            self.fail(f"after the kill in iteration {it - 1}", [f"F = {fl}", *problems[:40]])
        self.baseline = {b: v for b, v in got.items() if isinstance(v, int)}

    def reqs_names(self) -> set[str]:
        return {r.name for r in self.reqs if r.kind == "snapshot"}

    # --- messages -----------------------------------------------------------------
    def describe_req(self, r: Req) -> str:
        state = f"acked t={r.acked} gen {r.gen}" if r.acked is not None else "never acknowledged"
        where = f" blocks {r.lba}+{r.nblocks}" if r.nblocks else ""
        extra = " FUA" if r.fua else f" {r.name}" if r.name else ""
        op = Op(r.op).name if r.op else r.kind
        return f"{op}{extra}{where} (iteration {r.iteration}, sent t={r.sent}, {state})"

    def describe(self, v: Any, block: int) -> str:
        if isinstance(v, str):
            return v
        if v == 0:
            return "zeros"
        r = self.history.get(v)
        return f"write #{v} [{self.describe_req(r)}]" if r else f"write #{v} (unknown)"

    def fail(self, where: str, lines: list[str]) -> None:
        log = self.server.log_tail() if self.server is not None else ""
        msg = "\n".join([f"crash probe, seed {self.seed}, {where}:", *lines])
        raise AssertionError(f"{msg}\n--- server log tail ---\n{log}")


def _seed() -> int:
    env = os.environ.get("CARGOHOLD_PROBE_SEED")
    return int(env) if env else random.randrange(1 << 32)


async def _run(tmp_path: Any, iterations: int) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = CrashProbe(str(disk), _seed())
    t0 = time.monotonic()
    totals = await probe.run(iterations)
    elapsed = time.monotonic() - t0
    inflight = totals.kill_inflight
    totals.kill_inflight = []
    print(
        f"crash probe seed {probe.seed}: {iterations} kills in {elapsed:.1f}s, "
        f"in flight at kill: min {min(inflight, default=0)} max {max(inflight, default=0)}; {totals}"
    )
    # the probe must have done what it claims, or a green run means nothing
    assert totals.kills_in_flight == iterations, (
        f"only {totals.kills_in_flight}/{iterations} kills hit requests in flight"
    )
    assert totals.acked_writes >= 20 * iterations, totals
    assert totals.acked_flushes >= iterations, totals
    assert totals.acked_zeroes > 0, totals
    assert totals.acked_snapshots > 0, totals


async def test_sigkill_with_requests_in_flight(tmp_path: Any) -> None:
    await _run(tmp_path, 30)


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_sigkill_soak(tmp_path: Any) -> None:
    await _run(tmp_path, 300)
