"""The client side of the replica wire: pipelined requests over one connection.

Used by volume engines (and by tools, tests and benchmarks) to talk to a replica server.
Every call returns when its reply arrives; many calls may be in flight at once. A reply
with an error status raises the matching ``RequestError``; a lost connection fails every
pending call with ``ReplicaIOError``.

With credentials (``connect(..., tls=Credentials)``) the connection is mutual TLS 1.3 and the
server must present the certificate of a replica server of our own cluster. A connection
that will OPEN, CREATE or DELETE one replica names it (``replica=``): the TLS server name is
then its routing name (``protocol.tls_hello``), which a server with worker processes routes
by before the handshake.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from typing import Any, cast

from cargohold.errors import (
    InvalidArgument,
    ProtocolError,
    ReplicaIOError,
    Unsupported,
    error_for_status,
)
from cargohold.protocol import extent_stream as xs
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.framing import coalesce
from cargohold.protocol.replica_wire import Op, Reply
from cargohold.protocol.tls_hello import routing_name
from cargohold.security.identity import Role
from cargohold.security.tls import Credentials, peer_identity, require

_REPLICA_SERVER = frozenset({Role.REPLICA})
_WRITE = int(Op.WRITE)  # on the write path: an enum member's lookup costs 5 times a global's
BATCH_BYTES = 8 << 20
"""Data one WRITE_BATCH carries at most: a larger write goes in a frame of its own."""

# ReplicaClient has a method named ``list``: inside the class, annotations use these names
Records = list[dict[str, Any]]  # LIST's replicas, SNAPSHOT_LIST's snapshots
Extents = list[list[int]]  # [[offset, length], ...] (EXTENTS: [[offset, length, kind], ...])
History = list[list[int]]  # [[epoch, first generation], ...]


class _ClientProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.decoder = wire.ReplyDecoder()
        # request id -> its future; a WRITE_BATCH's id -> the futures of its writes
        self.pending: dict[int, asyncio.Future[Reply] | list[asyncio.Future[Reply]]] = {}
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        # frames queued in this pass of the event loop, written with one writelines
        self._out: list[Any] = []
        self._loop = asyncio.get_running_loop()
        self._tls = False  # over TLS small frames are joined into records (framing.coalesce)
        self.ids = itertools.count(1)  # request ids
        # WRITEs batched in this pass of the event loop (queue_write), and their futures
        self._batch: list[tuple[int, Any, int, int]] = []
        self._batch_futs: list[asyncio.Future[Reply]] = []
        self._batch_bytes = 0
        self._concurrent = False  # the last batch held several writes (queue_write)

    def queue(self, frames: list[Any]) -> None:
        """Send a request's ``frames``. The only request in flight goes out at once (no
        added latency at queue depth 1); with others in flight, at the end of this pass of
        the event loop, together with every request queued in it: one system call for
        many requests, in order."""
        if self._batch:
            self._seal()  # the writes batched so far go before this request
        if not self._out:
            if len(self.pending) <= 1 and self.transport is not None:
                self.transport.writelines(coalesce(frames) if self._tls else frames)
                return
            self._loop.call_soon(self.flush)
        self._out += frames

    def queue_write(
        self, fut: asyncio.Future[Reply], offset: int, data: Any, flags: int, gen: int
    ) -> bool:
        """Batch a WRITE (the server speaks version 2): the writes queued in this pass of
        the event loop go out at its end as one WRITE_BATCH frame, answered by one reply
        (a write alone in its pass goes as a WRITE). A write with nothing else in flight or
        queued goes out at once (False: the caller sends it; no added latency at queue
        depth 1) unless the last batch held several writes: then the other requests an NBD
        client sent with it are most likely started in this same pass, and one frame for
        all of them costs one system call where sending the first at once cost two."""
        batch = self._batch
        if not batch:
            if not self.pending and not self._out and not self._concurrent:
                return False
            if not self._out:
                self._loop.call_soon(self.flush)
        elif len(batch) >= wire.MAX_BATCH_WRITES or self._batch_bytes + len(data) > BATCH_BYTES:
            self._seal()
        self._batch.append((offset, data, flags, gen))
        self._batch_futs.append(fut)
        self._batch_bytes += len(data)
        return True

    def _seal(self) -> None:
        """The writes batched so far become one frame in ``_out`` (one write: a WRITE)."""
        batch, futs = self._batch, self._batch_futs
        self._batch, self._batch_futs, self._batch_bytes = [], [], 0
        self._concurrent = len(batch) > 1
        rid = next(self.ids)
        if len(batch) == 1:
            offset, data, flags, gen = batch[0]
            self.pending[rid] = futs[0]
            self._out += wire.encode_request(Op.WRITE, rid, offset, len(data), data, flags, gen)
            return
        self.pending[rid] = futs
        self._out += wire.encode_write_batch(rid, batch)

    def flush(self) -> None:
        if self._batch:
            self._seal()
        out, self._out = self._out, []
        t = self.transport
        if out and t is not None and not t.is_closing():
            t.writelines(coalesce(out) if self._tls else out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is no subclass of asyncio.Transport, but has its methods)
        self.transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("ssl_object") is not None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # received with readinto (a large reply lands in a buffer of its own: no copy, no join)
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._received(lambda: self.decoder.buffer_updated(nbytes))

    def data_received(self, data: bytes) -> None:
        self._received(lambda: self.decoder.feed(data))

    def _received(self, decode: Callable[[], list[Reply]]) -> None:
        try:
            replies = decode()
        except ProtocolError as e:
            self._fail(ReplicaIOError(f"replica server broke the protocol: {e}"))
            assert self.transport is not None
            self.transport.abort()
            return
        for r in replies:
            fut = self.pending.pop(r.id, None)
            if fut is None:
                continue
            if isinstance(fut, list):
                self._batch_answered(r, fut)
            elif not fut.done():
                fut.set_result(r)

    def _batch_answered(self, r: Reply, futs: list[asyncio.Future[Reply]]) -> None:
        """A WRITE_BATCH's reply: each write's answer, as a WRITE's reply would say it (a
        frame-level error, e.g. Fenced: the same for every write of the batch)."""
        if r.status != wire.STATUS_OK:
            for fut in futs:
                if not fut.done():
                    fut.set_result(r)
            return
        try:
            results = wire.decode_batch_results(r.payload, len(futs), r.id)
        except ProtocolError as e:
            self._fail(ReplicaIOError(f"replica server broke the protocol: {e}"))
            for fut in futs:
                if not fut.done():
                    fut.set_exception(ReplicaIOError(f"replica server broke the protocol: {e}"))
            assert self.transport is not None
            self.transport.abort()
            return
        for fut, res in zip(futs, results, strict=True):
            if not fut.done():
                fut.set_result(res)

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ReplicaIOError(f"connection to the replica server lost: {exc or 'closed'}"))
        self._drained.set()

    def _fail(self, err: Exception) -> None:
        self.lost = err
        pending, self.pending = self.pending, {}
        futs = self._batch_futs
        self._batch, self._batch_futs, self._batch_bytes = [], [], 0
        for one in [*pending.values(), futs]:
            for fut in one if isinstance(one, list) else [one]:
                if not fut.done():
                    fut.set_exception(err)


class ReplicaClient:
    def __init__(self, proto: _ClientProtocol, where: str) -> None:
        self._p = proto
        self._ids = proto.ids
        self.where = where
        self.version = 1  # the server's protocol version, once ``negotiate`` asked
        self.batching = False  # WRITEs go in WRITE_BATCH frames (``negotiate``)
        # the server refuses a session's mutations after a failed one (``negotiate``)
        self.stop_on_failure = False
        self.generation = 0
        self.seen = 0  # the newest generation the replica reported (OPEN, INFO) or we sent

    @classmethod
    async def connect(
        cls,
        host: str | None = None,
        port: int | None = None,
        unix: str | None = None,
        timeout: float = 10.0,
        sock: socket.socket | None = None,
        tls: Credentials | None = None,
        replica: str | None = None,
    ) -> ReplicaClient:
        """Connect by TCP address, unix socket path, or over an already connected socket;
        over mutual TLS with ``tls`` (TCP only), naming ``replica`` when the connection is
        for OPEN, CREATE or DELETE of that replica (the server routes by it)."""
        if sock is None and not unix and (host is None or port is None):
            raise InvalidArgument("a replica server is reached by host and port, unix or sock")
        loop = asyncio.get_running_loop()
        secure: dict[str, Any] = {}
        if tls is not None and not unix:
            # no server name at all without a replica: the server's parent serves it
            name = routing_name(replica) if replica is not None else ""
            secure = {"ssl": tls.client_context(), "server_hostname": name}
        try:
            if sock is not None:
                transport, proto = await asyncio.wait_for(
                    loop.create_connection(_ClientProtocol, sock=sock, **secure), timeout
                )
                where = str(sock.getpeername())
            elif unix:
                transport, proto = await asyncio.wait_for(
                    loop.create_unix_connection(_ClientProtocol, unix), timeout
                )
                where = unix
            else:
                assert host is not None and port is not None  # checked above
                transport, proto = await asyncio.wait_for(
                    loop.create_connection(_ClientProtocol, host, port, **secure), timeout
                )
                where = f"{host}:{port}"
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            raise ReplicaIOError(
                f"cannot connect to replica server {host or unix}:{port}: {e}"
            ) from None
        if secure:
            assert tls is not None
            try:  # the other end is a replica server of our cluster, not just anyone's
                require(peer_identity(transport), _REPLICA_SERVER, tls.cluster())
            except Exception:
                transport.abort()
                raise
        return cls(proto, where)

    async def close(self) -> None:
        self.close_nowait()

    def close_nowait(self) -> None:
        """Close the connection (after sending what is queued); every call still pending
        fails with ReplicaIOError."""
        if self._p.transport is not None:
            self._p.flush()
            self._p.transport.close()

    @property
    def in_flight(self) -> int:
        """Requests sent or queued and not answered yet (each write of a batch counts)."""
        p = self._p
        return len(p._batch_futs) + sum(
            len(f) if isinstance(f, list) else 1 for f in p.pending.values()
        )

    def hold_writes(self) -> None:
        """The WRITEs queued next in this pass of the event loop go out together at its end
        (one WRITE_BATCH frame), the first not sent alone at once: for a caller about to
        queue several back to back (``Volume.write_ordered``)."""
        self._p._concurrent = True

    def send(
        self,
        op: int,
        offset: int = 0,
        length: int = 0,
        payload: Any = b"",
        flags: int = 0,
        args: dict[str, Any] | None = None,
        generation: int = 0,
    ) -> asyncio.Future[Reply]:
        """Queue one request; the future resolves to its raw ``Reply``."""
        if self._p.lost is not None:
            raise self._p.lost
        if args is not None:
            payload = wire.dump_json(args)
        fut: asyncio.Future[Reply] = self._p._loop.create_future()
        if (
            op == _WRITE
            and self.batching
            and not isinstance(payload, list)
            and len(payload) <= BATCH_BYTES
            and self._p.queue_write(fut, offset, payload, flags, generation)
        ):
            return fut
        rid = next(self._ids)
        self._p.pending[rid] = fut
        assert self._p.transport is not None
        if isinstance(payload, list):
            n = sum(len(p) for p in payload)
            hdr = wire.REQUEST.pack(
                wire.REQUEST_MAGIC, op, flags, rid, offset, length, n, generation
            )
            self._p.queue([hdr, *payload])
        else:
            self._p.queue(wire.encode_request(op, rid, offset, length, payload, flags, generation))
        return fut

    async def call(
        self,
        op: int,
        offset: int = 0,
        length: int = 0,
        payload: Any = b"",
        flags: int = 0,
        args: dict[str, Any] | None = None,
        generation: int = 0,
    ) -> Reply:
        """Send one request and await its reply (raises the reply's error). A mutation
        without a generation gets the client's next one (``number``), taken when the
        request is queued, so concurrent callers' numbers reach the replica in order."""
        if not self._p._drained.is_set():
            await self._p._drained.wait()
        if op in wire.MUTATIONS:
            generation = self.number(generation)
        reply = await self.send(op, offset, length, payload, flags, args, generation)
        return self.check(reply)

    def check(self, reply: Reply) -> Reply:
        if reply.generation > self.generation:
            self.generation = reply.generation
        if reply.status != wire.STATUS_OK:
            try:
                body = wire.parse_json(reply.payload)
            except Exception:
                body = {"error": bytes(reply.payload).decode(errors="replace")}
            detail = body.get("detail")
            if not isinstance(detail, dict) or "message" in detail:  # not as the wire says
                detail = {}
            raise error_for_status(reply.status, str(body.get("error", "error")), **detail)
        return reply

    # --- node-level -----------------------------------------------------------------
    async def hello(
        self, version: int = 1, engine: str | None = None, replica: str | None = None
    ) -> dict[str, Any]:
        """HELLO, offering protocol ``version`` (1: what every server speaks). ``engine``:
        on a unix socket, this connection is the engine of that volume (the server holds
        it to that volume's replicas from then on; ignored over TLS, where the
        certificate says who we are), about to OPEN ``replica`` (a server with worker
        processes hands the connection to that replica's worker)."""
        args: dict[str, Any] = {"version": version, "client": "cargohold"}
        if engine:
            args["engine"] = engine
            if replica:
                args["replica"] = replica
        return (await self.call(Op.HELLO, args=args)).result()

    async def negotiate(
        self, batch: bool = True, engine: str | None = None, replica: str | None = None
    ) -> int:
        """HELLO with our newest version: -> the server's (``version``). A server that
        speaks version 2 gets WRITEs batched (``batching``, when ``batch``); an older one,
        which refuses our version, gets version 1's frames."""
        try:
            got = await self.hello(wire.VERSION, engine, replica)
        except Unsupported:
            got = {}
        version = got.get("version", 1)
        self.version = version if isinstance(version, int) and version > 0 else 1
        self.batching = batch and self.version >= 2
        self.stop_on_failure = got.get("stop_on_failure") is True
        return self.version

    async def create(
        self,
        replica: str,
        size: int,
        disk: str | None = None,
        cluster_id: str | None = None,
        volume: str | None = None,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"replica": replica, "size": size}
        if volume:
            args["volume"] = volume  # kept in its metadata: whose engine may open it
        if disk:
            args["disk"] = disk
        if cluster_id:
            args["cluster_id"] = cluster_id  # kept in the replica's metadata
        return (await self.call(Op.CREATE, args=args)).result()

    async def delete(self, replica: str) -> None:
        await self.call(Op.DELETE, args={"replica": replica})

    async def list(self, grant: str | None = None) -> Records:
        """LIST (``grant``: a read grant, to see the granted volume's replicas too)."""
        return (await self.listing(grant))["replicas"]

    async def listing(self, grant: str | None = None) -> dict[str, Any]:
        """LIST's whole answer: ``replicas``, and for the node's agent ``server`` (the
        replica server's counters and per-disk numbers: cargohold/metrics/node_stats.py)."""
        args = {"grant": grant} if grant else None
        got = (await self.call(Op.LIST, args=args)).result()
        if not isinstance(got, dict):
            raise ProtocolError(f"LIST answered {type(got).__name__}, not an object")
        return got

    async def open(
        self, replica: str, epoch: int, jump: bool = False, grant: str | None = None
    ) -> dict[str, Any]:
        """OPEN at ``epoch``; ``jump``: more than MAX_EPOCH_STEP above the replica's epoch
        is allowed (only after ``volume recover-epoch``); ``grant``: a read grant for
        another volume's replica (read-only, its snapshot only: security/grants.py).
        -> the replica's info (as ``info``: ``generation``, ``seen``, ``power_loss`` ...)."""
        args: dict[str, Any] = {"replica": replica, "epoch": epoch}
        if jump:
            args["jump"] = True
        if grant:
            args["grant"] = grant
        info = (await self.call(Op.OPEN, args=args)).result()
        self._saw(info)
        return info

    def _saw(self, info: dict[str, Any]) -> None:
        seen = info.get("seen", info.get("generation", 0))
        if isinstance(seen, int):
            self.seen = max(self.seen, seen)

    def number(self, generation: int = 0) -> int:
        """The generation for a mutation: ``generation`` if given (an engine numbers its
        volume's mutations), else the next above the newest this client knows the replica
        has seen (for tools and tests that drive one replica alone). The replica refuses a
        mutation without one (generation 0)."""
        g = generation or max(self.seen, self.generation) + 1
        self.seen = max(self.seen, g)
        return g

    # --- data -----------------------------------------------------------------------
    async def read(self, offset: int, length: int, snapshot: str | None = None) -> memoryview:
        args = {"snapshot": snapshot} if snapshot else None
        return (await self.call(Op.READ, offset, length, args=args)).payload  # type: ignore[return-value]  # memoryviews from ReplyDecoder; bytes only from test doubles

    async def write(self, offset: int, data: Any, fua: bool = False, generation: int = 0) -> int:
        """-> the generation the replica is complete through (see docs/formats/replica-wire.md)"""
        flags = wire.FLAG_FUA if fua else 0
        r = await self.call(Op.WRITE, offset, len(data), data, flags, generation=generation)
        return r.generation

    async def flush(self) -> int:
        return (await self.call(Op.FLUSH)).generation

    async def trim(self, offset: int, length: int, generation: int = 0) -> int:
        return (await self.call(Op.TRIM, offset, length, generation=generation)).generation

    async def write_zeroes(self, offset: int, length: int, generation: int = 0) -> int:
        return (await self.call(Op.WRITE_ZEROES, offset, length, generation=generation)).generation

    # --- snapshots, deltas, maintenance -------------------------------------------------
    async def snapshot_create(
        self, name: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return (
            await self.call(Op.SNAPSHOT_CREATE, args={"name": name, "labels": labels or {}})
        ).result()

    async def snapshot_list(self) -> Records:
        return (await self.call(Op.SNAPSHOT_LIST)).result()["snapshots"]

    async def snapshot_delete(self, name: str) -> None:
        await self.call(Op.SNAPSHOT_DELETE, args={"name": name})

    async def snapshot_revert(self, name: str, generation: int = 0) -> None:
        await self.call(Op.SNAPSHOT_REVERT, args={"name": name}, generation=generation)

    async def info(self) -> dict[str, Any]:
        """INFO: ``generation``, ``seen``, ``power_loss`` (the replica recovered from a
        machine crash and was not marked current since: docs/formats/replica-store.md),
        ``epoch``, ``history`` ... (docs/formats/replica-wire.md)."""
        info = (await self.call(Op.INFO)).result()
        self._saw(info)
        return info

    async def changed_since(
        self, since: int, offset: int = 0, length: int = 0, snapshot: str | None = None
    ) -> Extents:
        """Byte ranges changed after generation ``since``: of the head, or of ``snapshot``."""
        args: dict[str, Any] = {"since": since}
        if snapshot:
            args["snapshot"] = snapshot
        return (await self.call(Op.CHANGED, offset, length, args=args)).result()["extents"]

    async def changed_generations(self, since: int, off: int, n: int) -> wire.GenerationRuns:
        """(offset, length, newest generation, pending) runs of [off, off + n) recorded after
        ``since`` (CHANGED with ``generations``; an older server: Unsupported)."""
        reply = await self.call(Op.CHANGED, off, n, args={"since": since, "generations": True})
        try:
            return wire.generation_runs(reply.result().get("extents"))
        except ProtocolError as e:
            raise ReplicaIOError(f"replica server {self.where}: {e}") from None

    async def extents(self, offset: int, length: int, snapshot: str | None = None) -> Extents:
        args = {"snapshot": snapshot} if snapshot else {}
        return (await self.call(Op.EXTENTS, offset, length, args=args)).result()["extents"]

    async def export(
        self,
        offset: int,
        length: int,
        since: int = 0,
        max_bytes: int = 8 << 20,
        snapshot: str | None = None,
    ) -> memoryview:
        args: dict[str, Any] = {"since": since, "max_bytes": max_bytes}
        if snapshot:
            args["snapshot"] = snapshot
        return (await self.call(Op.EXPORT, offset, length, args=args)).payload  # type: ignore[return-value]  # memoryviews from ReplyDecoder; bytes only from test doubles

    async def import_stream(self, stream: Any, generation: int = 0) -> int:
        """Apply an extent stream. Imported blocks are history: they do not make the replica
        complete through anything (``mark_current`` does, after a rebuild)."""
        return (await self.call(Op.IMPORT, payload=stream, generation=generation)).generation

    async def mark_current(
        self, generation: int = 0, history: History | None = None, reset: bool = False
    ) -> int:
        """After a rebuild: the replica holds every mutation up to ``generation`` (0: the
        newest it has seen), and ``history`` (the source's). Durable when this returns.
        ``reset`` after a full rebuild: generations it saw on a fork no longer count."""
        args: dict[str, Any] = {"generation": generation} if generation else {}
        if history is not None:
            args["history"] = history
        if reset:
            args["reset"] = True
        return (await self.call(Op.MARK_CURRENT, args=args)).generation

    async def copy_to(self, other: ReplicaClient, since: int = 0, chunk: int = 8 << 20) -> int:
        """Stream this replica's content (or its delta since a generation) into another."""
        info = await self.info()
        size = info["size"]
        off = 0
        moved = 0
        while off < size:
            blob = await self.export(off, size - off, since=since, max_bytes=chunk)
            header, _ = xs.decode(blob)
            await other.import_stream(blob)
            moved += len(blob)
            off = header.end
        return moved

    async def checksums(
        self, offset: int, length: int, snapshot: str | None = None, digest_blocks: int = 0
    ) -> wire.Checksums:
        """The replica's checksum map of [offset, offset + length) (at most
        ``wire.MAX_CHECKSUM_BLOCKS`` blocks), from its block maps, no data read: per block,
        or with ``digest_blocks`` one CRC32C per window of that many blocks."""
        args: dict[str, Any] = {"digest_blocks": digest_blocks} if digest_blocks else {}
        if snapshot:
            args["snapshot"] = snapshot
        reply = await self.call(Op.CHECKSUMS, offset, length, args=args)
        try:
            return wire.decode_checksums(reply.payload)
        except ProtocolError as e:
            raise ReplicaIOError(f"replica server {self.where}: {e}") from None

    async def scrub(self, offset: int = 0, length: int = 0) -> dict[str, Any]:
        """Verify the replica's blocks in [offset, offset + length) of every layer (length
        0: to the end) -> ``{"checked_blocks", "bad": [{"layer", "block", "offset"}]}``."""
        return (await self.call(Op.SCRUB, offset, length)).result()

    async def stats(self) -> dict[str, Any]:
        return (await self.call(Op.STATS)).result()

    async def expand(self, size: int) -> None:
        await self.call(Op.EXPAND, args={"size": size})

    async def repair(self, offset: int, data: Any) -> int:
        return (await self.call(Op.REPAIR, offset, len(data), data)).result()["repaired"]
