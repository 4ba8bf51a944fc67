"""The node agent: one per node. It runs the node's replica server and the engines the
manager assigns to the node, and converges them to the manager's wishes every heartbeat.

``run_once()`` is one heartbeat: gather what runs (replicas on the replica server, each
engine's own status, the operations it ran), POST it, and converge to the ``Assignments``
that come back — create and delete replicas, start, restart, replace and stop engines,
add, re-add and remove an engine's replicas through its control socket, run operations.
``run()`` repeats it until told to stop, as a long poll: the manager holds each answer
until the node's assignments change or ``heartbeat_interval`` passes, so new work is acted
on at once; news on the node cuts a held heartbeat short; a report the same as the last
one goes as its digest alone. Started by ``cargohold agent`` (cargohold/cli/agent_cmd.py);
see docs/control-plane.md.

The data path never depends on the manager: when heartbeats fail, everything that runs
keeps running unchanged (crashed children are still restarted) until the manager answers
again. Anything the agent does not understand in an answer is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from cargohold.agent import disk_stamp
from cargohold.agent.disks import device_size, is_block_device, prepare_device
from cargohold.agent.engine_link import EngineLink, EngineUnreachable
from cargohold.agent.identity import judge
from cargohold.agent.manager_link import ManagerLink
from cargohold.agent.processes import (
    REPLICA_ID,
    Backoff,
    EngineProcess,
    ReplicaServerProcess,
    check_engine,
    free_port,
    hostport,
    nbd_listening,
    port_is_free,
    readd_wait,
    stop_leftovers,
)
from cargohold.control.digests import report_digest
from cargohold.control.model import (
    Assignments,
    DiskReport,
    EngineAssignment,
    EngineReport,
    Heartbeat,
    OperationAssignment,
    OperationReport,
    OperationState,
    Registration,
    ReplicaAssignment,
    ReplicaReport,
    check_name,
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

READD_EVERY = 5.0  # seconds between attempts to add (or remove) one replica of an engine
COMPLAIN_EVERY = 30.0  # seconds between repeated warnings of an unreachable manager
STARTING_POLL = 0.05  # seconds between looks at a starting engine (is its NBD server up?)
NEWS_GAP = 0.05  # seconds to gather changes before reporting them early
OP_TRIES = 3  # runs of one operation whose engine dies under it, before it fails
VOLUME_OF = re.compile(r"^(.+)-r[0-9a-f]+$")  # <volume>-r<hex>
TRASH_SWEEP_EVERY = 60.0  # seconds between looks for trash older than trash_grace (at most)


@dataclass
class AgentConfig:
    node: str
    api: list[str]
    address: str  # where the replica server and engines listen
    dir: str  # NODEDIR: agent.json, logs/, run/, and the default disk
    zone: str = ""
    tags: list[str] = field(default_factory=list)
    disks: list[tuple[str, int | None]] = field(default_factory=list)  # path, capacity
    replica_port: int | None = None  # None: the one used before (agent.json), else any
    heartbeat: float | None = None  # seconds; None: what the manager says (2 s by default)
    trash_grace: float = 86400.0  # seconds a deleted replica stays in its disk's trash


@dataclass
class OperationRun:
    """One operation this agent runs (or ran) on an engine, reported until the manager stops
    assigning it."""

    spec: OperationAssignment
    state: OperationState = OperationState.RUNNING
    progress: float = 0.0
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.state in (OperationState.SUCCEEDED, OperationState.FAILED)

    def report(self) -> OperationReport:
        return OperationReport(
            id=self.spec.id,
            state=self.state,
            progress=self.progress,
            error=self.error,
            result=self.result,
        )


def _history(value: Any) -> list[list[int]]:
    """A replica's epoch history as LIST gives it, or [] when it is not well formed."""
    try:
        return [[int(a), int(b)] for a, b in value or []]
    except (TypeError, ValueError):
        return []


def volume_of(replica_id: str) -> str:
    m = VOLUME_OF.match(replica_id)
    return m.group(1) if m else ""


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.dir = os.path.abspath(config.dir)
        self.manager = ManagerLink(config.api)
        self.disks: list[DiskReport] = []
        self.replica_server: ReplicaServerProcess | None = None
        self.replica_port = 0
        self.engines: dict[str, EngineProcess] = {}
        self.operations: dict[str, OperationRun] = {}
        self._op_tries: dict[str, int] = {}  # operation id -> runs its engine died under
        self.interval = config.heartbeat or 1.0
        self.registered = False
        self._register_backoff = Backoff(first=0.5, most=5.0)
        self._replicas: list[ReplicaReport] = []  # the last LIST that worked
        self._probed: set[str] = set()  # replicas opened once to learn generation and epoch
        self._replica_errors: dict[str, str] = {}  # replica id -> last error logged
        self._manager_down_since: float | None = None
        self._complained_at = 0.0
        self._state: dict[str, Any] = {}
        # something the manager waits for happened (a replica created or deleted, an
        # operation finished): report it now rather than at the next interval
        self._news = asyncio.Event()
        self._revision = ""  # of the last assignments received: the manager holds while same
        self._go_on = False  # the next heartbeat goes at once (set by run_once)
        self._converged_in = 0.0  # seconds the last round took after the answer
        self._acked_digest = ""  # of the last report a manager took in (then: "same report")
        self._assignments: Assignments | None = None  # the last whole assignments received
        self._list_client: tuple[int | None, ReplicaClient] | None = None  # (server pid, it)
        self._spawned = asyncio.Event()  # an engine was started: the watcher looks closely
        self._stamps: dict[str, str | None] = {}  # disk path -> its cluster id (None: none)
        self._broken_stamps: dict[str, str] = {}  # disk path -> why its stamp is unreadable
        self._refusal = ""  # what this agent refuses to do for the manager, reported
        self._swept_at = 0.0  # monotonic time of the last trash sweep

    # --- start and stop -------------------------------------------------------------------
    async def start(self) -> None:
        """Create the node's directories, start the replica server and wait until it
        answers. Registration happens in the first ``run_once()`` (and is retried)."""
        for sub in ("logs", "run"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self._state = self._load_state()
        self.disks = self._disks()
        self._read_stamps()
        adopted = await self._adopt()
        markers = [self.dir, *(d.path for d in self.disks)]
        leftovers = [p for p in self._state.get("pids", []) if p not in adopted]
        await asyncio.to_thread(stop_leftovers, leftovers, markers)
        if self.replica_server is not None:  # adopted: it keeps serving, same port
            self._save_state()
            log.info(
                "adopted the replica server (pid %s) and %d engine(s) an earlier agent of "
                "node %s left running",
                self.replica_server.pid,
                len(self.engines),
                self.config.node,
            )
            return
        port = self.config.replica_port or self._state.get("replica_port") or 0
        if not port or not port_is_free(self.config.address, port):
            if port and self.config.replica_port:
                log.warning("replica port %d looks taken; trying it anyway", port)
            elif port:
                log.warning("replica port %d of the last run is taken: choosing another", port)
                port = 0
        self.replica_port = port or free_port(self.config.address)
        self.replica_server = ReplicaServerProcess(
            self.config.node,
            self.config.address,
            self.replica_port,
            [d.path for d in self.disks],
            os.path.join(self.dir, "logs", "replica-server.log"),
        )
        await self.replica_server.start()
        self._save_state()
        log.info(
            "replica server of node %s serves %s on %s (pid %s)",
            self.config.node,
            ", ".join(f"{d.name}={d.path}" for d in self.disks),
            hostport(self.config.address, self.replica_port),
            self.replica_server.pid,
        )

    async def _adopt(self) -> set[int]:
        """An earlier agent of this node died alone (SIGKILL, a crash) and left its replica
        server and engines running: take them over as they are — same PIDs, ports and
        sockets, clients keep their connections — when agent.json recorded them, they run
        exactly the arguments it recorded, and they answer (LIST, ``status``). Anything
        else is stopped and started afresh. -> the PIDs adopted."""
        kids = self._state.get("children")
        if not isinstance(kids, dict):
            return set()
        adopted: set[int] = set()
        rec = kids.get("replica_server") or {}
        port = int(self._state.get("replica_port") or 0)
        if port and (not self.config.replica_port or self.config.replica_port == port):
            rs = ReplicaServerProcess(
                self.config.node,
                self.config.address,
                port,
                [d.path for d in self.disks],
                os.path.join(self.dir, "logs", "replica-server.log"),
            )
            pid = rec.get("pid") if isinstance(rec, dict) else None
            if isinstance(pid, int) and await rs.adopt(pid):
                self.replica_server, self.replica_port = rs, port
                adopted.add(pid)
        if self.replica_server is None:
            return adopted  # engines without their replica server: start everything anew
        engines = kids.get("engines") or {}
        for volume, rec in engines.items() if isinstance(engines, dict) else ():
            try:
                spec = EngineAssignment.model_validate(rec["spec"])
                check_engine(spec)
                pid, argv, port = int(rec["pid"]), list(rec["argv"]), int(rec["port"])
            except (KeyError, TypeError, ValueError):
                continue
            if spec.volume != volume:
                continue
            eng = EngineProcess(
                spec,
                self.config.address,
                self._control_path(volume),
                os.path.join(self.dir, "logs", f"engine-{volume}.log"),
                port,
            )
            if await eng.adopt(pid, argv):
                self.engines[volume] = eng
                adopted.add(pid)
                log.info(
                    "adopted the engine of volume %s (epoch %d, pid %d) on %s",
                    volume,
                    spec.epoch,
                    pid,
                    hostport(eng.host, eng.port),
                )
        return adopted

    def _disks(self) -> list[DiskReport]:
        given = self.config.disks or [(os.path.join(self.dir, "disk-0"), None)]
        out: list[DiskReport] = []
        for i, (path, capacity) in enumerate(given):
            path = os.path.abspath(path)
            if is_block_device(path):  # a device: ext4 on first use, mounted under the node
                if capacity is None:
                    capacity = device_size(path)
                path = prepare_device(path, os.path.join(self.dir, "disks", f"disk-{i}"))
            os.makedirs(path, exist_ok=True)
            name = os.path.basename(path.rstrip("/")).lower()
            try:
                check_name(name)
            except ValueError:
                name = f"disk-{i}"
            if name in {d.name for d in out}:
                name = f"disk-{i}"
            if capacity is None:
                capacity = shutil.disk_usage(path).total
            out.append(DiskReport(name=name, path=path, capacity_bytes=capacity))
        for extra in self._state.get("added_disks", []):  # added through the API earlier
            try:
                d = DiskReport.model_validate(extra)
            except ValueError:
                continue
            if d.path not in {x.path for x in out} and d.name not in {x.name for x in out}:
                os.makedirs(d.path, exist_ok=True)
                out.append(d)
        return out

    async def _serve_added_disks(self, wanted: list[DiskReport]) -> None:
        """A disk added through the manager's API (``cargohold disk add``): create its
        directory and restart the replica server on the same port with it. Engines see
        their replicas on this node drop for a moment and re-add them (a delta rebuild)."""
        new = [d for d in wanted if d.path not in {x.path for x in self.disks}]
        if not new or self.replica_server is None:
            return
        for d in new:
            try:
                os.makedirs(d.path, exist_ok=True)
            except OSError as e:
                log.error("cannot serve disk %s at %s: %s", d.name, d.path, e)
                return
        self.disks.extend(new)
        self._read_stamps()
        self._state["added_disks"] = [
            d.model_dump() for d in self.disks if d.path not in self._configured_paths()
        ]
        log.info(
            "serving new disk(s) %s: restarting the replica server on port %d",
            ", ".join(f"{d.name}={d.path}" for d in new),
            self.replica_port,
        )
        await self.replica_server.stop()
        self.replica_server = ReplicaServerProcess(
            self.config.node,
            self.config.address,
            self.replica_port,
            [d.path for d in self.disks],
            os.path.join(self.dir, "logs", "replica-server.log"),
        )
        await self.replica_server.start()
        self._save_state()

    def _configured_paths(self) -> set[str]:
        given = self.config.disks or [(os.path.join(self.dir, "disk-0"), None)]
        return {os.path.abspath(p) for p, _ in given}

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat until ``stop`` is set. Each heartbeat is a long poll: the manager holds
        its answer until this node's assignments change or ``heartbeat_interval`` passes,
        so the agent acts on a change at once and still reports once an interval. News of
        its own (an engine up or gone, a replica made, an operation done) cuts a held
        heartbeat short and is reported at once."""
        loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(self._watch_starting())
        try:
            while not stop.is_set():
                began = loop.time()
                self._news.clear()  # set by what this round (or a running operation) achieves
                self._go_on = False
                try:
                    # liveness is recorded when a heartbeat arrives: hold it no longer than
                    # keeps arrivals an interval apart, whatever converging takes
                    hold = max(0.0, self.interval - self._converged_in) if self._revision else 0
                    await self.run_once(hold=hold)
                except Exception:  # a bug in one round must not take the node's volumes down
                    log.exception("heartbeat round failed; trying again next round")
                if stop.is_set():
                    break
                if self._news.is_set():
                    await asyncio.sleep(NEWS_GAP)  # let a burst of changes go out together
                    continue
                if self._go_on:
                    continue  # the hold was the wait, or there is new work: report at once
                wait = max(0.0, self.interval - (loop.time() - began))
                news = asyncio.ensure_future(self._news.wait())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {news, stopping}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for f in (news, stopping):
                    f.cancel()
                if self._news.is_set() and not stop.is_set():
                    await asyncio.sleep(NEWS_GAP)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_starting(self) -> None:
        """News when a starting engine's NBD server comes up or it dies: the manager hears
        of it at once, not when the held heartbeat ends."""
        told: set[tuple[str, int | None, bool]] = set()  # (volume, pid, up): said once
        while True:
            if any(e.child is not None and not e.ready for e in self.engines.values()):
                await asyncio.sleep(STARTING_POLL)
            else:  # none starting: sleep until one is started (or a while)
                self._spawned.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spawned.wait(), 1.0)
                continue
            if len(told) > 10_000:
                told.clear()
            for eng in self.engines.values():
                if eng.child is None or eng.ready or eng.retiring or eng.busy:
                    continue
                alive = eng.alive
                if alive and not nbd_listening(eng.child):
                    continue
                key = (eng.volume, eng.pid, alive)
                if key not in told:
                    told.add(key)
                    self._news.set()

    async def shutdown(self) -> None:
        """Stop everything this agent runs: engines first (SIGTERM: they flush and close),
        then the replica server."""
        tasks = [op.task for op in self.operations.values() if op.task is not None]
        for eng in self.engines.values():
            tasks += [t for t in (eng.transition, eng.changing) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engines = list(self.engines.values())
        await asyncio.gather(*(e.stop() for e in engines))
        for e in engines:
            log.info("stopped engine for volume %s (epoch %d)", e.volume, e.epoch)
        self.engines.clear()
        await self._drop_list_client()
        if self.replica_server is not None:
            await self.replica_server.stop()
            log.info("stopped the replica server")
        self._save_state()
        await self.manager.close()

    # --- one heartbeat -----------------------------------------------------------------
    async def run_once(self, hold: float = 0.0) -> Assignments | None:
        """One heartbeat: report, receive assignments, converge. -> the assignments, or
        None when no manager answered (nothing is changed then) or news of this node cut
        a held heartbeat short. ``hold``: seconds the manager may hold its answer while the
        assignments are the ones this agent has (a long poll)."""
        listed = await self._check_replica_server()
        await self._sweep_trash()
        if not self.registered and not await self._register():
            self._watch_engines()
            return None
        engines = await self._report_engines()
        hb = Heartbeat(
            replica_port=self.replica_port,
            replicas=self._replicas,
            engines=engines,
            operations=[op.report() for op in self.operations.values()],
            assignments_revision=self._revision,
            hold=hold,
            refusal=self._refusal,
        )
        digest = report_digest(hb)
        hb.report_digest = digest
        if digest == self._acked_digest:  # as last time: the manager has it, say only that
            hb = Heartbeat(
                report_digest=digest,
                same_report=True,
                assignments_revision=self._revision,
                hold=hold,
            )
        loop = asyncio.get_running_loop()
        sent = loop.time()
        post = asyncio.ensure_future(self.manager.heartbeat(self.config.node, hb))
        if hold > 0:
            news = asyncio.ensure_future(self._news.wait())
            await asyncio.wait({post, news}, return_when=asyncio.FIRST_COMPLETED)
            news.cancel()
            if not post.done():  # something happened here: report it now
                post.cancel()
                with contextlib.suppress(asyncio.CancelledError, CargoholdError):
                    await post
                self._go_on = True
                return None
        try:
            assignments = await post
        except NotFound as e:
            log.warning(
                "the manager does not know node %s (%s): registering again", self.config.node, e
            )
            self.registered = False
            return None
        except CargoholdError as e:  # unreachable, or refused (any 4xx but 404)
            self._manager_failed(e)
            return None
        self._manager_answered()
        if assignments.resend:  # that manager does not have the report: send it all now
            self._acked_digest = ""
            self._go_on = True
            return None
        self._acked_digest = digest
        if assignments.unchanged:  # nothing new: the assignments we have hold
            if self._assignments is None or assignments.revision != self._revision:
                self._revision = ""  # we do not have them (cannot be): ask for all of it
                self._go_on = True
                return None
            assignments = self._assignments.model_copy(
                update={"heartbeat_interval": assignments.heartbeat_interval}
            )
        self._assignments = assignments
        # at once again if the work changed, or the manager held the answer (that was the
        # wait); a manager that answers at once with the same work is asked an interval on
        self._go_on = assignments.revision != self._revision or loop.time() - sent >= hold / 2 > 0
        self._revision = assignments.revision
        if self.config.heartbeat is None:
            self.interval = assignments.heartbeat_interval
        answered = loop.time()
        if not self._acts_for(assignments):
            self._converged_in = loop.time() - answered
            return assignments  # refused: nothing changes, everything running keeps running
        await self._serve_added_disks(assignments.disks)
        if listed is not None:
            await self._converge_replicas(assignments.replicas, listed, assignments.cluster_id)
        self._converge_engines(assignments.engines)
        self._converge_operations(assignments.operations)
        self._converged_in = loop.time() - answered
        return assignments

    async def _register(self) -> bool:
        if not self._register_backoff.due:
            return False
        reg = Registration(
            zone=self.config.zone,
            address=self.config.address,
            replica_port=self.replica_port,
            tags=list(self.config.tags),
            disks=self.disks,
            agent_pid=os.getpid(),
        )
        try:
            await self.manager.register(self.config.node, reg)
        except CargoholdError as e:  # unreachable, or refused (any 4xx)
            delay = self._register_backoff.failed()
            self._manager_failed(e, f"cannot register (next try in {delay:.1f} s)")
            return False
        self._register_backoff.reset()
        self._manager_answered()
        self.registered = True
        log.info(
            "registered node %s with manager %s (address %s, replica port %d, zone %r, %d disks)",
            self.config.node,
            self.manager.current,
            self.config.address,
            self.replica_port,
            self.config.zone,
            len(self.disks),
        )
        return True

    def _manager_failed(self, e: CargoholdError, what: str = "heartbeat failed") -> None:
        now = time.monotonic()
        if self._manager_down_since is None:
            self._manager_down_since = now
            self._complained_at = now
            log.warning("%s: %s; everything running keeps running", what, e)
        elif now - self._complained_at >= COMPLAIN_EVERY:
            self._complained_at = now
            log.warning("%s for %.0f s now: %s", what, now - self._manager_down_since, e)

    def _manager_answered(self) -> None:
        if self._manager_down_since is not None:
            log.info(
                "manager %s answers again after %.1f s",
                self.manager.current,
                time.monotonic() - self._manager_down_since,
            )
            self._manager_down_since = None

    # --- cluster identity and the trash ---------------------------------------------------
    def _read_stamps(self) -> None:
        for d in self.disks:
            try:
                st = disk_stamp.read(d.path)
            except (FormatError, OSError) as e:
                self._broken_stamps[d.path] = str(e)
                continue
            self._broken_stamps.pop(d.path, None)
            self._stamps[d.path] = st.cluster_id if st else None

    def _acts_for(self, a: Assignments) -> bool:
        """Whether to act for the manager that sent ``a`` (agent/identity.py); stamps the
        disks it may. A refusal is logged once, and reported in every heartbeat."""
        assigned = {r.id for r in a.replicas}
        verdict = judge(a.cluster_id, self._stamps, self._broken_stamps, self._replicas, assigned)
        if verdict.refusal:
            if verdict.refusal != self._refusal:
                log.error("node %s: %s", self.config.node, verdict.refusal)
                self._refusal = verdict.refusal
                self._news.set()  # tell the manager now
            return False
        if self._refusal:
            log.warning(
                "node %s acts for the manager again (cluster %s)", self.config.node, a.cluster_id
            )
            self._refusal = ""
            self._news.set()
        for path in verdict.stamp:
            try:
                disk_stamp.write(path, a.cluster_id, self.config.node)
            except OSError as e:
                log.error("cannot stamp disk %s with cluster %s: %s", path, a.cluster_id, e)
                continue
            self._stamps[path] = a.cluster_id
            log.info("disk %s stamped: cluster %s", path, a.cluster_id)
        return True

    async def _sweep_trash(self) -> None:
        t = time.monotonic()
        every = min(TRASH_SWEEP_EVERY, max(1.0, self.config.trash_grace / 4))
        if t - self._swept_at < every:
            return
        self._swept_at = t
        paths = [d.path for d in self.disks]
        try:
            await asyncio.to_thread(sweep_trash, paths, self.config.trash_grace)
        except OSError as e:
            log.warning("cannot sweep the trash: %s", e)

    # --- replicas ----------------------------------------------------------------------
    async def _check_replica_server(self) -> set[str] | None:
        """Restart the replica server if it died; LIST its replicas into ``_replicas``.
        -> the ids on disk, or None when the server could not be asked."""
        rs = self.replica_server
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
                await rs.start()
            except CargoholdError as e:
                log.error("%s (next try in %.1f s)", e, rs.backoff.failed())
                return None
            log.info("restarted the replica server (pid %s)", rs.pid)
            self._save_state()
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
            return None
        self._replicas = [
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
        rs = self.replica_server
        assert rs is not None
        for attempt in (1, 2):
            kept = self._list_client
            if kept is None or kept[0] != rs.pid:
                await self._drop_list_client()
                kept = self._list_client = (rs.pid, await rs.client())
            try:
                return await asyncio.wait_for(kept[1].list(), 5.0)
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
        assert self.replica_server is not None
        self._probed.add(rid)
        try:
            c = await self.replica_server.client()
            try:
                await asyncio.wait_for(c.open(rid, 0), 5.0)
            finally:
                await c.close()
        except Fenced:
            pass
        except (CargoholdError, TimeoutError) as e:
            log.warning("cannot open replica %s to read its generation: %s", rid, e)

    async def _converge_replicas(
        self, wanted: list[ReplicaAssignment], on_disk: set[str], cluster_id: str = ""
    ) -> None:
        listed = {r.id: r for r in self._replicas}
        for ra in wanted:
            if ra.delete and ra.id in on_disk:
                rr = listed.get(ra.id)
                theirs = (rr.cluster_id or rr.disk_cluster_id) if rr else ""
                if theirs != cluster_id:  # another cluster's replica: never
                    why = (
                        f"replica {ra.id} belongs to cluster {theirs or '-'}, the manager "
                        f"to {cluster_id or '-'}: not deleting it"
                    )
                    if self._replica_errors.get(ra.id) != why:
                        self._replica_errors[ra.id] = why
                        log.error("%s", why)
                    continue
                await self._replica_call(ra, "delete")
            elif not ra.delete and ra.id not in on_disk:
                await self._replica_call(ra, "create", cluster_id)

    async def _replica_call(self, ra: ReplicaAssignment, what: str, cluster_id: str = "") -> None:
        assert self.replica_server is not None
        listed = next((r.disk_path for r in self._replicas if r.id == ra.id), "")
        disk = self._disk_name(ra.disk_path or listed)
        try:
            if not REPLICA_ID.match(ra.id):
                raise InvalidArgument(f"bad replica id {ra.id!r}")
            c = await self.replica_server.client()
            try:
                if what == "create":
                    out = await c.create(
                        ra.id, ra.size_bytes, ra.disk_path or None, cluster_id or None
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
            self._replica_errors.pop(ra.id, None)
        except (AlreadyExists, NotFound):
            pass  # done already (a LIST raced us)
        except CargoholdError as e:
            if self._replica_errors.get(ra.id) != str(e):  # say it once, not every heartbeat
                self._replica_errors[ra.id] = str(e)
                log.error("cannot %s replica %s on %s: %s", what, ra.id, disk, e)

    def _disk_name(self, path: str) -> str:
        if not path:
            return "a disk of the replica server's choice"
        for d in self.disks:
            if os.path.abspath(path) == d.path:
                return d.name
        return path

    # --- engines -----------------------------------------------------------------------
    def _watch_engines(self) -> list[EngineProcess]:
        """Note engines that came up or died; restart dead ones still assigned (the data
        path does not wait for the manager). -> the engines that run now."""
        for eng in list(self.engines.values()):
            event = eng.poll()
            if event == "ready":
                log.info(
                    "engine for volume %s (epoch %d) serves %s", eng.volume, eng.epoch, eng.endpoint
                )
            elif event == "exited" and not eng.retiring and not eng.busy:
                log.warning(
                    "%s; restarting it in %.1f s",
                    eng.error,
                    max(0.0, eng.backoff.not_before - time.monotonic()),
                )
            if not eng.alive and not eng.retiring and not eng.busy and eng.backoff.due:
                self._spawn(eng)
        return [e for e in self.engines.values() if e.running]

    async def _report_engines(self) -> list[EngineReport]:
        running = self._watch_engines()
        t = time.monotonic()
        await asyncio.gather(*(e.refresh() for e in running if e.status_due(t)))
        return [e.report() for e in self.engines.values()]

    def _spawn(self, eng: EngineProcess) -> None:
        try:
            eng.spawn()
        except OSError as e:
            eng.error = f"cannot start the engine of volume {eng.volume}: {e}"
            log.error("%s (next try in %.1f s)", eng.error, eng.backoff.failed())
            return
        self._spawned.set()
        log.info(
            "started engine for volume %s (epoch %d) on %s (pid %s)",
            eng.volume,
            eng.epoch,
            hostport(eng.host, eng.port),
            eng.pid,
        )
        self._save_state()

    def _converge_engines(self, assigned: list[EngineAssignment]) -> None:
        wanted: dict[str, EngineAssignment] = {}
        for a in assigned:
            try:
                check_engine(a)
                if a.volume in wanted:
                    raise ValueError("the volume is assigned twice")
            except ValueError as e:
                self.manager.complaints.error(
                    "skipping the engine assignment of volume %r: %s", a.volume, e
                )
                continue
            wanted[a.volume] = a
        for eng in list(self.engines.values()):
            if eng.volume not in wanted and not eng.retiring:
                eng.retiring = True
                if eng.changing is not None:
                    eng.changing.cancel()
                eng.transition = asyncio.create_task(self._retire(eng))
        for a in wanted.values():
            eng = self.engines.get(a.volume)
            if eng is None:
                port = int(self._state.get("engine_ports", {}).get(a.volume, 0) or 0)
                eng = EngineProcess(
                    a,
                    self.config.address,
                    self._control_path(a.volume),
                    os.path.join(self.dir, "logs", f"engine-{a.volume}.log"),
                    port,
                )
                self.engines[a.volume] = eng
                self._spawn(eng)
            elif eng.retiring or eng.busy:
                continue  # being stopped or replaced: look again next round
            elif a.epoch != eng.epoch:
                if eng.changing is not None:
                    eng.changing.cancel()
                eng.transition = asyncio.create_task(self._replace(eng, a))
            else:
                eng.spec = a  # the replica set may have changed; restarts use the newest
                if eng.running and eng.status and (eng.changing is None or eng.changing.done()):
                    plan = eng.replica_plan(READD_EVERY)
                    if plan:
                        eng.changing = asyncio.create_task(self._change_replicas(eng, plan))

    def _control_path(self, volume: str) -> str:
        path = os.path.join(self.dir, "run", f"{volume}.sock")
        if len(path.encode()) < 100:  # sun_path holds 108 bytes
            return path
        short = hashlib.sha256(self.dir.encode()).hexdigest()[:12]
        where = os.path.join(tempfile.gettempdir(), f"cargohold-{short}")
        os.makedirs(where, mode=0o700, exist_ok=True)
        return os.path.join(where, f"{volume}.sock")

    async def _retire(self, eng: EngineProcess) -> None:
        await eng.stop()
        log.info(
            "stopped engine for volume %s (epoch %d): no longer assigned here",
            eng.volume,
            eng.epoch,
        )
        if self.engines.get(eng.volume) is eng:
            del self.engines[eng.volume]
        self._state.get("engine_ports", {}).pop(eng.volume, None)
        self._save_state()
        self._news.set()  # the manager waits for it (a detach, a delete)

    async def _replace(self, eng: EngineProcess, a: EngineAssignment) -> None:
        log.info(
            "volume %s moves from epoch %d to %d: replacing its engine",
            eng.volume,
            eng.epoch,
            a.epoch,
        )
        await eng.stop()
        eng.spec, eng.error = a, ""
        eng.backoff.reset()
        self._spawn(eng)

    async def _change_replicas(self, eng: EngineProcess, plan: list[tuple[str, str]]) -> None:
        for what, arg in plan:
            rid = arg.split("@", 1)[0]
            eng.tried[rid] = time.monotonic()
            try:
                if what == "add":
                    eng.status_changed(await eng.link.add_replica(arg))
                    eng.readded(rid)
                    log.info(
                        "added replica %s to the engine of volume %s (it is rebuilt)",
                        arg,
                        eng.volume,
                    )
                else:
                    eng.status_changed(await eng.link.remove_replica(rid))
                    log.info("removed replica %s from the engine of volume %s", rid, eng.volume)
            except CargoholdError as e:
                log.warning(
                    "cannot %s replica %s of volume %s: %s (trying again in %g s)",
                    what,
                    arg,
                    eng.volume,
                    e,
                    readd_wait(eng.readds.get(rid, 0), READD_EVERY)
                    if what == "add"
                    else READD_EVERY,
                )

    # --- operations --------------------------------------------------------------------
    def _converge_operations(self, assigned: list[OperationAssignment]) -> None:
        ids = {op.id for op in assigned}
        for oid, run in list(self.operations.items()):
            if oid not in ids and run.done:
                del self.operations[oid]  # the manager has its result
        for oid in [o for o in self._op_tries if o not in ids]:
            del self._op_tries[oid]  # no longer assigned: its retries are over
        for op in assigned:
            if op.id in self.operations:
                continue
            eng = self.engines.get(op.volume)
            if eng is None or not eng.running or eng.retiring or eng.busy:
                continue  # no engine here (yet): the manager assigns it again
            run = OperationRun(op)
            self.operations[op.id] = run
            run.task = asyncio.create_task(self._run_operation(run, eng.link))

    async def _run_operation(self, run: OperationRun, link: EngineLink) -> None:
        op = run.spec
        log.info(
            "running operation %s: %s of volume %s %s",
            op.id,
            op.kind.value,
            op.volume,
            json.dumps(op.args),
        )

        def progress(p: float) -> None:
            run.progress = p

        def settle() -> None:  # what the operation changed shows in the next status
            eng = self.engines.get(op.volume)
            if eng is not None:
                eng.status_every = 0.0

        try:
            run.result = await link.run_operation(op, progress)
            run.progress, run.state = 1.0, OperationState.SUCCEEDED
            settle()
            self._news.set()
            log.info("operation %s (%s of volume %s) succeeded", op.id, op.kind.value, op.volume)
        except EngineUnreachable as e:
            # the engine died under it: the operation may be half done. Forget this run; the
            # manager keeps assigning the operation, and it runs again once the engine is
            # back (snapshot create and delete set a half-done one right)
            tries = self._op_tries[op.id] = self._op_tries.get(op.id, 0) + 1
            if tries < OP_TRIES and self.operations.get(op.id) is run:
                log.warning(
                    "operation %s (%s of volume %s): %s; running it again once the engine "
                    "is back (%d of %d)",
                    op.id,
                    op.kind.value,
                    op.volume,
                    e,
                    tries + 1,
                    OP_TRIES,
                )
                del self.operations[op.id]
                return
            run.error, run.state = str(e), OperationState.FAILED
            settle()
            self._news.set()
        except CargoholdError as e:
            run.error, run.state = str(e), OperationState.FAILED
            settle()
            self._news.set()
            log.warning(
                "operation %s (%s of volume %s) failed: %s", op.id, op.kind.value, op.volume, e
            )
        except Exception as e:  # a bug: report it as the operation's failure, keep the agent
            log.exception("operation %s crashed", op.id)
            run.error, run.state = f"{type(e).__name__}: {e}", OperationState.FAILED

    # --- NODEDIR/agent.json ---------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        path = os.path.join(self.dir, "agent.json")
        try:
            with open(path) as f:
                state = json.load(f)
            return state if isinstance(state, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring %s: %s", path, e)
            return {}

    def _save_state(self) -> None:
        """Persist what must survive the agent: the replica port (the manager hands it to
        engines everywhere), the engines' NBD ports, the children's PIDs."""
        ports = self._state.setdefault("engine_ports", {})
        for eng in self.engines.values():
            if eng.port:
                ports[eng.volume] = eng.port
        pids = [e.pid for e in self.engines.values()]
        if self.replica_server is not None:
            pids.append(self.replica_server.pid)
        # what a restarted agent needs to adopt the children (``_adopt``)
        rs = self.replica_server
        children: dict[str, Any] = {
            "replica_server": {"pid": rs.pid} if rs is not None and rs.pid else {},
            "engines": {
                e.volume: {
                    "pid": e.pid,
                    "argv": e.child.argv,
                    "port": e.port,
                    "spec": e.spec.model_dump(mode="json"),
                }
                for e in self.engines.values()
                if e.pid and e.child is not None
            },
        }
        self._state.update(
            node=self.config.node,
            replica_port=self.replica_port,
            pids=[p for p in pids if p],
            children=children,
        )
        path = os.path.join(self.dir, "agent.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self._state, f, indent=2)
        os.replace(tmp, path)
