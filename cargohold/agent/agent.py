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
import logging
import os
import time
from typing import Any

from cargohold.agent import enrollment, node_state
from cargohold.agent.credentials import NodeCredentials, engine_credentials
from cargohold.agent.engines import Engines
from cargohold.agent.fair_share import latency_view
from cargohold.agent.key_rotation import FetchedKeys, parse_answer
from cargohold.agent.manager_link import ManagerLink
from cargohold.agent.metrics_http import STATUS_TIMEOUT, MetricsListener, disk_usage
from cargohold.agent.operations import Operations
from cargohold.agent.processes import Backoff, ReplicaServerProcess, stop_leftovers
from cargohold.agent.replicas import Replicas
from cargohold.agent.settings import AgentSettings
from cargohold.control.digests import report_digest
from cargohold.control.model import (
    Assignments,
    DiskReport,
    Heartbeat,
    Registration,
)
from cargohold.control.version_skew import running_version
from cargohold.errors import CargoholdError, ConfigError, NotFound
from cargohold.metrics.engine_status import volume_families
from cargohold.metrics.exposition import render_families
from cargohold.metrics.node_stats import node_families
from cargohold.security.tls import Credentials, is_loopback

log = logging.getLogger("cargohold.agent")

COMPLAIN_EVERY = 30.0  # seconds between repeated warnings of an unreachable manager
RENEW_CHECK = 1.0  # seconds between checks of the certificates' remaining life
NEWS_GAP = 0.05  # seconds to gather changes before reporting them early


AgentConfig = AgentSettings  # the name the agent's callers and tests know


def nbd_tls_dir(config: AgentSettings) -> str:
    """The credentials engines serve NBD over TLS with: none on loopback (the default: the
    consumer runs on this node); required on any other ``nbd_address`` (ConfigError)."""
    if is_loopback(config.nbd_address):
        return ""
    if not config.nbd_tls_dir:
        raise ConfigError(
            f"{AgentSettings.variable('nbd_address')}={config.nbd_address} puts the engines' "
            "NBD endpoints on the network: give --nbd-tls-dir "
            f"({AgentSettings.variable('nbd_tls_dir')}) for NBD over TLS"
        )
    return os.path.abspath(config.nbd_tls_dir)


class Agent:
    """The heartbeat loop of one node, and the parts it drives each heartbeat: ``replicas``
    (the replica server and its replicas: agent/replicas.py), ``engines`` (the engine
    supervisor: agent/engines.py), ``operations`` (agent/operations.py); agent.json is
    agent/node_state.py."""

    def __init__(self, config: AgentSettings) -> None:
        self.config = config
        self.dir = os.path.abspath(config.dir)
        creds = enrollment.credentials(self.dir)  # joined before: mTLS to the manager
        self.manager = ManagerLink(config.api, verify=creds.client_context() if creds else None)
        self._renew_checked = 0.0
        self.interval = config.heartbeat or 1.0
        self.registered = False
        self._register_backoff = Backoff(first=0.5, most=5.0)
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
        self.replicas = Replicas(
            config.node,
            config.address,
            self.dir,
            config.trash_grace,
            self._news,
            self._save_state,
        )
        # disks added through the API only under these (and the node directory), checked
        # here again before anything is created: the manager's check sees its own disks
        self.replicas.disk_roots = [*config.disk_roots, *(p for p, _ in config.disks)]
        self.engines = Engines(
            config.nbd_address,
            self.dir,
            lambda: self._state,
            self._save_state,
            self._news,
            self.manager.complaints.error,
            lambda volume: node_state.control_path(self.dir, volume),
            node=config.node,
            tls_dir=nbd_tls_dir(config),
        )
        self.operations = Operations(self.engines.procs, self._news)
        self.creds = NodeCredentials(
            config.node,
            self.dir,
            config.ca_dir,
            config.tls_dir,
            config.replica_tls_dir,
            joins=bool(config.join_token_file),
        )
        self.replicas.creds = self.creds
        self.engines.credentials = lambda volume: engine_credentials(self.creds, volume)
        self.engines.key_source = self._data_key
        self.metrics: MetricsListener | None = None  # start(): with --metrics-port

    async def _data_key(self, volume: str, epoch: int) -> FetchedKeys:
        """An encrypted volume's data keys (every generation its engine needs, newest
        first) for its engine of ``epoch`` on this node, from the manager over mutual TLS
        (only this node's agent gets them; docs/keys.md)."""
        body = {"node": self.config.node, "epoch": epoch}
        got = await self.manager.post(f"/api/v1/volumes/{volume}/data-key", body)
        return parse_answer(volume, got)

    # what the heartbeat reports and registration tells, kept where they are managed
    @property
    def disks(self) -> list[DiskReport]:
        return self.replicas.disks

    @property
    def replica_server(self) -> ReplicaServerProcess | None:
        return self.replicas.server

    @property
    def replica_port(self) -> int:
        return self.replicas.port

    # --- start and stop -------------------------------------------------------------------
    def _cert_hosts(self) -> list[str]:
        """Where clients that check hostnames reach this node, for the certificates the
        manager signs: its address and its metrics listener's (not a wildcard bind)."""
        c = self.config
        return [h for h in (c.address, c.metrics_address) if h and h not in ("0.0.0.0", "::")]

    async def start(self) -> None:
        """Create the node's directories, start the replica server and wait until it
        answers. Registration happens in the first ``run_once()`` (and is retried)."""
        for sub in ("logs", "run"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        # engines reach their local replica through it, in clear (docs/security.md)
        self.replicas.unix = self.engines.local_unix = node_state.replica_socket(self.dir)
        if self.config.join_token_file and not enrollment.enrolled(self.dir):
            c = self.config
            await enrollment.join(
                c.api, c.node, c.address, self.dir, c.join_token_file, self._cert_hosts()
            )
            await self._use_credentials()
        self._state = node_state.load(self.dir)
        self.replicas.disks = self._disks()
        self.replicas.read_stamps()
        adopted = await self._adopt()
        markers = [self.dir, *(d.path for d in self.disks)]
        leftovers = [p for p in self._state.get("pids", []) if p not in adopted]
        await asyncio.to_thread(stop_leftovers, leftovers, markers)
        if self.replica_server is not None:  # adopted: it keeps serving, same port
            await self._start_metrics()
            self._save_state()
            log.info(
                "adopted the replica server (pid %s) and %d engine(s) an earlier agent of "
                "node %s left running",
                self.replica_server.pid,
                len(self.engines.procs),
                self.config.node,
            )
            return
        last = int(self._state.get("replica_port") or 0)
        await self.replicas.start(self.config.replica_port, last)
        await self._start_metrics()

    async def _start_metrics(self) -> None:
        """The node's scrape target (agent/metrics_http.py), with ``--metrics-port``."""
        c = self.config
        if c.metrics_port is None:
            return
        host = c.metrics_address or c.address
        directory = await asyncio.to_thread(self.creds.metrics_dir, [host])
        creds = Credentials.load(directory) if directory else None
        self.metrics = MetricsListener(
            host,
            c.metrics_port,
            self.render_metrics,
            creds.server_context if creds is not None else None,
            creds.cluster if creds is not None else lambda: None,
        )
        await self.metrics.start()

    async def render_metrics(self) -> bytes:
        """This node's exposition: its engines (a fresh status each, else the last one),
        disks and replica server (agent/metrics_http.py)."""
        procs = list(self.engines.procs.values())

        async def fresh(eng: Any) -> dict[str, Any]:
            if not eng.running:
                return {}
            try:
                return dict(await eng.link.status(STATUS_TIMEOUT))
            except (CargoholdError, OSError, TimeoutError):
                return dict(eng.status)

        statuses = await asyncio.gather(*(fresh(e) for e in procs))
        node = self.config.node
        per_disk: dict[str, int] = {}
        for r in self.replicas.reports:
            per_disk[r.disk_path] = per_disk.get(r.disk_path, 0) + 1
        disks = [(d.name, d.path, d.capacity_bytes) for d in self.disks]
        usage = {d.path: u for d in self.disks if (u := disk_usage(d.path)) is not None}
        families = [
            *volume_families(
                node, ((e.volume, e.running, st) for e, st in zip(procs, statuses, strict=True))
            ),
            *node_families(
                node,
                disks,
                usage,
                per_disk,
                self.replicas.server_stats,
                sum(1 for e in procs if e.running),
                self._manager_down_since is None and self.registered,
                latency_view(self.engines.sharing),
            ),
        ]
        return render_families(families)

    async def _adopt(self) -> set[int]:
        """An earlier agent of this node died alone (SIGKILL, a crash) and left its replica
        server and engines running: take them over as they are — same PIDs, ports and
        sockets, clients keep their connections — when agent.json recorded them, they run
        exactly the arguments it recorded, and they answer (LIST, ``status``). Anything
        else is stopped and started afresh. -> the PIDs adopted."""
        kids = self._state.get("children")
        if not isinstance(kids, dict):
            return set()
        pid = await self.replicas.adopt(self._state, self.config.replica_port)
        if pid is None:
            return set()  # engines without their replica server: start everything anew
        return {pid} | await self.engines.adopt(kids.get("engines") or {})

    def _disks(self) -> list[DiskReport]:
        return node_state.node_disks(self.dir, self.config.disks, self._state)

    def _record_disks(self, disks: list[DiskReport]) -> None:
        """Disks added through the API are remembered in agent.json (``added_disks``)."""
        configured = node_state.configured_paths(self.dir, self.config.disks)
        self._state["added_disks"] = [d.model_dump() for d in disks if d.path not in configured]

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat until ``stop`` is set. Each heartbeat is a long poll: the manager holds
        its answer until this node's assignments change or ``heartbeat_interval`` passes,
        so the agent acts on a change at once and still reports once an interval. News of
        its own (an engine up or gone, a replica made, an operation done) cuts a held
        heartbeat short and is reported at once."""
        loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(self._watch_starting())
        c = self.config
        sharing = (  # weights and guaranteed minimums on a busy node (docs/qos.md)
            asyncio.create_task(
                self.engines.share_node(
                    c.node_iops, c.node_bandwidth, latency_target_us=c.node_latency_target
                )
            )
            if c.node_iops or c.node_bandwidth or c.node_latency_target
            else None
        )
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
            if sharing is not None:
                sharing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_starting(self) -> None:
        await self.engines.watch_starting(self._news)

    async def hand_over(self) -> None:
        """Exit for the next agent (an upgrade): the work under way is cancelled, the
        engines and the replica server keep running and serving, and NODEDIR/agent.json
        says what runs, so the next agent adopts them (``handover`` setting)."""
        tasks = self.operations.tasks() + self.engines.tasks()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._save_state()
        log.info(
            "node %s: leaving %d engine(s) and the replica server running for the next agent",
            self.config.node,
            len(self.engines.procs),
        )

    async def shutdown(self) -> None:
        """Stop everything this agent runs: engines first (SIGTERM: they flush and close),
        then the replica server."""
        tasks = self.operations.tasks() + self.engines.tasks()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.metrics is not None:
            await self.metrics.stop()
        await self.engines.stop_all()
        await self.replicas.stop()
        node_state.remove_socket_dirs(self.dir)
        self._save_state()
        await self.manager.close()

    # --- one heartbeat -----------------------------------------------------------------
    async def run_once(self, hold: float = 0.0) -> Assignments | None:
        """One heartbeat: report, receive assignments, converge. -> the assignments, or
        None when no manager answered (nothing is changed then) or news of this node cut
        a held heartbeat short. ``hold``: seconds the manager may hold its answer while the
        assignments are the ones this agent has (a long poll)."""
        self.creds.renew()  # certificates with less than half their life left, issued again
        listed = await self.replicas.check()
        await self.replicas.sweep_trash()
        await self._renew()
        if not self.registered and not await self._register():
            self.engines.watch()
            return None
        engines = await self.engines.report()
        hb = Heartbeat(
            replica_port=self.replica_port,
            replicas=self.replicas.reports,
            engines=engines,
            operations=self.operations.reports(),
            assignments_revision=self._revision,
            hold=hold,
            refusal=self.replicas.refusal,
            agent_version=running_version(),
            disk_checks=sorted(self.replicas.disk_checks.values(), key=lambda c: c.path),
        )
        digest = report_digest(hb)
        hb.report_digest = digest
        if digest == self._acked_digest:  # as last time: the manager has it, say only that
            hb = Heartbeat(
                report_digest=digest,
                same_report=True,
                assignments_revision=self._revision,
                hold=hold,
                agent_version=running_version(),
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
        if not self.replicas.acts_for(assignments):
            self._converged_in = loop.time() - answered
            return assignments  # refused: nothing changes, everything running keeps running
        async with self._keeping_alive():  # a restart of the replica server takes seconds
            await self.replicas.serve_added_disks(assignments.disks, self._record_disks)
        if listed is not None:
            await self.replicas.converge(assignments.replicas, listed, assignments.cluster_id)
        await self._engine_certificates(assignments)
        self.engines.converge(assignments.engines)
        self.operations.converge(assignments.operations)
        self._converged_in = loop.time() - answered
        return assignments

    @contextlib.asynccontextmanager
    async def _keeping_alive(self) -> Any:
        """While a slow step of converging runs (the replica server restarted for a disk
        added or removed: seconds on a loaded node), say "the same report" every interval
        so the manager does not count the node down for a pause of the agent's own making.
        Only liveness: what those answers carry is taken up by the next heartbeat."""

        async def ping() -> None:
            while True:
                await asyncio.sleep(self.interval)
                hb = Heartbeat(
                    report_digest=self._acked_digest,
                    same_report=True,
                    assignments_revision=self._revision,
                    agent_version=running_version(),
                )
                with contextlib.suppress(CargoholdError):
                    await self.manager.heartbeat(self.config.node, hb)

        task = asyncio.ensure_future(ping())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
            agent_version=running_version(),
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

    async def _use_credentials(self) -> None:
        """Talk to the manager with the agent's (new) certificate from now on."""
        creds = enrollment.credentials(self.dir)
        if creds is not None:
            await self.manager.use_tls(creds.client_context())

    async def _engine_certificates(self, assignments: Assignments) -> None:
        """A certificate for ``engine/<volume>`` for every engine assigned here, from the
        manager, before the engine starts (joined agents only; a failure is logged, the
        engine starts all the same and the request is repeated next round)."""
        if self.config.ca_dir or not enrollment.enrolled(self.dir):
            return  # with --ca-dir the agent issues them itself (agent/credentials.py)
        enrollment.forget_engines(self.dir, {e.volume for e in assignments.engines})
        for e in assignments.engines:
            try:
                await enrollment.engine_certificate(
                    self.manager, self.config.node, self.dir, e.volume
                )
            except CargoholdError as err:  # said once, not every round
                self.manager.complaints.error(
                    "no certificate for the engine of %s: %s", e.volume, err
                )

    async def _renew(self) -> None:
        """New certificates at half-life (checked every RENEW_CHECK seconds); a failure is
        retried: the old certificates stay valid until their expiry."""
        now = time.monotonic()
        if now - self._renew_checked < RENEW_CHECK:
            return
        self._renew_checked = now
        if self.config.ca_dir:
            return  # the agent renews from its CA itself (NodeCredentials.renew)
        try:
            if await enrollment.renew(self.manager, self.config.node, self.dir, self._cert_hosts()):
                await self._use_credentials()
        except CargoholdError as e:
            log.warning("cannot renew node %s's certificates: %s", self.config.node, e)

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

    # --- NODEDIR/agent.json ---------------------------------------------------------------
    def _save_state(self) -> None:
        node_state.save(
            self.dir,
            self._state,
            self.config.node,
            self.replica_port,
            self.replica_server,
            list(self.engines.procs.values()),
        )
