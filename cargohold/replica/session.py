"""One connection to the replica server: decode requests, fence, call the store, reply.

A session is a thin asyncio shell around the sans-I/O codec. It opens at most one replica
(OPEN with an epoch) and checks that epoch against the replica's on *every* data request,
so a connection opened by an old engine is refused as soon as a newer engine has opened the
replica (invariant 3). A broken frame closes this connection only; a bad request gets an
error reply; nothing a client sends can stop the server.

Over TLS every request that names what it acts on is authorized by the identity in the
peer's certificate (``security.policy``): HELLO and LIST (filtered to what the peer may
see), CREATE and DELETE, OPEN (an engine only of its own volume's replicas); the data ops
act on the replica the authorized OPEN opened. A refusal is an error reply (Unauthenticated,
status 1005; PermissionDenied, 13) and the connection stays usable. On the unix socket the
peer must run as the server's user or root (SO_PEERCRED), and an engine's HELLO scopes the
session to its volume (``local_peer``); otherwise plain connections (the unix socket,
``--plaintext``) are not checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from cargohold import __version__
from cargohold.constants import MAX_IO_BYTES
from cargohold.errors import (
    CargoholdError,
    Fenced,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotOpen,
    PermissionDenied,
    ProtocolError,
    ReplicaIOError,
    RequestError,
    Unsupported,
)
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.framing import coalesce
from cargohold.protocol.replica_wire import Op, Request
from cargohold.replica.grant_checks import GrantChecks
from cargohold.replica.local_peer import declared_engine, unix_peer
from cargohold.replica.maintenance import MaintenanceOps, str_arg
from cargohold.replica.snapshot_ops import SnapshotOps
from cargohold.replica.write_ops import WriteOps
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import lists_replica, replica_op_allowed
from cargohold.security.tls import Credentials, peer_identity, require
from cargohold.store.reader import host_identity

if TYPE_CHECKING:
    import collections

    from cargohold.replica.admission import Admission
    from cargohold.replica.registry import OpenReplica, Registry
    from cargohold.security.grants import ReadGrant
    from cargohold.settings import ReplicaServerSettings

log = logging.getLogger("cargohold.replica")

_VOLUME_OF = re.compile(r"^(.+)-r[0-9a-f]+$")  # the manager's replica names

Result = tuple[int, Any]  # (generation, payload bytes | list of buffers)


def _disk(store: Any) -> dict[str, Any] | None:
    """Where a file-backed replica lives, with what tells its directory apart from every
    other (``store.reader.host_identity``): lets an engine on this host read it directly."""
    directory = getattr(store, "directory", None)
    if not directory:
        return None
    try:
        return {"path": os.path.abspath(directory), **host_identity(directory)}
    except OSError:
        return None


def error_payload(e: CargoholdError) -> bytes:
    detail = {k: v for k, v in e.detail.items() if isinstance(v, str | int | float | list | dict)}
    return wire.dump_json({"error": e.message, "type": type(e).__name__, "detail": detail})


class Host(Protocol):
    """What a session uses of the server that accepted its connection (``ReplicaServer``
    in ``replica/server.py``, which imports this module: not the other way round)."""

    settings: ReplicaServerSettings
    registry: Registry
    admission: Admission
    sessions: set[Session]
    counters: collections.Counter[str]
    cluster: str | None  # over TLS: the cluster peers must be of
    creds: Credentials | None  # over TLS: the CAs a read grant's signer must chain to


_ANY_ROLE = frozenset(Role)


def replica_volume(replica_id: str, labels: dict[str, str]) -> str | None:
    """The volume a replica belongs to: the ``volume`` its CREATE recorded in its metadata,
    else the manager's naming (``<volume>-r<hex>``); None when neither says."""
    volume = labels.get("volume")
    if volume:
        return volume
    m = _VOLUME_OF.match(replica_id)
    return m.group(1) if m else None


class Session(MaintenanceOps, SnapshotOps, GrantChecks, WriteOps, asyncio.BufferedProtocol):
    def __init__(self, server: Host) -> None:
        self.server = server
        self.decoder = wire.RequestDecoder()
        self.transport: asyncio.Transport | None = None
        self.rep: OpenReplica | None = None
        self.epoch = 0
        self.peer = "?"
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._warned_unnumbered = False  # logged once per connection, not per request
        # the first mutation of this session that failed: every later one is refused
        # until the next OPEN (write_ops.py, "A failed mutation stops the session's")
        self.failed: str | None = None
        # what admission (replica/admission.py) looks at
        self.address = "?"  # the peer's address without its port; "unix"
        self.trusted = False  # the node's own address or the unix socket
        self.started = self.last_active = 0.0  # time.monotonic()
        self.requests = 0
        self._silence: asyncio.TimerHandle | None = None
        # over TLS: requests are authorized by the identity in the peer's certificate
        self.guarded = False
        self.ident: Identity | None = None
        # the replica open on this connection was opened with a read grant (a clone's
        # engine reading another volume's snapshot): read-only, that snapshot only
        self.grant: ReadGrant | None = None

    # --- transport callbacks ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is no subclass of asyncio.Transport, but has its methods)
        transport = self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer or "unix")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
        sock = transport.get_extra_info("socket")
        kind = "tls" if transport.get_extra_info("ssl_object") is not None else "tcp"
        if sock is not None and sock.family == socket.AF_UNIX:
            kind = "unix"
            try:  # the kernel's word on who connected (local_peer.py)
                self.peer = unix_peer(sock)
            except PermissionDenied as e:
                self.server.counters["unix_refused"] += 1
                log.warning("refused a connection on the unix socket: %s", e)
                self._closed = True
                transport.abort()
                return
        admission = self.server.admission
        self.trusted = admission.is_trusted(self.address)
        self.started = self.last_active = time.monotonic()
        if not admission.admit(self):
            self._closed = True
            transport.abort()
            return
        self.server.counters[f"connections_{kind}"] += 1
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == "tls":
            self.guarded = True
            self.ident = peer_identity(transport)
        self.server.sessions.add(self)
        self._silence = asyncio.get_running_loop().call_later(
            self.server.settings.first_request_timeout, self._silent
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._silence is not None:
            self._silence.cancel()
        self.server.admission.forget(self)
        self.server.sessions.discard(self)
        if self.rep is not None:
            self.rep.sessions -= 1
            self.rep = None

    def pause_writing(self) -> None:  # the peer reads slower than we answer
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    # received with readinto (a large write lands in a buffer of its own: no copy, no join)
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._received(lambda: self.decoder.buffer_updated(nbytes))

    def data_received(self, data: bytes) -> None:  # the same, for callers that have bytes
        self._received(lambda: self.decoder.feed(data))

    # --- admission (replica/admission.py) ---------------------------------------------------
    def evictable(self) -> bool:
        """Nothing in flight, and no replica open at its current epoch: not a live engine's
        session (one a newer engine fenced, or an OPEN at epoch 0, serves no one)."""
        if self._tasks:
            return False
        rep = self.rep
        return rep is None or rep.deleted or self.epoch < rep.store.epoch

    def evict(self, why: str) -> None:
        log.info("closing connection from %s: %s", self.peer, why)
        if self.transport is not None:
            self.transport.abort()

    def _silent(self) -> None:
        self._silence = None
        if not self.requests and self.transport is not None:
            self.server.counters["silent_closed"] += 1
            log.info(
                "closing connection from %s: no request in %g s",
                self.peer,
                self.server.settings.first_request_timeout,
            )
            self.transport.abort()

    def _received(self, decode: Callable[[], list[Request]]) -> None:
        self.last_active = time.monotonic()
        try:
            requests = decode()
        except ProtocolError as e:
            self.server.counters["protocol_errors"] += 1
            log.warning("closing connection from %s: %s", self.peer, e)
            assert self.transport is not None
            self.transport.abort()
            return
        out: list[Any] = []
        self.requests += len(requests)
        for req in requests:
            self._handle(req, out)
        if out and not self._closed:
            assert self.transport is not None
            # over TLS the replies of this chunk go out as few records as fit (coalesce)
            self.transport.writelines(coalesce(out) if self.guarded else out)

    # --- dispatch -------------------------------------------------------------------------
    def _handle(self, req: Request, out: list[Any]) -> None:
        self.server.counters["requests"] += 1
        if self.rep is not None:
            self.rep.disk.ops += 1
        handler = _HANDLERS.get(req.op)
        try:
            if handler is None:
                raise Unsupported(f"unknown op {req.op}")
            if self.grant is not None:
                rep = self.rep
                self._check_grant(req, replica_volume(rep.id, rep.store.labels) if rep else None)
            res = handler(self, req)
            if type(res) is not tuple and asyncio.iscoroutine(res):  # most answer at once
                task = asyncio.get_running_loop().create_task(self._finish(req, res))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            gen, payload = res
            if isinstance(payload, list):
                out += wire.encode_reply_parts(req.id, gen, payload)
            else:
                out += wire.encode_reply(req.id, wire.STATUS_OK, gen, payload)
        except Exception as e:
            self._mutation_failed(req, e)
            out += self._error_reply(req, e)

    async def _finish(self, req: Request, coro: Any) -> None:
        try:
            gen, payload = await coro
            if isinstance(payload, list):
                msg = wire.encode_reply_parts(req.id, gen, payload)
            else:
                msg = wire.encode_reply(req.id, wire.STATUS_OK, gen, payload)
        except Exception as e:
            self._mutation_failed(req, e)
            msg = self._error_reply(req, e)
        if not self._closed and self.transport is not None:
            self.transport.writelines(coalesce(msg) if self.guarded else msg)

    def _error_reply(self, req: Request, e: Exception) -> list[Any]:
        status, payload = self._error(req, e)
        gen = self.rep.store.generation if self.rep is not None and not self.rep.deleted else 0
        return wire.encode_reply(req.id, status, gen, payload)

    def _error(self, req: Request, e: Exception) -> tuple[int, bytes]:
        """An exception as the status and error body of a reply (counted; logged when it
        is not a request error)."""
        err: CargoholdError
        status: int
        if isinstance(e, NoSpace) and self.rep is not None:
            # which disk, on which node: what an operator needs (the manager shows it)
            disk = os.path.dirname(os.path.dirname(self.rep.path))
            where = f"disk {disk} of node {self.server.settings.node}"
            msg = e.message.replace("the replica's disk", where)
            if msg == e.message:
                msg = f"{e.message} ({where})"
            err, status = NoSpace(msg, **e.detail), e.status
        elif isinstance(e, RequestError):
            err = e
            status = e.status
        elif isinstance(e, CargoholdError):
            err, status = e, ReplicaIOError.status
        else:
            log.exception("op %s from %s failed", req.op, self.peer)
            err, status = ReplicaIOError(f"internal error: {type(e).__name__}: {e}"), 5
        self.server.counters["errors"] += 1
        if self.rep is not None:
            self.rep.disk.errors += 1
        return status, error_payload(err)

    def _authorize(self, op: str, volume: str | None) -> Identity | None:
        """Over TLS: may the peer run ``op`` on a replica of ``volume``? Raises the refusal
        (counted, logged); -> the peer's identity (None on a plain connection that declared
        no scope)."""
        if not self.guarded and self.ident is None:
            return None
        try:
            ident = require(self.ident, _ANY_ROLE, self.server.cluster)
            if not replica_op_allowed(ident, op, volume):
                what = f" a replica of volume {volume}" if volume else ""
                raise PermissionDenied(f"{ident} may not {op}{what} on this replica server")
        except RequestError as e:  # Unauthenticated, PermissionDenied
            self.server.counters["refused"] += 1
            log.warning("refused %s from %s (%s): %s", op, self.peer, self.ident, e)
            raise
        return ident

    def _mutation(self, req: Request) -> OpenReplica:
        """``_replica`` for a mutation, which must carry the engine's number for it: the
        replica never numbers mutations itself, so a write that bypasses the engine cannot
        advance the replica's generation and make it look current (the store also refuses
        numbers not above the newest it has seen)."""
        rep = self._replica()
        self._refuse_after_failure(rep)
        self._numbered(rep, req.op, req.generation)
        return rep

    def _numbered(self, rep: OpenReplica, op: int, generation: int) -> None:
        """Refuse a mutation without the engine's generation (``_mutation``)."""
        if generation == 0:
            self.server.counters["unnumbered_mutations"] += 1
            if not self._warned_unnumbered:
                self._warned_unnumbered = True
                log.warning(
                    "replica %s: refusing %s without a generation from %s (epoch %d): "
                    "something writes around the volume's engine",
                    rep.id,
                    Op(op).name,
                    self.peer,
                    self.epoch,
                )
            raise InvalidArgument(
                f"replica {rep.id}: {Op(op).name} without a generation refused: mutations "
                f"must carry the engine's generation, above {rep.store.seen}"
            )

    def _replica(self) -> OpenReplica:
        rep = self.rep
        if rep is None:
            raise NotOpen("no replica is open on this connection (send OPEN first)")
        if rep.deleted:
            raise NotFound(f"replica {rep.id} was deleted")
        if self.epoch < rep.store.epoch:
            self.server.counters["fenced"] += 1
            raise Fenced(
                f"replica {rep.id}: this session's epoch {self.epoch} is older than "
                f"{rep.store.epoch}; a newer engine owns the replica",
                epoch=rep.store.epoch,
            )
        return rep

    # --- node-level ops ---------------------------------------------------------------
    def op_hello(self, req: Request) -> Result:
        args = req.args()
        if "engine" in args and not self.guarded and self.address == "unix":
            self.ident = declared_engine(args, self.ident, self.server.cluster)
        self._authorize("HELLO", None)
        newest = self.server.settings.wire_version
        supported = sorted(v for v in wire.VERSIONS_SUPPORTED if v <= newest)
        version = args.get("version", 1)
        if not isinstance(version, int) or version not in supported:
            raise Unsupported(f"protocol version {version} not supported (supported: {supported})")
        return 0, wire.dump_json(
            {
                "version": newest,
                "server": f"cargohold/{__version__}",
                "node": self.server.settings.node,
                "workers": self.server.settings.workers,
                # a failed mutation stops the session's (write_ops.py): what a writer may
                # send back to back without waiting (replica-wire.md, "Rules")
                "stop_on_failure": True,
            }
        )

    def op_create(self, req: Request) -> Result:
        args = req.args()
        self._authorize("CREATE", None)
        rep = self.server.registry.create(
            args.get("replica"),
            args.get("size"),
            args.get("disk"),
            args.get("cluster_id"),
            args.get("volume"),
        )
        return 0, wire.dump_json({"replica": rep.id, "path": rep.path, "size": rep.store.size})

    async def op_delete(self, req: Request) -> Result:
        self._authorize("DELETE", None)
        rid = req.args().get("replica")
        rep = self.server.registry.open.get(rid) if isinstance(rid, str) else None
        if rep is None:
            self.server.registry.delete(rid)
            return 0, b""
        async with rep.lock:  # not in the middle of a snapshot merge, scrub or expand
            await self._drain_flushes(rep)
            self.server.registry.delete(rid)
        return 0, b""

    def op_list(self, req: Request) -> Result:
        ident = self._authorize("LIST", None)
        items = self.server.registry.list()
        if ident is not None:  # only what the peer may see (a read grant: its volume too)
            grant = self._read_grant(req.args())
            items = [
                x
                for x in items
                if lists_replica(ident, x.get("volume") or replica_volume(x["id"], {}), grant)
            ]
        out: dict[str, Any] = {"replicas": items}
        if ident is None or ident.role in (Role.AGENT, Role.ADMIN):  # the node's own numbers
            out["server"] = {
                "counters": dict(self.server.counters),
                "disks": {d: st.as_dict() for d, st in self.server.registry.stats.items()},
            }
        return 0, wire.dump_json(out)

    def op_open(self, req: Request) -> Result:
        args = req.args()
        epoch = args.get("epoch", 0)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise InvalidArgument(f"epoch must be a non-negative integer, got {epoch!r}")
        jump = args.get("jump", False)
        if not isinstance(jump, bool):
            raise InvalidArgument(f"jump must be true or false, got {jump!r}")
        if self.guarded or self.ident is not None:  # no replica for a role that may not OPEN
            self._authorize("OPEN", self.ident.name if self.ident is not None else None)
        rep = self.server.registry.get(args.get("replica"))
        volume = replica_volume(rep.id, rep.store.labels)
        ident = self.ident
        grant = None
        if ident is not None and ident.role is Role.ENGINE and volume != ident.name:
            grant = self._read_grant(args)  # another volume's replica: only with a grant
        if grant is not None:
            assert ident is not None
            self._grant_open(ident, grant, rep, epoch, volume)
        else:
            self._authorize("OPEN", volume)
            # persisted before we answer; older epochs now fail; far newer ones are refused
            rep.store.accept_epoch(epoch, jump)
        self.grant = grant
        if self.rep is not None:
            self.rep.sessions -= 1
        self.rep, self.epoch = rep, epoch
        self.failed = None  # opened again: mutations are served again
        rep.sessions += 1
        return rep.store.generation, wire.dump_json(self._info(rep))

    def op_close(self, req: Request) -> Result:
        if self.rep is not None:
            self.rep.sessions -= 1
            self.rep = None
        self.failed = None
        return 0, b""

    def _info(self, rep: OpenReplica) -> dict[str, Any]:
        s = rep.store
        return {
            "replica": rep.id,
            "size": s.size,
            "generation": s.generation,
            "seen": s.seen,
            "power_loss": s.power_loss,  # recovered from a machine crash, not marked current
            "epoch": s.epoch,
            "history": s.history,
            "snapshots": [x.name for x in s.snapshot_list()],
            "pid": os.getpid(),
            "disk": _disk(s),
        }

    # --- data ops ---------------------------------------------------------------------
    def op_read(self, req: Request) -> Result:
        rep = self._replica()
        if req.length > MAX_IO_BYTES:
            raise InvalidArgument(f"read of {req.length} bytes exceeds {MAX_IO_BYTES}")
        snapshot = str_arg(req.args(), "snapshot") if req.payload else None
        data = rep.store.read(req.offset, req.length, snapshot)
        return rep.store.generation, data

    def op_info(self, req: Request) -> Result:
        rep = self._replica()
        return rep.store.generation, wire.dump_json(self._info(rep))


_HANDLERS: dict[int, Callable[[Session, Request], Any]] = {
    Op.HELLO: Session.op_hello,
    Op.CREATE: Session.op_create,
    Op.DELETE: Session.op_delete,
    Op.LIST: Session.op_list,
    Op.OPEN: Session.op_open,
    Op.CLOSE: Session.op_close,
    Op.READ: Session.op_read,
    Op.WRITE: Session.op_write,
    Op.FLUSH: Session.op_flush,
    Op.TRIM: Session.op_trim,
    Op.WRITE_ZEROES: Session.op_write_zeroes,
    Op.WRITE_BATCH: Session.op_write_batch,
    Op.SNAPSHOT_CREATE: Session.op_snapshot_create,
    Op.SNAPSHOT_LIST: Session.op_snapshot_list,
    Op.SNAPSHOT_DELETE: Session.op_snapshot_delete,
    Op.SNAPSHOT_REVERT: Session.op_snapshot_revert,
    Op.INFO: Session.op_info,
    Op.CHANGED: Session.op_changed,
    Op.EXPORT: Session.op_export,
    Op.IMPORT: Session.op_import,
    Op.SCRUB: Session.op_scrub,
    Op.STATS: Session.op_stats,
    Op.EXPAND: Session.op_expand,
    Op.EXTENTS: Session.op_extents,
    Op.REPAIR: Session.op_repair,
    Op.MARK_CURRENT: Session.op_mark_current,
    Op.CHECKSUMS: Session.op_checksums,
}
