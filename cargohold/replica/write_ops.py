"""A replica-server session's mutations of its open replica: WRITE, WRITE_BATCH (adjacent
writes of a batch go to the store in one call, one ``pwritev``), FLUSH, TRIM and
WRITE_ZEROES, each fenced by the epoch and numbered by its generation. A mixin of
``Session`` (``replica/session.py``), whose dispatch table names these methods.

**A failed mutation stops the session's.** Once a WRITE, an item of a WRITE_BATCH, a
TRIM or a WRITE_ZEROES of a session failed (refused or not stored), every later one of
that session is refused, not applied, until the replica is OPENed again, with an error
naming the first failure: the items of a batch after a failed one too. So what a replica
applied of a session's mutations is always a prefix of what was sent: a writer may send a
mutation and one that depends on it back to back (the encrypting engine's tag block and
then the data it authenticates) without waiting for the first answer, and the second never
lands where the first did not (docs/formats/replica-wire.md). FLUSH, READ and the other
requests are served as before.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cargohold.errors import InvalidArgument, ReplicaIOError, Unsupported
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op, Request

if TYPE_CHECKING:
    from cargohold.replica.registry import OpenReplica

Result = tuple[int, Any]  # (generation, payload bytes | list of buffers)
# the requests whose failure stops the session's mutations
_STOPPING = frozenset({Op.WRITE, Op.WRITE_BATCH, Op.TRIM, Op.WRITE_ZEROES})


class WriteOps:
    if TYPE_CHECKING:
        server: Any  # session.Host

        def _replica(self) -> OpenReplica: ...
        def _mutation(self, req: Request) -> OpenReplica: ...
        def _numbered(self, rep: OpenReplica, op: int, generation: int) -> None: ...
        def _error(self, req: Request, e: Exception) -> tuple[int, bytes]: ...

        failed: str | None

    def op_write(self, req: Request) -> Result | Any:
        rep = self._replica()
        if len(req.payload) != req.length:
            raise InvalidArgument(
                f"write length {req.length} but {len(req.payload)} bytes of payload"
            )
        self._refuse_after_failure(rep)  # _mutation's checks, the replica's already done
        self._numbered(rep, req.op, req.generation)
        gen = rep.store.write(req.offset, req.payload, generation=req.generation)
        if req.flags & wire.FLAG_FUA:
            return self._flush(rep, gen)
        return gen, b""

    def op_write_batch(self, req: Request) -> Result | Any:
        """Several WRITEs in one frame (protocol version 2): each applied as a WRITE would
        be, in order, with its own generation and its own answer (the ones after a failed
        write are refused, not applied: module doc); one flush when any of them asked for
        FUA, then one reply for all."""
        if self.server.settings.wire_version < 2:
            raise Unsupported("WRITE_BATCH is protocol version 2; this server speaks 1")
        writes = wire.decode_write_batch(req.payload)
        rep = self._replica()  # fenced, closed, deleted: the whole batch fails alike
        store = rep.store
        n = len(writes)
        counters = self.server.counters
        counters["write_batches"] += 1
        counters["batched_writes"] += n
        # the node's request and disk-op metrics count writes, batched or not
        counters["requests"] += n - 1
        rep.disk.ops += n - 1
        # numbered ones to the store in one call (adjacent ones: one pwritev), in order;
        # none after the first that fails (this batch's or an earlier request's)
        refused: list[Exception | None] = []
        take = n
        if self.failed is not None or not all(w.generation for w in writes):
            refused = [self._refusal(rep, w.generation) for w in writes]
            take = next((k for k, no in enumerate(refused) if no is not None), take)
        got_all = store.write_many(
            [(w.offset, w.data, w.generation) for w in (writes if take == n else writes[:take])]
        )
        ok = wire.STATUS_OK
        results = [(ok, g, b"") for g in got_all if type(g) is int]
        if len(results) == n:  # every write stored: the usual batch
            fua = any(w.flags & wire.FLAG_FUA for w in writes)
        else:
            results, fua = self._batch_failed(req, rep, writes, got_all, refused)
        if fua:
            return self._flush_batch(rep, results)
        return store.generation, wire.encode_batch_results(results)

    def _refusal(self, rep: OpenReplica, generation: int) -> Exception | None:
        """Why a write of a batch is refused before the store sees it, if it is."""
        try:
            self._refuse_after_failure(rep)
            self._numbered(rep, Op.WRITE, generation)
        except Exception as e:
            return e
        return None

    def _batch_failed(
        self,
        req: Request,
        rep: OpenReplica,
        writes: list[wire.BatchWrite],
        got_all: list[int | Exception],
        refused: list[Exception | None],
    ) -> tuple[list[tuple[int, int, bytes]], bool]:
        """The answers of a batch of which a write was refused or failed: the ones before it
        stored, it failed, the ones after it not applied (module doc). -> (results, whether
        a stored one asked for FUA)."""
        store = rep.store
        results: list[tuple[int, int, bytes]] = []
        fua = False
        stop = False  # a write of this batch failed: the rest are not applied
        take = len(got_all)
        for k, w in enumerate(writes):
            got: int | Exception | None = got_all[k] if k < take else refused[k]
            if stop or got is None:
                got = self._stopped(rep)
            if isinstance(got, Exception):
                self._failed_write(w.offset, w.generation, got)
                stop = True
                status, body = self._error(req, got)
                results.append((status, store.generation, body))
            else:
                results.append((wire.STATUS_OK, got, b""))
                fua = fua or bool(w.flags & wire.FLAG_FUA)
        return results, fua

    def _mutation_failed(self, req: Request, e: Exception) -> None:
        """A request failed (``Session._handle``): a mutation's failure stops the session's
        mutations (module doc). A WRITE_BATCH's own failure (fenced, malformed) too."""
        if req.op in _STOPPING and self.failed is None:
            what = (
                "a WRITE_BATCH"
                if req.op == Op.WRITE_BATCH
                else f"{Op(req.op).name} at offset {req.offset} (generation {req.generation})"
            )
            self.failed = f"{what} failed: {e}"

    def _failed_write(self, offset: int, generation: int, e: Exception) -> None:
        if self.failed is None:
            self.failed = f"WRITE at offset {offset} (generation {generation}) failed: {e}"

    def _stopped(self, rep: OpenReplica) -> ReplicaIOError:
        return ReplicaIOError(
            f"replica {rep.id}: mutation refused, not applied: an earlier one of this "
            f"connection did not complete ({self.failed}); OPEN the replica again"
        )

    def _refuse_after_failure(self, rep: OpenReplica) -> None:
        if self.failed is not None:
            raise self._stopped(rep)

    async def _flush_batch(self, rep: OpenReplica, results: list[tuple[int, int, bytes]]) -> Result:
        await self._flush(rep, 0)
        return rep.store.generation, wire.encode_batch_results(results)

    def op_flush(self, req: Request) -> Any:
        rep = self._replica()
        return self._flush(rep, rep.store.generation)

    async def _flush(self, rep: OpenReplica, gen: int) -> Result:
        """fdatasync in a thread; answered when earlier flushes are done too (FlushGate)."""
        t0 = time.perf_counter()
        await rep.flushes.flush(rep.store)
        rep.disk.flushed(int((time.perf_counter() - t0) * 1e6))
        return gen, b""

    def op_trim(self, req: Request) -> Result:
        rep = self._mutation(req)
        return rep.store.trim(req.offset, req.length, req.generation), b""

    def op_write_zeroes(self, req: Request) -> Result:
        rep = self._mutation(req)
        return rep.store.write_zeroes(req.offset, req.length, req.generation), b""

    async def _drain_flushes(self, rep: OpenReplica) -> None:
        await rep.flushes.drain()
