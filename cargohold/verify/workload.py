"""The workload: concurrent writers over several NBD connections, logged in a history.

``Workload(pool, spec).run()`` starts ``spec.depth`` workers on each of the pool's
connections (so ``connections x depth`` requests in flight) until ``spec.seconds`` pass,
``spec.writes`` writes were issued, ``stop()`` is called or every connection is lost.
Each worker draws its next operation from its own seeded generator:

- a WRITE of 1..``max_blocks`` blocks (``fua_ratio`` of them with FUA), aimed at a small
  hot range shared by every writer ``hot_ratio`` of the time (so that writes from
  different connections race on the same blocks) and anywhere in the range otherwise;
  its blocks carry ``payload`` contents naming the write;
- a FLUSH (``flush_ratio``);
- a READ of 1..``max_blocks`` blocks (``read_ratio``), checked at once: each block must
  hold zeros (only if no write to it was acknowledged before the read was sent), or a
  write to it that had not been superseded by a write acknowledged before the read was
  sent. A failure is recorded in the history as a read violation.

Every invocation and ending goes to the ``History`` (streamed to a file when asked), with
``time.monotonic()`` taken before sending and after the reply. A connection that drops
ends its workers (their writes in flight are ``LOST``); an error reply is ``FAILED`` and
the worker goes on (``stop_on_error`` ends the run instead). At the end, one FLUSH per
live connection (``final_flush``). Who calls it: ``cargohold verify run`` and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import ConfigError
from cargohold.verify import payload as P
from cargohold.verify.checker import REASONS, judge
from cargohold.verify.client import Connection, NbdConnectionLost, NbdRequestFailed, Pool
from cargohold.verify.history import ACKED, FAILED, LOST, History


@dataclass
class WorkloadSpec:
    seconds: float | None = 10.0  # stop after this long (None: no limit)
    writes: int | None = None  # stop after issuing this many writes (None: no limit)
    depth: int = 8  # requests in flight per connection
    first_block: int = 0
    nblocks: int | None = None  # None: to the end of the volume
    max_blocks: int = 8  # blocks per write or read
    fua_ratio: float = 0.05
    flush_ratio: float = 0.03
    read_ratio: float = 0.15
    hot_blocks: int = 32  # the shared hot range at the start of the block range
    hot_ratio: float = 0.2
    seed: int | None = None  # the run id; random when None
    stop_on_error: bool = False
    final_flush: bool = True

    def validate(self, volume_blocks: int) -> tuple[int, int]:
        """The block range [first, first + n) this spec covers on a volume."""
        if self.seconds is None and self.writes is None:
            raise ConfigError("give a duration or a number of writes")
        first = self.first_block
        n = self.nblocks if self.nblocks is not None else volume_blocks - first
        if first < 0 or n <= 0 or first + n > volume_blocks:
            raise ConfigError(
                f"blocks [{first}, {first + n}) are not inside the volume's {volume_blocks} blocks"
            )
        if not 1 <= self.max_blocks <= min(n, 4096):
            raise ConfigError(f"max_blocks {self.max_blocks}: must be 1..{min(n, 4096)}")
        if self.depth < 1:
            raise ConfigError("depth must be at least 1")
        return first, n


class Workload:
    def __init__(self, pool: Pool, spec: WorkloadSpec, stream: IO[str] | None = None) -> None:
        self.pool = pool
        self.spec = spec
        volume_blocks = pool.size // BLOCK_SIZE
        self.first, self.n = spec.validate(volume_blocks)
        run = spec.seed if spec.seed is not None else random.getrandbits(63)
        self.history = History(
            run=run,
            first_block=self.first,
            nblocks=self.n,
            multi_conn=pool.multi_conn,
            uri=str(pool.target),
            wall_start=time.time(),
        )
        if stream is not None:
            self.history.stream(stream)
        # newest invocation time of a write acknowledged so far, per block (reads' floor)
        self._acked_floor = np.full(self.n, -math.inf)
        self._stop = asyncio.Event()
        self.stopped_because = ""

    def stop(self, why: str = "stopped") -> None:
        if not self._stop.is_set():
            self.stopped_because = self.stopped_because or why
            self._stop.set()

    async def run(self) -> History:
        spec = self.spec
        workers = [
            asyncio.ensure_future(self._worker(ci, conn, k))
            for ci, conn in enumerate(self.pool.conns)
            for k in range(spec.depth)
        ]
        timer = None
        if spec.seconds is not None:
            timer = asyncio.get_running_loop().call_later(spec.seconds, self.stop, "duration")
        try:
            await asyncio.gather(*workers)
        finally:
            if timer is not None:
                timer.cancel()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if not self.stopped_because:
            self.stopped_because = "every connection lost"
        if spec.final_flush:  # a connection that drops meanwhile is recorded, not raised
            await asyncio.gather(
                *(self._flush(ci, c) for ci, c in enumerate(self.pool.conns) if not c.closed),
                return_exceptions=True,
            )
        self.history.finish(self.stopped_because)
        return self.history

    # --- one worker: a sequence of requests on one connection -----------------------------
    async def _worker(self, ci: int, conn: Connection, k: int) -> None:
        spec = self.spec
        rng = random.Random(f"{self.history.run}/{ci}/{k}")
        while not self._stop.is_set() and not conn.closed:
            r = rng.random()
            try:
                if r < spec.flush_ratio:
                    await self._flush(ci, conn)
                elif r < spec.flush_ratio + spec.read_ratio:
                    await self._read(conn, rng)
                else:
                    if spec.writes is not None and self.history.writes >= spec.writes:
                        self.stop("writes issued")
                        return
                    await self._write(ci, conn, rng)
            except NbdConnectionLost:
                return

    def _pick(self, rng: random.Random) -> tuple[int, int]:
        spec = self.spec
        n = rng.randint(1, spec.max_blocks)
        hot = min(self.n, max(spec.hot_blocks, n))
        if rng.random() < spec.hot_ratio:
            start = rng.randrange(hot - n + 1)
        else:
            start = rng.randrange(self.n - n + 1)
        return self.first + start, n

    async def _write(self, ci: int, conn: Connection, rng: random.Random) -> None:
        h = self.history
        block, n = self._pick(rng)
        fua = rng.random() < self.spec.fua_ratio and conn.ready is not None and conn.ready.can_fua
        t0 = time.monotonic()
        seq = h.write_invoked(ci, block, n, fua, t0)
        data = P.encode(h.run, ci, seq, block, n)
        try:
            await conn.write(block * BLOCK_SIZE, data, fua)
        except NbdRequestFailed as e:
            h.write_done(seq, FAILED, time.monotonic(), str(e))
            if self.spec.stop_on_error:
                self.stop(f"write {seq} failed: {e}")
            return
        except NbdConnectionLost as e:
            h.write_done(seq, LOST, time.monotonic(), str(e))
            raise
        h.write_done(seq, ACKED, time.monotonic())
        lo = block - self.first
        np.maximum(self._acked_floor[lo : lo + n], t0, out=self._acked_floor[lo : lo + n])

    async def _flush(self, ci: int, conn: Connection) -> None:
        h = self.history
        fid = h.flush_invoked(ci, time.monotonic())
        try:
            await conn.flush()
        except NbdRequestFailed as e:
            h.flush_done(fid, FAILED, time.monotonic(), str(e))
            if self.spec.stop_on_error:
                self.stop(f"flush {fid} failed: {e}")
            return
        except NbdConnectionLost as e:
            h.flush_done(fid, LOST, time.monotonic(), str(e))
            raise
        h.flush_done(fid, ACKED, time.monotonic())
        h.flush_stream()

    async def _read(self, conn: Connection, rng: random.Random) -> None:
        h = self.history
        block, n = self._pick(rng)
        lo = block - self.first
        floor = self._acked_floor[lo : lo + n].copy()
        t0 = time.monotonic()
        try:
            data = await conn.read(block * BLOCK_SIZE, n * BLOCK_SIZE)
        except NbdRequestFailed as e:
            if self.spec.stop_on_error:
                self.stop(f"read at block {block} failed: {e}")
            return
        t1 = time.monotonic()
        h.reads_checked += 1
        obs = P.decode(data, block, h.run)
        blocks = np.arange(block, block + n, dtype=np.int64)
        seqs = obs.seq.astype(np.int64)
        issued = (obs.kind == P.PAYLOAD) & (seqs >= 1) & (seqs <= h.writes)
        s = [int(q) if ok else 0 for q, ok in zip(seqs.tolist(), issued.tolist(), strict=True)]
        reason = judge(
            blocks,
            obs,
            issued,
            np.array([h.w_block[q] for q in s], np.int64),
            np.array([h.w_n[q] for q in s], np.int64),
            np.array([h.w_writer[q] for q in s], np.int64),
            np.array([h.w_t1[q] for q in s], np.float64),
            floor,
        )
        for i in np.flatnonzero(reason).tolist():
            v: dict[str, Any] = {
                "block": int(blocks[i]),
                "reason": REASONS[int(reason[i])],
                "observed": obs.describe(i),
                "read_invoked": round(t0, 6),
                "read_ended": round(t1, 6),
            }
            if math.isfinite(floor[i]):
                v["floor"] = round(float(floor[i]), 6)
            h.read_violation(v)
            if self.spec.stop_on_error:
                self.stop(f"read violation at block {blocks[i]}")


async def run_workload(
    uri: str,
    spec: WorkloadSpec,
    connections: int = 4,
    history_path: str | None = None,
) -> History:
    """Connect, run the workload, close; the history is streamed to ``history_path``."""
    pool = await Pool.connect(uri, connections)
    stream = open(history_path, "w") if history_path else None
    try:
        return await Workload(pool, spec, stream).run()
    finally:
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        await pool.close()
