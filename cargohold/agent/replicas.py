"""The node's replicas: its replica server (started, adopted, restarted after an exit or
with new disks — all through ``_serve``), what it serves (LIST, and a probe of replicas
nobody has open so LIST shows their generation), replica create and delete converged to
the manager's assignments, and the node's disks: their cluster stamps (whether to act for a
manager at all: cargohold/agent/identity.py) and their trash. Used by
``cargohold.agent.agent`` every heartbeat (``check``, ``sweep_trash``, ``acts_for``,
``serve_added_disks``, ``converge``), at start (``adopt``, ``start``) and at shutdown
(``stop``).

Nothing is deleted on absence of evidence: a delete assignment for a replica of another
cluster (by its own label, or its disk's stamp) is refused and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from cargohold.agent import disk_stamp
from cargohold.agent.credentials import NodeCredentials
from cargohold.agent.identity import judge
from cargohold.agent.processes import (
    REPLICA_ID,
    ReplicaServerProcess,
    free_port,
    hostport,
    port_is_free,
)
from cargohold.control.disk_roots import check_disk_path
from cargohold.control.model import (
    Assignments,
    DiskCheck,
    DiskReport,
    ReplicaAssignment,
    ReplicaReport,
)
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    Fenced,
    FormatError,
    InvalidArgument,
    NotFound,
)
from cargohold.replica.client import ReplicaClient
from cargohold.replica.trash import sweep as sweep_trash

log = logging.getLogger("cargohold.agent")

VOLUME_OF = re.compile(r"^(.+)-r[0-9a-f]+$")  # <volume>-r<hex>
TRASH_SWEEP_EVERY = 60.0  # seconds between looks for trash older than trash_grace (at most)


def _history(value: Any) -> list[list[int]]:
    """A replica's epoch history as LIST gives it, or [] when it is not well formed."""
    try:
        return [[int(a), int(b)] for a, b in value or []]
    except (TypeError, ValueError):
        return []


def volume_of(replica_id: str) -> str:
    m = VOLUME_OF.match(replica_id)
    return m.group(1) if m else ""


class Replicas:
    """The replica server of node ``node`` on ``address`` and the replicas it serves from
    ``disks`` (set by the agent before ``start``). ``save`` persists agent.json; ``news`` is
    set when something the manager waits for happened (a replica made or deleted, a
    refusal)."""

    def __init__(
        self,
        node: str,
        address: str,
        dir: str,
        trash_grace: float,
        news: asyncio.Event,
        save: Callable[[], None],
    ) -> None:
        self.node = node
        self.address = address
        self.dir = dir
        self.trash_grace = trash_grace
        self.disks: list[DiskReport] = []
        self.server: ReplicaServerProcess | None = None
        self.port = 0
        self.reports: list[ReplicaReport] = []  # the last LIST that worked
        self.server_stats: dict[str, Any] | None = None  # LIST's "server" part (metrics)
        self.refusal = ""  # what this agent refuses to do for the manager, reported
        self._news = news
        self._save = save
        self.disk_roots: list[str] = []  # where API-added disks may be (the agent sets it)
        self._refused_disks: set[str] = set()  # logged once
        self.disk_checks: dict[str, DiskCheck] = {}  # disk path -> what was found (reported)
        self._probed: set[str] = set()  # replicas opened once to learn generation and epoch
        self._errors: dict[str, str] = {}  # replica id -> last error logged
        self._list_client: tuple[int | None, ReplicaClient] | None = None  # (server pid, it)
        self._stamps: dict[str, str | None] = {}  # disk path -> its cluster id (None: none)
        self._broken_stamps: dict[str, str] = {}  # disk path -> why its stamp is unreadable
        self._swept_at = 0.0  # monotonic time of the last trash sweep
        self.creds: NodeCredentials | None = None  # set by the agent; None: plaintext
        # the server's unix socket, for this node's engines (set by the agent; None: none)
        self.unix: str | None = None

    # --- the replica server --------------------------------------------------------------
    def _process(self, port: int, unix: bool = True) -> ReplicaServerProcess:
        """The one place the node's replica server is built: this node, its address,
        ``port``, every disk it serves now, and its unix socket (``unix``: when it has one;
        False: as a version before the local replica link ran it, to adopt that one)."""
        creds = self.creds
        return ReplicaServerProcess(
            self.node,
            self.address,
            port,
            [d.path for d in self.disks],
            os.path.join(self.dir, "logs", "replica-server.log"),
            creds.replica_server_dir() if creds else None,
            creds.client() if creds else None,
            self.unix if unix else None,
        )

    async def _serve(self) -> None:
        """Start the replica server on ``port`` with the current disks (again, after an exit
        with the same ones: its back-off carries on) and record it in agent.json. The one
        place it is started; raises CargoholdError with its last words if it does not
        answer."""
        rs = self.server
        if rs is None or rs.argv != self._process(self.port).argv:  # first, or new disks
            rs = self.server = self._process(self.port)
        await rs.start()
        self._save()

    async def adopt(self, state: dict[str, Any], wanted_port: int | None) -> int | None:
        """Take over the replica server an earlier agent left running (agent.json's
        ``children``), if it runs exactly these arguments and answers LIST. -> its PID."""
        kids = state.get("children")
        rec = (kids.get("replica_server") or {}) if isinstance(kids, dict) else {}
        port = int(state.get("replica_port") or 0)
        if not port or (wanted_port and wanted_port != port):
            return None
        rs = self._process(port)
        pid = rec.get("pid") if isinstance(rec, dict) else None
        if isinstance(pid, int) and await rs.adopt(pid):
            self.server, self.port = rs, port
            return pid
        # an upgrade: the server an agent before the local replica link started has no
        # unix socket; it keeps serving (engines use TLS to it) until it is next restarted
        old = self._process(port, unix=False)
        if isinstance(pid, int) and self.unix and await old.adopt(pid):
            log.info("adopted a replica server without a unix socket: engines use TLS to it")
            self.server, self.port = old, port
            return pid
        return None

    async def start(self, wanted_port: int | None, last_port: int) -> None:
        """Start the replica server on ``wanted_port`` (--replica-port), else the port of the
        last run when it is free, else any, and wait until it answers."""
        port = wanted_port or last_port or 0
        if not port or not port_is_free(self.address, port):
            if port and wanted_port:
                log.warning("replica port %d looks taken; trying it anyway", port)
            elif port:
                log.warning("replica port %d of the last run is taken: choosing another", port)
                port = 0
        self.port = port or free_port(self.address)
        await self._serve()
        log.info(
            "replica server of node %s serves %s on %s (pid %s)",
            self.node,
            ", ".join(f"{d.name}={d.path}" for d in self.disks),
            hostport(self.address, self.port),
            self.server.pid if self.server else None,
        )

    def _may_serve(self, d: DiskReport) -> bool:
        """The agent's own checks of a disk the manager asks for, noted in ``disk_checks``
        (reported: ``disk add`` waits for them): under its roots, its node directory, or
        beside the disks it was started with (control/disk_roots.py), and an existing
        directory — never created here, or replicas would land on the root filesystem
        (a warning when it is not a mount point)."""
        roots = [*self.disk_roots, self.dir]
        try:
            check_disk_path(d.path, roots)
            check = examine_disk(d)
        except InvalidArgument as e:
            check = DiskCheck(name=d.name, path=d.path, error=str(e))
        self.disk_checks[d.path] = check
        if check.error and d.path not in self._refused_disks:
            self._refused_disks.add(d.path)
            log.error("refusing disk %s the manager asks for: %s", d.name, check.error)
        elif not check.error:
            self._refused_disks.discard(d.path)
        return not check.error

    async def serve_added_disks(
        self, wanted: list[DiskReport], record: Callable[[list[DiskReport]], None]
    ) -> None:
        """A disk added through the manager's API (``cargohold disk add``): check its
        directory (``_may_serve``: it must exist) and restart the replica server on the
        same port with it. Engines see their replicas on this node drop for a moment and
        re-add them (a delta rebuild). A disk removed through the API (``cargohold disk
        remove``: empty by then) is dropped the same way. ``record(disks)`` notes the new
        list of disks for agent.json before it is saved. A refused path is looked at again
        every heartbeat (made or mounted later, it is served then); nothing is created."""
        have = {x.path for x in self.disks}
        for d in self.disks:
            if d.path not in self.disk_checks:
                self.disk_checks[d.path] = examine_disk(d)
        new = [d for d in wanted if d.path not in have and self._may_serve(d)]
        wanted_paths = {d.path for d in wanted} | have
        for path in [p for p in self.disk_checks if p not in wanted_paths]:
            del self.disk_checks[path]
        gone = [d for d in self.disks if wanted and d.path not in {d.path for d in wanted}]
        if (not new and not gone) or self.server is None:
            return
        self.disks = [d for d in self.disks if d not in gone] + new
        self.read_stamps()
        record(self.disks)
        log.info(
            "serving disk(s) %s%s: restarting the replica server on port %d",
            ", ".join(f"{d.name}={d.path}" for d in new) or "-",
            f", no longer {', '.join(d.name for d in gone)}" if gone else "",
            self.port,
        )
        await self.server.stop()
        await self._serve()

    async def stop(self) -> None:
        await self._drop_list_client()
        if self.server is not None:
            await self.server.stop()
            log.info("stopped the replica server")

    # --- what it serves ------------------------------------------------------------------
    async def check(self) -> set[str] | None:
        """Restart the replica server if it died; LIST its replicas into ``reports``.
        -> the ids on disk, or None when the server could not be asked."""
        rs = self.server
        assert rs is not None, "start() first"
        why = rs.exited()
        if why:
            rs.backoff.failed()
            self._probed.clear()
            log.warning("%s; restarting it on port %d", why, rs.port)
        if not rs.alive:
            if not rs.backoff.due:
                return None
            try:
                await self._serve()
            except CargoholdError as e:
                log.error("%s (next try in %.1f s)", e, rs.backoff.failed())
                return None
            log.info("restarted the replica server (pid %s)", rs.pid)
        try:
            items = await self._list()
            # a replica gone from the list (deleted, moved away) is probed again if it comes
            # back (moved back from the trash): its generation is what an orphan needs
            self._probed &= {x["id"] for x in items}
            unknown = [
                x["id"] for x in items if "generation" not in x and x["id"] not in self._probed
            ]
            if unknown:
                await asyncio.gather(*(self._probe(rid) for rid in unknown))
                items = await self._list()
        except (CargoholdError, OSError, TimeoutError) as e:
            log.warning("cannot list the replicas on this node: %s", e)
            self.server_stats = None
            return None
        self.reports = [
            ReplicaReport(
                id=x["id"],
                volume=volume_of(x["id"]),
                disk_path=str(x.get("disk", "")),
                size_bytes=int(x.get("size", 0) or 0),
                generation=int(x.get("generation", 0) or 0),
                epoch=int(x.get("epoch", 0) or 0),
                seen=int(x.get("seen", 0) or 0),
                history=_history(x.get("history")),
                snapshots=[str(n) for n in x.get("snapshots") or [] if isinstance(n, str)],
                cluster_id=str(x.get("cluster_id") or ""),
                disk_cluster_id=self._stamps.get(os.path.abspath(str(x.get("disk", "")))) or "",
            )
            for x in items
        ]
        return {x["id"] for x in items}

    async def _list(self) -> list[dict[str, Any]]:
        """LIST over one connection kept for it (a new one after the replica server was
        restarted, or when the kept one fails once)."""
        rs = self.server
        assert rs is not None
        for attempt in (1, 2):
            kept = self._list_client
            if kept is None or kept[0] != rs.pid:
                await self._drop_list_client()
                kept = self._list_client = (rs.pid, await rs.client())
            try:
                got = await asyncio.wait_for(kept[1].listing(), 5.0)
                server = got.get("server")
                self.server_stats = server if isinstance(server, dict) else None
                return list(got["replicas"])
            except (CargoholdError, OSError, TimeoutError):
                await self._drop_list_client()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _drop_list_client(self) -> None:
        kept, self._list_client = self._list_client, None
        if kept is not None:
            with contextlib.suppress(CargoholdError, OSError):
                await kept[1].close()

    async def _probe(self, rid: str) -> None:
        """Open a replica nobody has open, so LIST shows its generation and epoch. Epoch 0
        never moves its fence; a replica owned by an engine says Fenced, and is open anyway."""
        assert self.server is not None
        self._probed.add(rid)
        try:
            c = await self.server.client(replica=rid)
            try:
                await asyncio.wait_for(c.open(rid, 0), 5.0)
            finally:
                await c.close()
        except Fenced:
            pass
        except (CargoholdError, TimeoutError) as e:
            log.warning("cannot open replica %s to read its generation: %s", rid, e)

    # --- create and delete ---------------------------------------------------------------
    async def converge(
        self, wanted: list[ReplicaAssignment], on_disk: set[str], cluster_id: str = ""
    ) -> None:
        listed = {r.id: r for r in self.reports}
        for ra in wanted:
            if ra.delete and ra.id in on_disk:
                rr = listed.get(ra.id)
                theirs = (rr.cluster_id or rr.disk_cluster_id) if rr else ""
                if theirs != cluster_id:  # another cluster's replica: never
                    why = (
                        f"replica {ra.id} belongs to cluster {theirs or '-'}, the manager "
                        f"to {cluster_id or '-'}: not deleting it"
                    )
                    if self._errors.get(ra.id) != why:
                        self._errors[ra.id] = why
                        log.error("%s", why)
                    continue
                await self._call(ra, "delete")
            elif not ra.delete and ra.id not in on_disk:
                await self._call(ra, "create", cluster_id)

    async def _call(self, ra: ReplicaAssignment, what: str, cluster_id: str = "") -> None:
        assert self.server is not None
        listed = next((r.disk_path for r in self.reports if r.id == ra.id), "")
        disk = self._disk_name(ra.disk_path or listed)
        try:
            if not REPLICA_ID.match(ra.id):
                raise InvalidArgument(f"bad replica id {ra.id!r}")
            c = await self.server.client(replica=ra.id)
            try:
                if what == "create":
                    out = await c.create(
                        ra.id, ra.size_bytes, ra.disk_path or None, cluster_id or None, ra.volume
                    )
                    where = os.path.dirname(os.path.dirname(str(out.get("path", ""))))
                    disk = self._disk_name(where) if where else disk
                    log.info("replica %s created on %s (%d bytes)", ra.id, disk, ra.size_bytes)
                    self._news.set()
                else:
                    await c.delete(ra.id)
                    log.info("replica %s deleted from %s (moved to its trash)", ra.id, disk)
                    self._news.set()
            finally:
                await c.close()
            self._errors.pop(ra.id, None)
        except (AlreadyExists, NotFound):
            pass  # done already (a LIST raced us)
        except CargoholdError as e:
            if self._errors.get(ra.id) != str(e):  # say it once, not every heartbeat
                self._errors[ra.id] = str(e)
                log.error("cannot %s replica %s on %s: %s", what, ra.id, disk, e)

    def _disk_name(self, path: str) -> str:
        if not path:
            return "a disk of the replica server's choice"
        for d in self.disks:
            if os.path.abspath(path) == d.path:
                return d.name
        return path

    # --- cluster identity and the trash ---------------------------------------------------
    def read_stamps(self) -> None:
        for d in self.disks:
            try:
                st = disk_stamp.read(d.path)
            except (FormatError, OSError) as e:
                self._broken_stamps[d.path] = str(e)
                continue
            self._broken_stamps.pop(d.path, None)
            self._stamps[d.path] = st.cluster_id if st else None

    def acts_for(self, a: Assignments) -> bool:
        """Whether to act for the manager that sent ``a`` (agent/identity.py); stamps the
        disks it may. A refusal is logged once, and reported in every heartbeat."""
        assigned = {r.id for r in a.replicas}
        verdict = judge(a.cluster_id, self._stamps, self._broken_stamps, self.reports, assigned)
        if verdict.refusal:
            if verdict.refusal != self.refusal:
                log.error("node %s: %s", self.node, verdict.refusal)
                self.refusal = verdict.refusal
                self._news.set()  # tell the manager now
            return False
        if self.refusal:
            log.warning("node %s acts for the manager again (cluster %s)", self.node, a.cluster_id)
            self.refusal = ""
            self._news.set()
        for path in verdict.stamp:
            try:
                disk_stamp.write(path, a.cluster_id, self.node)
            except OSError as e:
                log.error("cannot stamp disk %s with cluster %s: %s", path, a.cluster_id, e)
                continue
            self._stamps[path] = a.cluster_id
            log.info("disk %s stamped: cluster %s", path, a.cluster_id)
        return True

    async def sweep_trash(self) -> None:
        t = time.monotonic()
        every = min(TRASH_SWEEP_EVERY, max(1.0, self.trash_grace / 4))
        if t - self._swept_at < every:
            return
        self._swept_at = t
        paths = [d.path for d in self.disks]
        try:
            await asyncio.to_thread(sweep_trash, paths, self.trash_grace)
        except OSError as e:
            log.warning("cannot sweep the trash: %s", e)


def examine_disk(d: DiskReport) -> DiskCheck:
    """What is at a disk's path: an error unless it is an existing directory; a warning
    when it is not a mount point (the replicas share the filesystem it lives on)."""
    if not os.path.exists(d.path):
        return DiskCheck(
            name=d.name,
            path=d.path,
            error=f"{d.path} does not exist: create the directory (or mount the disk there) "
            "first; nothing was created",
        )
    if not os.path.isdir(d.path):
        return DiskCheck(name=d.name, path=d.path, error=f"{d.path} is not a directory")
    if os.path.ismount(d.path):
        return DiskCheck(name=d.name, path=d.path)
    mount = os.path.dirname(os.path.realpath(d.path))
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return DiskCheck(
        name=d.name,
        path=d.path,
        warning=f"{d.path} is not a mount point: its replicas share the filesystem mounted "
        f"at {mount}",
    )
