"""Several processes for one replica server, when one core is not enough.

The parent process owns the listening sockets. For each connection it *peeks* at the first
frames without consuming them: HELLO and LIST it answers itself; the first frame that
names a replica (OPEN, CREATE, DELETE) decides which worker owns the connection — replicas
are sharded by ``crc32c(replica id) % workers`` — and the parent passes the socket itself
to that worker over a unix socketpair (SCM_RIGHTS). Nothing has been read past that frame,
so the worker's session starts on a clean stream. One replica is always served by one
process: its store has exactly one owner. Workers that die are restarted (their replicas
recover as after any crash).

A connection stays with the worker it was handed to: OPEN of a replica another worker owns
answers ``Busy`` ("open a new connection"). Engines use one connection per replica.

Over TLS (``settings.tls_dir``) nothing of a request can be read before the handshake, so
the parent routes by the one thing a TLS client sends in clear: the server name (SNI) of
its ClientHello, peeked at without consuming it (``protocol.tls_hello``). A client that
will OPEN, CREATE or DELETE a replica sends its routing name (``r<crc32c>.replica.cargohold``)
and is handed to the owner; a connection without one (HELLO, LIST: the agent, tools) is
handed to the workers in turn. The worker then does the handshake and serves the whole
connection, with the same authorization as a single process. The parent never holds a key
nor runs TLS: it stays a router of sockets (docs/formats/replica-wire.md, "TLS and routing").

This module is the parent's logic (``Dispatcher``) and the sharding rule (``owner``); the
processes themselves (the listeners, forking, event loops, signals) are wired up in
``replica/daemon.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import crc32c

from cargohold.errors import CargoholdError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from cargohold.protocol.tls_hello import MAX_HELLO, Incomplete, client_hello_sni, routing_shard
from cargohold.replica.admission import (
    NO_VICTIM_RECHECK,
    Admission,
    connection_limit,
)
from cargohold.replica.registry import Registry
from cargohold.settings import ReplicaServerSettings

log = logging.getLogger("cargohold.replica")

_ROUTED = {Op.OPEN, Op.CREATE, Op.DELETE}
_LOCAL = {Op.HELLO, Op.LIST}
_MAX_PEEK = 64 * 1024
READY = b"ready"  # a worker to the parent, on its channel: its start-up recovery is done


def _waiting(conn: socket.socket) -> bool:
    """Bytes from the peer wait to be looked at (it is talking: not one to drop)."""
    try:
        return bool(conn.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    except OSError:
        return False


def owner(replica_id: str, workers: int) -> int:
    return crc32c.crc32c(replica_id.encode()) % workers


class Dispatcher:
    """The parent process's part: accepts connections, answers HELLO and LIST, hands every
    other connection to the worker that owns its replica, restarts workers that die.

    ``run_worker(index, channel)`` is what a forked worker runs (``replica/daemon.py``): it
    serves the connections that arrive on ``channel`` and never returns."""

    def __init__(
        self,
        settings: ReplicaServerSettings,
        run_worker: Callable[[int, socket.socket], None],
    ) -> None:
        self.settings = settings
        self.run_worker = run_worker
        self.registry = Registry(settings.disks, write_chunk=settings.store_write_chunk)
        self.channels: list[socket.socket] = []
        self.pids: list[int] = []
        self.loop = asyncio.get_running_loop()
        self.deadlines: dict[int, float] = {}  # fd -> when a first frame must be complete
        # connections not handed to a worker yet: at most this many (each worker has its
        # own admission, replica/admission.py, for the connections it serves)
        # (the last ``reserved_connections`` places only for the node's own addresses)
        self.max_pending = connection_limit(settings)
        adm = Admission(settings)
        self.trusted, self.reserve = adm.trusted, adm.reserve
        self.pending: dict[int, socket.socket] = {}  # fd -> connection, beside deadlines
        # pending connections not from the node's own addresses, oldest first: fd -> address
        self.others: dict[int, str] = {}
        self.other_count: dict[str, int] = {}  # address -> its pending connections
        self.refused = 0
        self.tls = bool(settings.tls_dir)  # TCP connections speak TLS: route by SNI
        self._turn = 0  # the worker the next connection without a routing name goes to
        self._no_room: tuple[float, int] = (0.0, 0)  # no victim till then, from that share
        # per worker: has it said its start-up recovery is done (READY on its channel)?
        self.ready: list[bool] = []

    def spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # child
            parent_end.close()
            for ch in self.channels:
                with contextlib.suppress(OSError):
                    ch.close()
            signal.set_wakeup_fd(-1)
            self.run_worker(index, child_end)
            os._exit(0)  # run_worker does not return; never run the parent's code here
        child_end.close()
        if index < len(self.channels):
            self.channels[index].close()
            self.channels[index], self.pids[index] = parent_end, pid
            self.ready[index] = False
        else:
            self.channels.append(parent_end)
            self.pids.append(pid)
            self.ready.append(False)
        log.info("worker %d started (pid %d)", index, pid)

    def reap(self) -> None:
        """Restart workers that died."""
        for i, pid in enumerate(self.pids):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                log.warning("worker %d (pid %d) exited with status %d; restarting", i, pid, status)
                self.spawn(i)

    def all_ready(self) -> bool:
        """Whether every worker has said (READY on its channel) that it recovered its
        replicas after a machine crash: till then the parent does not listen, as a single
        process does not (``replica/daemon.py``). A worker that dies first is restarted by
        ``reap`` and recovers again; its new channel is heard instead."""
        for i, ch in enumerate(self.channels):
            if self.ready[i]:
                continue
            try:
                msg = ch.recv(len(READY), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                msg = b""
            self.ready[i] = msg == READY
        return all(self.ready)

    # peeking at a new connection --------------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        inet = conn.family in (socket.AF_INET, socket.AF_INET6)
        try:
            addr = str(conn.getpeername()[0]) if inet else "unix"
        except OSError:  # already gone
            conn.close()
            return
        own = addr in self.trusted
        if not own and len(self.others) >= self.max_pending - self.reserve:
            self._make_room(self.other_count.get(addr, 0))
        if len(self.pending) >= self.max_pending or (
            not own and len(self.others) >= self.max_pending - self.reserve
        ):
            self.refused += 1
            if self.refused % 1000 == 1:
                log.warning(
                    "refusing connections: %d wait for their first request (%d refused)",
                    len(self.deadlines),
                    self.refused,
                )
            conn.close()
            return
        conn.setblocking(False)
        if inet:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        now = time.monotonic()
        self.deadlines[conn.fileno()] = now + self.settings.first_request_timeout
        self.pending[conn.fileno()] = conn
        if not own:
            self.others[conn.fileno()] = addr
            self.other_count[addr] = self.other_count.get(addr, 0) + 1
        self.loop.add_reader(conn.fileno(), self.peek, conn)

    def _make_room(self, mine: int) -> None:
        """At the limit for other addresses, for a newcomer whose address has ``mine``
        connections waiting: drop the oldest waiting connection of an address that has at
        least two more (fair shares: a flood from many addresses cannot keep another
        node's engine out), unless it is talking (bytes wait). A connection waits here only
        until a request that names a replica, which an engine sends at once: the ones that
        linger are a flood's. After a search found none, none for NO_VICTIM_RECHECK (for
        this share and larger ones): a flood must not cost a search per connection."""
        now = time.monotonic()
        until, share = self._no_room
        if until > now and mine >= share:
            return
        for fd, addr in self.others.items():
            conn = self.pending.get(fd)
            if conn is not None and self.other_count.get(addr, 0) > mine + 1:
                if not _waiting(conn):
                    self._drop(conn)
                    return
        self._no_room = (now + NO_VICTIM_RECHECK, mine)

    def expire(self) -> None:
        """Close connections that sent nothing, or no complete frame, by their deadline (a
        silent one is never readable, so ``peek`` alone would keep it for ever)."""
        now = time.monotonic()
        for fd, deadline in list(self.deadlines.items()):
            conn = self.pending.get(fd)
            if conn is not None and now > deadline:
                self._drop(conn)

    def _later(self, conn: socket.socket) -> None:
        """Part of a frame is here, the rest is not. Peeking does not consume, so the socket
        stays readable: look again shortly instead of spinning; give up at the deadline."""
        fd = conn.fileno()
        self.loop.remove_reader(fd)
        if time.monotonic() > self.deadlines.get(fd, 0):
            log.warning("dropping a connection that sent no complete first frame in time")
            self._drop(conn)
            return
        self.loop.call_later(0.005, self._rearm, conn)

    def _forget_other(self, fd: int) -> None:
        addr = self.others.pop(fd, None)
        if addr is not None:
            left = self.other_count.get(addr, 1) - 1
            if left > 0:
                self.other_count[addr] = left
            else:
                self.other_count.pop(addr, None)

    def _rearm(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        if fd >= 0 and self.pending.get(fd) is conn:  # not dropped meanwhile
            self.loop.add_reader(fd, self.peek, conn)

    def _drop(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        if fd >= 0:
            self.deadlines.pop(fd, None)
            self.pending.pop(fd, None)
            self._forget_other(fd)
            self.loop.remove_reader(fd)
        conn.close()

    def peek_hello(self, conn: socket.socket) -> None:
        """Over TLS: hand the connection to the worker its ClientHello's server name routes
        to (the next worker in turn when it names no replica), once the whole ClientHello
        is here; nothing is consumed, the worker does the handshake."""
        try:
            head = conn.recv(MAX_HELLO, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not head:
            self._drop(conn)
            return
        try:
            name = client_hello_sni(head)
        except Incomplete:
            self._later(conn)
            return
        except CargoholdError as e:
            log.info("dropping a connection that does not start with a TLS ClientHello: %s", e)
            self._drop(conn)
            return
        shard = routing_shard(name)
        if shard is None:
            index, self._turn = self._turn, (self._turn + 1) % self.settings.workers
        else:
            index = shard % self.settings.workers
        self.hand_over(conn, index)

    def peek(self, conn: socket.socket) -> None:
        if self.tls and conn.family != socket.AF_UNIX:
            self.peek_hello(conn)
            return
        try:
            head = conn.recv(wire.REQUEST.size, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not head:
            self._drop(conn)
            return
        if len(head) < wire.REQUEST.size:
            self._later(conn)  # wait for the rest of the header
            return
        magic, op, _, rid, _, _, plen, _ = wire.REQUEST.unpack(head)
        if magic != wire.REQUEST_MAGIC or (plen > _MAX_PEEK and op in (_ROUTED | _LOCAL)):
            self._drop(conn)
            return
        if op not in _ROUTED and op not in _LOCAL:
            self.hand_over(conn, 0)  # worker 0 answers whatever this is
            return
        total = wire.REQUEST.size + plen
        frame = conn.recv(total, socket.MSG_PEEK)
        if len(frame) < total:
            self._later(conn)  # payload not all here yet
            return
        payload = frame[wire.REQUEST.size :]
        try:
            args = json.loads(payload) if payload else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            args = {}
        # an engine's HELLO on the unix socket scopes its connection (local_peer.py): the
        # worker that owns the replica it names must see it, so it is handed on unread
        if op in _LOCAL and not (op == Op.HELLO and "engine" in args):
            conn.recv(total)  # consume it: this process answers
            reply = self.answer_locally(op, rid)
            try:
                # a client that does not read its answers must not stall this process
                conn.settimeout(1.0)
                conn.sendall(reply)
                conn.setblocking(False)
            except OSError:
                self._drop(conn)
                return
            now = time.monotonic()
            self.deadlines[conn.fileno()] = now + self.settings.first_request_timeout
            return
        replica = args.get("replica")
        index = owner(replica, self.settings.workers) if isinstance(replica, str) else 0
        self.hand_over(conn, index)

    def answer_locally(self, op: int, rid: int) -> bytes:
        if op == Op.HELLO:
            from cargohold import __version__

            body = {
                "version": self.settings.wire_version,
                "server": f"cargohold/{__version__}",
                "node": self.settings.node,
                "workers": self.settings.workers,
            }
        else:
            body = {"replicas": self.registry.list()}
        return b"".join(bytes(b) for b in wire.encode_reply(rid, 0, 0, wire.dump_json(body)))

    def hand_over(self, conn: socket.socket, index: int) -> None:
        self.deadlines.pop(conn.fileno(), None)
        self.pending.pop(conn.fileno(), None)
        self._forget_other(conn.fileno())
        self.loop.remove_reader(conn.fileno())
        try:
            socket.send_fds(self.channels[index], [b"c"], [conn.fileno()])
        except OSError as e:
            log.warning("could not hand a connection to worker %d: %s", index, e)
        conn.close()


__all__ = ["READY", "Dispatcher", "owner"]
