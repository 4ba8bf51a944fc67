"""A replicated volume: the block device the NBD frontend serves (``frontend.BlockDevice``).

Called by ``cargohold engine``. One instance per attached volume; one connection per
replica, shared by I/O and rebuild so that each replica applies everything in the order the
engine sent it.

- **Start** (``start``; the rules are ``start_policy``'s): connect to every replica and
  OPEN it with this engine's epoch, which fences out every older engine (invariant 3). The
  replicas whose persisted (last epoch, generation) is highest are current (RW); the others
  are stale (WO) and are rebuilt from a current one before they serve reads (invariants 2
  and 4). If a current one is in doubt (its machine lost power, or it saw a mutation above
  its generation) they may differ above their generation: one source, merged block by
  block, is marked current (``doubt``) before any I/O and stays RW; the others are WO. With
  ``require`` (the newest (epoch, generation) the manager recorded), an engine whose
  reachable replicas are all older refuses to start rather than serve without acknowledged
  writes — unless every replica answered and every current one lost power (counted:
  ``power_loss_starts``).
- **Mutations** (write, trim, write-zeroes) get the engine's next generation and go to every
  replica of the write set (RW and WO) at once (``fanout``); the reply comes when all have
  answered. Aligned NBD writes take the same path without a task (``write_nowait``,
  ``write_callbacks``). A replica that errs, times out or reports a gap in its generations is dropped
  (ERR), and the request succeeds if at least ``min_replicas`` stored it, else fails with
  EIO: the engine never acknowledges what it did not store (invariant 1).
- **Reads** go to an RW replica, the local one first, else in turn. A checksum error is
  read again from another replica, and the bad block is repaired in place (invariant 5).
- **Snapshots** (``snapshots``) hold new mutations, wait for those in flight, snapshot every
  replica at the same point, and resume: crash-consistent across replicas.
- **Import** (for clones; ``importer.start_import``): a background task copies a snapshot
  of a replica of another volume into this one through the ordinary write path, without
  fencing the engine that owns the source; ``import_job`` is its progress.

The helpers (``rebuild``, ``local_reads``, ``snapshots``, ``scrubber``, ``importer``) use
only the public names of the small internal interface described in ``interface``
(``hold``, ``window``, ``readers``, ``check_usable``, ``spawn``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from cargohold.constants import BLOCK_SIZE
from cargohold.engine import start_policy as policy
from cargohold.engine.doubt import mark_source
from cargohold.engine.fanout import FanOut, answers
from cargohold.engine.io_stats import IoStats
from cargohold.engine.local_reads import LocalReads
from cargohold.engine.rebuild import rebuild
from cargohold.engine.replica_link import (
    Mode,
    ReplicaLink,
    ReplicaSpec,
    connect,
    stale_start,
)
from cargohold.engine.write_callbacks import CallbackWrites
from cargohold.errors import (
    AlreadyExists,
    Busy,
    CargoholdError,
    ChecksumError,
    Fenced,
    InvalidArgument,
    ReplicaIOError,
)
from cargohold.protocol.nbd import STATE_HOLE, STATE_ZERO
from cargohold.protocol.replica_wire import FLAG_FUA, Op
from cargohold.replica.client import ReplicaClient
from cargohold.security.tls import Credentials
from cargohold.settings import EngineSettings

log = logging.getLogger("cargohold.engine")


class Volume(CallbackWrites):
    block_size = BLOCK_SIZE
    can_multi_conn = True  # every connection goes through this one engine
    read_only = False

    def __init__(
        self,
        name: str,
        replicas: list[ReplicaSpec],
        epoch: int,
        settings: EngineSettings,
        require: tuple[int, int] = (0, 0),
        epoch_jump: bool = False,
        tls: Credentials | None = None,
    ) -> None:
        """``tls``: the credentials of ``settings.tls_dir`` when the caller loaded them
        already (the daemon: one load per engine start, not three)."""
        if not replicas:
            raise InvalidArgument("a volume needs at least one replica")
        self.name = name
        self.epoch = epoch
        self.settings = settings
        self.require = require  # (epoch, generation): refuse to start from older replicas
        self.epoch_jump = epoch_jump  # after `volume recover-epoch`: OPEN may jump epochs
        self.endpoint = ""  # nbd://HOST:PORT/NAME, once the NBD server listens
        self.nbd_clients: Callable[[], list[dict[str, str]]] = list  # set by engine/daemon.py
        # mutual TLS to the replica servers with this volume's engine certificate (None:
        # plain TCP; the engine's daemon refuses that unless --plaintext was given)
        if tls is None and settings.tls_dir:
            tls = Credentials.load(settings.tls_dir)
        self.tls = tls
        self._top = (0, 0)  # (last epoch, generation) of the current replicas at start
        self.import_job: dict[str, Any] | None = None  # the last import's progress (importer)
        self.jobs: dict[str, dict[str, Any]] = {}  # backups and restores by operation id
        self.links = [ReplicaLink(spec) for spec in replicas]
        self.gen = 0  # the last generation handed out
        self._size = 0
        self.fenced: str | None = None
        self._running = asyncio.Event()  # cleared while mutations are held
        self._running.set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._window: tuple[int, int] | None = None  # a rebuild step's range
        self._window_free = asyncio.Event()
        self._window_free.set()
        self._turn = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.io = IoStats()  # counters, latency histograms, reads waiting (io_stats.py)
        self.counters = self.io.counters
        self.local = LocalReads(self, settings.local_reads)
        self.fanout = FanOut(name, settings, self.counters, self._fence)

    # --- start and stop --------------------------------------------------------------
    async def start(self) -> None:
        """Connect, fence older engines, decide which replicas are current, settle a doubt
        about their content (``start_policy``), start rebuilds."""
        await asyncio.gather(*(self._open(link) for link in self.links))
        reachable = [link for link in self.links if link.client is not None]
        if len(reachable) < self.settings.min_replicas:
            why = "; ".join(f"{link.spec}: {link.error}" for link in self.links if link.error)
            raise ReplicaIOError(
                f"volume {self.name}: {len(reachable)} of {len(self.links)} replicas reachable, "
                f"{self.settings.min_replicas} needed ({why})"
            )
        top, current = policy.current(reachable)
        short = not policy.meets(self.require, top)
        if short and not policy.shortfall_accepted(self.links, current):
            await self.close()  # newer data exists elsewhere: starting would lose it
            raise ReplicaIOError(stale_start(self.name, self.require, self.links, top))
        for link in reachable:
            link.mode = Mode.RW if any(link is x for x in current) else Mode.WO
        self.gen = policy.starting_generation(current, self.require[1] if short else 0)
        self._size = max(link.size for link in current)
        self._top = top
        if short:
            self.counters["power_loss_starts"] += 1
            log.warning("%s", policy.accepted_loss(self.name, self.require, top, self.gen))
        if policy.doubt(current):  # they may differ above their generation: keep one
            timeout = self.settings.replica_timeout * 4
            try:
                source = await mark_source(self.name, current, self.gen, timeout, self.counters)
            except ReplicaIOError:
                await self.close()
                raise
            self._top = (top[0], source.generation)  # what it holds now (``current``)
        rw, wo = ([str(x.spec) for x in reachable if x.mode is m] for m in (Mode.RW, Mode.WO))
        log.info(
            "volume %s: epoch %d; current at generation %d (last written by epoch %d): %s; "
            "stale: %s",
            *(self.name, self.epoch, self._top[1], top[0], rw, wo),
        )
        for link in reachable:
            if link.mode is Mode.WO:
                self.spawn(self._rebuild(link))

    async def _open(self, link: ReplicaLink) -> None:
        client = None
        try:
            # the local replica over its server's unix socket when it has one, else TLS
            client = await connect(
                link, self.name, self.settings.replica_timeout, self.tls, self.settings.batch_writes
            )
            info = await asyncio.wait_for(
                client.open(link.spec.id, self.epoch, self.epoch_jump),
                self.settings.replica_timeout,
            )
        except (CargoholdError, OSError, TimeoutError) as e:
            if client is not None:
                client.close_nowait()
            link.drop("")
            link.error = f"open failed: {describe(e)}"  # also when it was ERR already
            return
        link.opened(client, info)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.links:
            link.close_reader()
            if link.client is not None:
                await link.client.close()
                link.client = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a background task for the volume's life: ``close`` cancels it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the write set ------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    def write_set(self) -> list[ReplicaLink]:
        err = Mode.ERR  # per write: looked up once, not per link
        return [link for link in self.links if link.mode is not err]

    def robustness(self) -> str:
        rw = sum(1 for link in self.links if link.mode is Mode.RW)
        if self.fenced or rw == 0:
            return "faulted"
        return "healthy" if rw == len(self.links) else "degraded"

    def check_usable(self) -> None:
        if self.fenced:
            raise Fenced(f"volume {self.name}: {self.fenced}")

    async def _fan_out(
        self, offset: int, length: int, send: Callable[[ReplicaClient, int], Any], what: str
    ) -> None:
        """A mutation: next generation, to every replica of the write set, all answers."""
        self.check_usable()
        # both looked at again after every wait: a hold may begin while this waits for a
        # window, or take over from the hold whose end woke this
        while not self._running.is_set() or (
            self._window is not None and _overlap(self._window, offset, length)
        ):
            if not self._running.is_set():
                await self._running.wait()
                continue
            self.counters["window_waits"] += 1  # the consumer is busy (engine/background.py)
            await self._window_free.wait()
        self.check_usable()
        targets = self.write_set()
        self.fanout.enough(targets)
        self.gen += 1
        gen = self.gen
        self._inflight += 1
        self._idle.clear()
        try:
            stored, t0 = await self.fanout.send(targets, lambda c: send(c, gen), gen)
            self.io.observe(what, t0)
            self.verdict(stored, what)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _fence(self, why: str) -> None:
        """A replica said a newer engine owns it: every request fails from now on."""
        self.fenced = why

    # --- BlockDevice --------------------------------------------------------------------
    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        flags = FLAG_FUA if fua else 0
        await self._fan_out(
            offset,
            len(data),
            lambda c, g: c.send(Op.WRITE, offset, len(data), data, flags, generation=g),
            "write",
        )
        self.counters["written_bytes"] += len(data)

    async def trim(self, offset: int, length: int) -> None:
        await self._fan_out(
            offset, length, lambda c, g: c.send(Op.TRIM, offset, length, generation=g), "trim"
        )

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await self._fan_out(
            offset,
            length,
            lambda c, g: c.send(Op.WRITE_ZEROES, offset, length, generation=g),
            "write_zeroes",
        )
        if fua:
            await self.flush()

    async def flush(self) -> None:
        self.check_usable()
        stored, t0 = await self.fanout.send(self.write_set(), lambda c: c.send(Op.FLUSH), 0)
        self.io.observe("flush", t0)
        self.verdict(stored, "flush")

    def readers(self) -> list[ReplicaLink]:
        rw = [link for link in self.links if link.mode is Mode.RW]
        local = [link for link in rw if link.spec.local]
        others = [link for link in rw if not link.spec.local]
        if others:
            self._turn = (self._turn + 1) % len(others)
            others = others[self._turn :] + others[: self._turn]
        return local + others

    def read_now(self, offset: int, length: int) -> bytes | bytearray | None:
        """A read answered at once from the local replica's files (``local_reads``), or
        None: then ``read`` it. Called by the NBD frontend without a task per request."""
        if self.fenced:
            return None
        t0 = time.perf_counter()
        data = self.local.read(offset, length)
        if data is not None:
            self.io.observe("read", t0)
            self.counters["read_bytes"] += length
        return data

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        self.check_usable()
        if (data := self.read_now(offset, length)) is not None:
            return data
        self.io.reading += 1
        try:
            return await self._read_replicas(offset, length)
        finally:
            self.io.reading -= 1

    async def _read_replicas(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        bad: list[tuple[ReplicaLink, list[int]]] = []
        t0 = time.perf_counter()
        for link in self.readers():
            client = link.client
            assert client is not None
            try:
                fut = client.send(Op.READ, offset, length)
                await answers([fut], self.settings.replica_timeout)
                got = client.check(fut.result()).payload
            except ChecksumError as e:
                self.counters["checksum_errors"] += 1
                bad.append((link, list(e.detail.get("blocks", []))))
                log.warning("volume %s: %s on %s; reading elsewhere", self.name, e, link.spec)
                continue
            except Fenced as e:
                self.fenced = f"a newer engine owns replica {link.spec}: {e}"
                raise
            except (TimeoutError, CargoholdError, OSError) as e:
                link.drop(f"read failed: {type(e).__name__}: {e}")
                continue
            for victim, blocks in bad:
                self.spawn(self._repair(victim, blocks, offset, got))
            self.io.observe("read", t0)
            self.counters["read_bytes"] += length
            return got
        if bad:  # rot on every replica, in different blocks: assemble the range block-wise
            out, more = await self._read_around_rot(offset, length)
            for victim, blocks in bad + more:
                self.spawn(self._repair(victim, blocks, offset, out))
            self.io.observe("read", t0)
            self.counters["read_bytes"] += length
            return out
        raise ReplicaIOError(f"volume {self.name}: no current replica could serve the read")

    async def _read_around_rot(
        self, offset: int, length: int
    ) -> tuple[bytearray, list[tuple[ReplicaLink, list[int]]]]:
        """Each block of the range from the first RW replica that holds it intact (every
        replica failed the whole range with a checksum error). -> the data, and the bad
        blocks seen on each replica. Raises ReplicaIOError if some block is bad
        everywhere."""
        out = bytearray(length)
        first = offset // BLOCK_SIZE
        missing = list(range(length // BLOCK_SIZE))
        bad: list[tuple[ReplicaLink, list[int]]] = []
        for link in self.readers():
            client = link.client
            if not missing or client is None:
                continue
            futs = [client.send(Op.READ, offset + i * BLOCK_SIZE, BLOCK_SIZE) for i in missing]
            await answers(futs, self.settings.replica_timeout)
            still, rotted, failed = [], [], None
            for i, fut in zip(missing, futs, strict=True):
                try:
                    payload = client.check(fut.result()).payload
                except ChecksumError:
                    still.append(i)
                    rotted.append(first + i)
                    continue
                except Fenced as e:
                    self.fenced = f"a newer engine owns replica {link.spec}: {e}"
                    raise
                except (TimeoutError, CargoholdError, OSError) as e:
                    still.append(i)
                    failed = e
                    continue
                out[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] = payload
            if failed is not None:
                link.drop(f"read failed: {type(failed).__name__}: {failed}")
            if rotted:
                bad.append((link, rotted))
            missing = still
        if missing:
            raise ReplicaIOError(
                f"volume {self.name}: block {first + missing[0]} (and {len(missing) - 1} more) "
                "fails its checksum on every current replica"
            )
        return out, bad

    async def _repair(
        self,
        link: ReplicaLink,
        blocks: list[int],
        offset: int,
        data: bytes | bytearray | memoryview,
    ) -> None:
        for b in blocks:
            rel = b * BLOCK_SIZE - offset
            if link.client is None or not 0 <= rel < len(data):
                continue
            try:
                fixed = await link.client.repair(b * BLOCK_SIZE, data[rel : rel + BLOCK_SIZE])
            except (CargoholdError, OSError) as e:
                link.drop(f"repair failed: {e}")
                return
            self.counters["repaired_blocks"] += fixed
            log.info("volume %s: block %d repaired on %s", self.name, b, link.spec)

    async def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self.check_usable()
        for link in self.readers():
            assert link.client is not None
            try:
                extents = await asyncio.wait_for(
                    link.client.extents(offset, length), self.settings.replica_timeout
                )
            except (TimeoutError, CargoholdError, OSError) as e:
                if isinstance(e, Fenced):
                    raise
                link.drop(f"block status failed: {e}")
                continue
            out: list[tuple[int, int]] = []
            for _, n, kind in extents:
                # zeroed and trimmed blocks have their space released: holes too
                flags = 0 if kind == 1 else STATE_HOLE | STATE_ZERO
                if out and out[-1][1] == flags:
                    out[-1] = (out[-1][0] + n, flags)
                else:
                    out.append((n, flags))
            return out
        raise ReplicaIOError(f"volume {self.name}: no current replica for block status")

    # --- holding mutations (snapshots, the end of a rebuild) ------------------------------
    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """``async with vol.hold():`` new mutations wait and those in flight are answered
        before the block runs; mutations resume when it ends, however it ends."""
        while not self._running.is_set():
            await self._running.wait()
        self._running.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._running.set()

    # --- rebuild ---------------------------------------------------------------------------
    async def _rebuild(self, link: ReplicaLink) -> None:
        try:
            await rebuild(self, link)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the rebuild failed: the replica stays out
            link.drop(f"rebuild failed: {type(e).__name__}: {e}")
            log.warning("volume %s: rebuild of %s failed: %s", self.name, link.spec, e)

    def window(self, lo: int, hi: int) -> None:
        self._window = (lo, hi)
        self._window_free.clear()

    def window_done(self) -> None:
        self._window = None
        self._window_free.set()

    async def broadcast(
        self,
        call: Any,
        targets: list[ReplicaLink] | None = None,
        tolerate: tuple[type[BaseException], ...] = (),
    ) -> list[Any]:
        """Run ``call(client)`` on each target (default: the write set) at once. A replica
        that fails is dropped, except for errors in ``tolerate`` (returned as None) and
        errors in the request itself (InvalidArgument, Busy, AlreadyExists: raised)."""
        targets = self.write_set() if targets is None else targets

        async def one(link: ReplicaLink) -> Any:
            assert link.client is not None
            try:
                return await asyncio.wait_for(call(link.client), self.settings.replica_timeout * 4)
            except tolerate:
                return None
            except Fenced as e:
                self.fenced = f"a newer engine owns replica {link.spec}: {e}"
                raise
            except (InvalidArgument, Busy, AlreadyExists):
                raise
            except (TimeoutError, CargoholdError, OSError) as e:
                link.drop(f"{type(e).__name__}: {e}")
                return _FAILED

        results = await asyncio.gather(*(one(link) for link in targets))
        ok = [r for r in results if r is not _FAILED]
        if len(ok) < self.settings.min_replicas:
            raise ReplicaIOError(
                f"volume {self.name}: done on {len(ok)} replicas, {self.settings.min_replicas} needed"
            )
        return ok

    async def expand(self, new_size: int) -> None:
        """Online expansion: every replica grows, then the volume. NBD clients see the new
        size when they reconnect (NBD has no resize notification)."""
        self.check_usable()
        if not isinstance(new_size, int) or new_size % BLOCK_SIZE or new_size < self._size:
            raise InvalidArgument(
                f"new size {new_size!r}: a multiple of {BLOCK_SIZE}, at least {self._size}"
            )
        try:
            await self.broadcast(lambda c: c.expand(new_size))
        finally:
            self.local.changed_layout()
        self._size = new_size

    # --- membership ---------------------------------------------------------------------
    async def add_replica(self, spec: ReplicaSpec) -> None:
        """A new (or returning) replica joins write-only and is rebuilt online."""
        link = next((x for x in self.links if x.spec.id == spec.id), None)
        if link is None:
            link = ReplicaLink(spec)
            self.links.append(link)
        elif link.mode is not Mode.ERR:
            raise InvalidArgument(f"replica {spec.id} is already in the write set")
        else:  # a returning replica: new address, same place (local or not)
            link.spec = dataclasses.replace(
                spec, local=spec.local or link.spec.local, unix=spec.unix or link.spec.unix
            )
        await self._open(link)
        if link.client is None:
            raise ReplicaIOError(f"replica {spec}: {link.error}")
        link.mode = Mode.WO
        self.spawn(self._rebuild(link))

    def remove_replica(self, replica_id: str) -> None:
        link = next((x for x in self.links if x.spec.id == replica_id), None)
        if link is None:
            raise InvalidArgument(f"no replica {replica_id} in volume {self.name}")
        if link.mode is Mode.RW and sum(x.mode is Mode.RW for x in self.links) <= 1:
            raise Busy(f"replica {replica_id} is the last current one of volume {self.name}")
        link.drop("removed")
        self.links.remove(link)

    # --- status ------------------------------------------------------------------------
    def current(self) -> tuple[int, int]:
        """(epoch, generation) of the newest data every current replica holds: what the
        manager records and passes back as ``--require`` to the next engine (invariant 4).
        The epoch is that of the engine that made the mutation, as the replicas' history
        says: this engine's once it has written, else the one the replicas had at start."""
        gens = [link.generation for link in self.links if link.mode is Mode.RW]
        if not gens:
            return self._top
        gen = min(gens)
        return (self.epoch, gen) if gen > self._top[1] else self._top

    def status(self) -> dict[str, Any]:
        current_epoch, current_generation = self.current()
        return {
            "volume": self.name,
            "epoch": self.epoch,
            "endpoint": self.endpoint,
            "size_bytes": self._size,
            "generation": self.gen,
            "current_epoch": current_epoch,
            "current_generation": current_generation,
            "robustness": self.robustness(),
            "fenced": self.fenced,
            "replicas": [link.status() for link in self.links],
            "import": dict(self.import_job) if self.import_job is not None else None,
            "jobs": {k: dict(v) for k, v in self.jobs.items()},
            **self.io.status(self._inflight),
        }


_FAILED = object()


def describe(e: BaseException) -> str:
    return str(e) if isinstance(e, CargoholdError) and str(e) else f"{type(e).__name__}: {e}"


def _overlap(window: tuple[int, int], offset: int, length: int) -> bool:
    return offset < window[1] and window[0] < offset + length
