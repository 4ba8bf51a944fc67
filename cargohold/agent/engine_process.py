"""The engine of one volume on this node, across its restarts, and its life as one state
machine. Used by ``cargohold.agent.engines`` (the supervisor that drives it); nothing here
talks to the manager.

An engine is in exactly one ``EngineState``; only the events in ``TRANSITIONS`` move it, in
``EngineProcess.move`` (any other move is a bug and raises ``WrongState``):

=========== ================ ============ =================================================
from        event            to           when
=========== ================ ============ =================================================
DOWN        spawn            STARTING     first assignment, or its restart back-off is due
DOWN        spawn_failed     DOWN         the child could not be started (back-off grows)
DOWN        exit             DOWN         a child that never started is noted as exited
DOWN        adopt            RUNNING      an earlier agent left it running (agent.json)
STARTING    ready            RUNNING      its NBD server listens
STARTING    exit             DOWN         it died before it listened (another port next)
RUNNING     exit             DOWN         it died; restarted once its back-off is due
DOWN,       replace          REPLACING    the volume moved to a new epoch: stop the child
STARTING,
RUNNING
REPLACING   spawn            STARTING     stopped: started again with the new assignment
REPLACING   spawn_failed     DOWN         ... and that failed (retried after back-off)
any but     retire           RETIRING     no longer assigned here: stopped for good, then
RETIRING                                  forgotten (also in the middle of a replacement)
REPLACING,  ready, exit      (the same)   the old child came up or died: noted (``ready``,
RETIRING                                  ``error``), and it is being stopped anyway
=========== ================ ============ =================================================

What the state decides: only DOWN is restarted (when ``backoff.due``); only RUNNING is
given operations and replica-set changes (``takes_work``); REPLACING and RETIRING are left
to the task stopping them. Facts about the current child stay facts, read where they are
needed: ``alive`` (its process runs), ``ready`` (its NBD server listens), ``running``
(both: what the heartbeat reports, so an engine being replaced is reported running until
it is stopped).

The re-add back-off of dropped replicas (``replica_plan``, ``readd_wait``) and the pace of
status calls (``refresh``) live here too: both are per engine.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cargohold.agent import cpu_priority, key_rotation
from cargohold.agent.engine_link import EngineLink
from cargohold.agent.key_rotation import EngineKeys, FetchedKeys
from cargohold.agent.processes import (
    STABLE_AFTER,
    AdoptedChild,
    Backoff,
    Child,
    engine_argv,
    free_port,
    hostport,
    nbd_listening,
    port_is_free,
    runs_argv,
)
from cargohold.control.model import EngineAssignment, EngineReport
from cargohold.errors import CargoholdError, KeyRefused, KeyUnavailable, WrongState
from cargohold.keys.data_keys import DATA_KEY_BYTES
from cargohold.security.tls import is_loopback

log = logging.getLogger("cargohold.agent")

UNREPORTED = (
    "counters",
    "latency_log2_us",
    "latency_sum_us",
    "inflight",
)  # kept from the manager (metrics only)
IO_TOTALS = ("read", "write", "read_bytes", "written_bytes")  # but these go (``io``)
READD_MAX = 300.0  # seconds: the longest wait between two re-adds of a dropped replica
STATUS_IDLE_EVERY = 5.0  # seconds between status calls to an engine whose status stays put


class EngineState(enum.Enum):
    DOWN = "down"  # no child runs: not started yet, failed to start, or exited
    STARTING = "starting"  # a child runs; its NBD server does not listen yet
    RUNNING = "running"  # its NBD server listens: it takes operations and replica changes
    REPLACING = "replacing"  # a new epoch: the child is being stopped, a new one follows
    RETIRING = "retiring"  # no longer assigned here: being stopped for good


_S = EngineState
TRANSITIONS: dict[tuple[EngineState, str], EngineState] = {
    (_S.DOWN, "spawn"): _S.STARTING,
    (_S.DOWN, "spawn_failed"): _S.DOWN,
    (_S.DOWN, "exit"): _S.DOWN,
    (_S.DOWN, "adopt"): _S.RUNNING,
    (_S.STARTING, "ready"): _S.RUNNING,
    (_S.STARTING, "exit"): _S.DOWN,
    (_S.RUNNING, "exit"): _S.DOWN,
    **{(s, "replace"): _S.REPLACING for s in (_S.DOWN, _S.STARTING, _S.RUNNING)},
    (_S.REPLACING, "spawn"): _S.STARTING,
    (_S.REPLACING, "spawn_failed"): _S.DOWN,
    **{(s, "retire"): _S.RETIRING for s in _S if s is not _S.RETIRING},
    **{(s, e): s for s in (_S.REPLACING, _S.RETIRING) for e in ("ready", "exit")},
}


class EngineProcess:
    """The engine of one volume on this node, across its restarts: the assignment it runs,
    its NBD port (kept across crashes, so the endpoint stays put), its control socket, what
    it last said of itself, and why it last exited."""

    def __init__(
        self,
        spec: EngineAssignment,
        host: str,
        control: str,
        log_path: str,
        port: int = 0,
        node: str = "",
        tls_dir: str = "",
    ) -> None:
        self.spec = spec
        self.host = host  # the NBD endpoint's address: loopback unless put on the network
        self.node = node
        self.tls_dir = tls_dir  # NBD over TLS (the engine needs it off loopback)
        self.control = control
        self.log_path = log_path
        self.port = port
        self.link = EngineLink(control)
        self.child: Child | None = None
        self.ready = False  # its NBD server listens
        self.status: dict[str, Any] = {}
        self.error = ""
        self.backoff = Backoff()
        self.state = EngineState.DOWN  # see TRANSITIONS
        self.transition: asyncio.Task[None] | None = None  # replacing or retiring it
        self.changing: asyncio.Task[None] | None = None  # a replica-set change in flight
        self.qos_push: asyncio.Task[None] | None = None  # new QoS limits being applied
        self.fair_iops: int | None = None  # its share of a contended node (fair_share.py)
        self.fair_bandwidth: int | None = None  # the same in bytes/s (--node-bandwidth)
        self.nice: int | None = None  # its CPU priority from its weight (cpu_priority.py)
        self._nice_refused: int | None = None  # a nice value the kernel refused (EPERM)
        self.tried: dict[str, float] = {}  # replica id -> last add/remove attempt (monotonic)
        self.readds: dict[str, int] = {}  # replica id -> re-adds since it was last RW
        self._readding: set[str] = set()  # re-adds planned, not yet taken by the engine
        self.status_at = 0.0  # when ``status`` was last asked for (monotonic)
        self.status_every = 0.0  # seconds until it is asked again (0: every heartbeat)
        self._exit_noted = False
        # volume -> its engine's credentials directory (None: --plaintext); the agent's
        # agent/credentials.py engine_credentials, set by Engines
        self.credentials: Callable[[str], str | None] = lambda volume: None
        # an encrypted volume (spec.encrypted): (volume, epoch) -> (data key, encryption id)
        # from the manager (Engines.key_source); the key is held from its fetch to the
        # child's start only, and written into a pipe the child reads (never argv or a file)
        self.key_source: Callable[[str, int], Awaitable[FetchedKeys]] | None = None
        self._data_key: FetchedKeys | None = None
        self.key_fetch: asyncio.Task[None] | None = None
        self.keys = EngineKeys()  # the generations it was given (agent/key_rotation.py)
        # the node's replica server's unix socket: the local replica's link (Engines sets it)
        self.local_unix: str | None = None

    @property
    def volume(self) -> str:
        return self.spec.volume

    @property
    def epoch(self) -> int:
        return self.spec.epoch

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.alive

    @property
    def running(self) -> bool:
        return self.alive and self.ready

    @property
    def takes_work(self) -> bool:
        """Whether operations and replica-set changes may be sent to it now."""
        return self.state is EngineState.RUNNING and self.running

    def move(self, event: str) -> EngineState:
        """Apply ``event`` (see ``TRANSITIONS``); -> the new state."""
        to = TRANSITIONS.get((self.state, event))
        if to is None:
            raise WrongState(
                f"engine of volume {self.volume}: no {event!r} from {self.state.value}"
            )
        self.state = to
        return to

    @property
    def endpoint(self) -> str:
        scheme = "nbds" if self.tls_dir and not is_loopback(self.host) else "nbd"
        return f"{scheme}://{hostport(self.host, self.port)}/{self.volume}"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.alive and self.child else None

    def spawn(self) -> None:
        """Start a child for the current assignment (DOWN or REPLACING -> STARTING); an
        OSError, or a CargoholdError (no credentials for it yet), leaves it DOWN and is
        raised."""
        try:
            self._start_child()
        except (OSError, CargoholdError):
            self.move("spawn_failed")
            raise
        self.move("spawn")

    @property
    def needs_key(self) -> bool:
        """An encrypted volume's engine whose data key has not been fetched for its start."""
        return self.spec.encrypted and self._data_key is None

    async def fetch_key(self) -> None:
        """Fetch the data key for the next start (KeyUnavailable, PermissionDenied,
        ManagerUnavailable... raised as the manager says)."""
        if self.key_source is None:
            raise KeyUnavailable(f"volume {self.volume} is encrypted: no key source here")
        got = await self.key_source(self.volume, self.epoch)
        eid = got.encryption_id
        if eid != self.spec.encryption_id or any(len(k) != DATA_KEY_BYTES for k in got.keys):
            raise KeyRefused(
                f"the manager's data key for volume {self.volume} is not for encryption id "
                f"{self.spec.encryption_id} (got {eid})"
            )
        self._data_key = got

    def drop_key(self) -> None:
        self._data_key = None

    def argv(self, data_key_fd: int | None = None) -> list[str]:
        """The engine's command line for the current assignment and port."""
        s = self.spec
        return engine_argv(
            s.volume,
            s.epoch,
            s.replicas,
            s.local,
            self.host,
            self.port,
            self.control,
            (s.require_epoch, s.require_generation),
            s.last_scrub_at,
            s.epoch_jump,
            node=self.node,
            # the engine's own credentials (replica links; NBD over TLS off loopback), else
            # the agent's NBD credentials for a network endpoint, else --plaintext
            tls_dir=self.credentials(s.volume)
            or (self.tls_dir if not is_loopback(self.host) else None),
            qos=s.qos,
            read_only=s.read_only,
            data_key_fd=data_key_fd,
            encryption_key_id=s.encryption_id,
            local_unix=self.local_unix,
        )

    def _start_child(self) -> None:
        if not self.port or not port_is_free(self.host, self.port):
            self.port = free_port(self.host)
        s = self.spec
        if not s.encrypted:
            argv = self.argv()
            self.child = Child(
                f"engine of volume {s.volume} (epoch {s.epoch})", argv, self.log_path
            )
            self.child.start()
        else:  # the keys into a pipe (32 bytes each, newest first, at most 256: never
            # blocks), its read end to the child
            got, self._data_key = self._data_key, None
            if got is None:
                raise KeyUnavailable(
                    f"volume {s.volume} is encrypted: its data key was not fetched"
                )
            r, w = os.pipe()
            try:
                try:
                    os.write(w, b"".join(got.keys))
                finally:
                    os.close(w)
                self.keys.started(got.generation)
                del got
                argv = self.argv(data_key_fd=r)
                self.child = Child(
                    f"engine of volume {s.volume} (epoch {s.epoch})", argv, self.log_path
                )
                self.child.start(pass_fds=(r,))
            finally:
                os.close(r)
        self.ready, self.status, self._exit_noted = False, {}, False  # error: until ready
        self.nice = self._nice_refused = None
        self.apply_nice()  # before it starts its threads: they inherit it
        self.status_every = 0.0
        self.tried.clear()
        self.readds.clear()
        self._readding.clear()

    async def adopt(self, pid: int, argv: list[str]) -> bool:
        """Take over this volume's engine that an earlier agent started with ``argv`` and
        left running, if it answers ``status`` on its control socket; -> whether it was
        adopted. Its clients keep their connections: nothing is restarted."""
        if not runs_argv(pid, argv):
            return False
        try:
            status = await self.link.status(timeout=3.0)
        except CargoholdError as e:
            log.warning("not adopting the engine of %s (pid %d): %s", self.volume, pid, e)
            return False
        if status.get("volume") != self.volume or status.get("epoch") != self.epoch:
            return False
        self.child = AdoptedChild(
            f"engine of volume {self.volume} (epoch {self.epoch})", argv, self.log_path, pid
        )
        self.ready, self.status, self._exit_noted, self.error = True, status, False, ""
        self.move("adopt")
        # its keys are those of its assignment (a rotation running: given again, swept)
        self.keys.started(self.spec.data_key_generation)
        self.nice = self._nice_refused = None
        self.apply_nice()
        return True

    def poll(self) -> str | None:
        """Notice a change: -> "ready" when its NBD server came up, "exited" the first time
        it is seen dead (``error`` says why), else None."""
        if self.child is None:
            return None
        if self.child.alive:
            if not self.ready and nbd_listening(self.child):
                self.ready, self.error = True, ""
                self.move("ready")
                return "ready"
            return None
        if self._exit_noted:
            return None
        self._exit_noted = True
        was_ready, self.ready, self.status = self.ready, False, {}
        self.error = self.child.exit_reason()
        if was_ready and self.child.uptime >= STABLE_AFTER:
            self.backoff.reset()
        if not was_ready:
            self.port = 0  # it may not have been able to bind: another port next time
        self.backoff.failed()
        self.move("exit")
        return "exited"

    def status_due(self, now: float) -> bool:
        """Whether the next heartbeat should ask for a fresh status (``refresh``)."""
        return self.running and now >= self.status_at + self.status_every

    async def refresh(self, timeout: float = 2.0) -> None:
        """Ask a running engine for its status; keep the last one when it does not answer.
        An engine whose status (the part the manager reads) stays the same is asked less
        and less often, down to every ``STATUS_IDLE_EVERY`` seconds; any change (writes
        move its generation, a rebuild, a replica dropped) brings it back to every
        heartbeat."""
        if not self.running:
            return
        self.status_at = time.monotonic()
        try:
            new = await self.link.status(timeout)
            self.error = ""
        except CargoholdError as e:
            self.error = str(e)
            self.status_every = 0.0
            return
        if _reported(new) == _reported(self.status) and _settled(new):
            self.status_every = min(STATUS_IDLE_EVERY, max(1.0, 2 * self.status_every))
        else:
            self.status_every = 0.0
        self.status = new

    def status_changed(self, status: dict[str, Any]) -> None:
        """A control call answered with the status (a replica added or removed): keep it,
        and look at it every heartbeat until it settles."""
        self.status, self.status_every = status, 0.0

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()
        self.ready = False

    def qos_due(self) -> bool:
        """The running engine enforces other QoS limits than the assignment's (its last
        status says which), and none are being pushed now."""
        if not self.running or not self.status or "qos" not in self.status:
            return False
        if self.qos_push is not None and not self.qos_push.done():
            return False
        return (self.status.get("qos") or {}).get("limits") != self.wanted_qos()

    def apply_nice(self) -> None:
        """Give the engine the CPU priority of its volume's weight (cpu_priority.py) when
        it has another; cheap when it has it. A value the kernel refuses (a weight raised
        without CAP_SYS_NICE) is logged once and left until the engine's next start."""
        pid = self.pid
        want = cpu_priority.nice_for(self.spec.qos.get("weight"))
        if pid is None or want == self.nice or want == self._nice_refused:
            return
        try:
            self.nice = cpu_priority.renice(pid, want)
        except ProcessLookupError:
            return  # it exited: poll notices
        except OSError as e:
            self._nice_refused = want
            try:
                self.nice = os.getpriority(os.PRIO_PROCESS, pid)
            except OSError:
                pass
            log.warning(
                "volume %s: cannot give its engine (pid %d) nice %d for its weight, it keeps "
                "%s until its next start: %s (lowering a nice value needs CAP_SYS_NICE)",
                self.volume,
                pid,
                want,
                self.nice,
                e,
            )
            return
        log.info("volume %s: engine (pid %d) runs at nice %d", self.volume, pid, self.nice)

    def wanted_qos(self) -> dict[str, Any]:
        """The assignment's QoS limits, with ``max_iops`` (``max_bandwidth``) lowered to the
        volume's fair share of the node while the node is contended (``fair_iops``,
        ``fair_bandwidth``; docs/qos.md)."""
        limits = dict(self.spec.qos)
        if self.fair_iops is not None:
            limits["max_iops"] = min(int(limits.get("max_iops") or self.fair_iops), self.fair_iops)
        if self.fair_bandwidth is not None:
            own = int(limits.get("max_bandwidth") or self.fair_bandwidth)
            limits["max_bandwidth"] = min(own, self.fair_bandwidth)
        return limits

    async def push_qos(self) -> None:
        """Give the engine the assignment's QoS limits (control op ``qos``): they apply at
        once; its answer updates the status kept of it."""
        limits = self.wanted_qos()
        try:
            answer = await self.link.call({"op": "qos", "limits": limits})
        except CargoholdError as e:
            log.warning("cannot set the QoS limits of volume %s: %s", self.volume, e)
            return
        self.status = dict(self.status, qos=answer.get("qos", {}))
        log.log(
            # a fair share changes every second: not worth a line each time
            logging.DEBUG if (self.fair_iops or self.fair_bandwidth) is not None else logging.INFO,
            "volume %s: QoS limits now %s",
            self.volume,
            limits or "none",
        )

    def replica_plan(self, every: float) -> list[tuple[str, str]]:
        """What to change in the running engine's replica set: ("add", ID@HOST:PORT) for an
        assigned replica it lacks or dropped (ERR: a re-add rebuilds the delta), ("remove",
        ID) for one no longer assigned. Each replica at most once every ``every`` seconds;
        a dropped replica that the engine took back and then dropped again (a full disk: it
        fails in its rebuild) with exponential back-off, ``every`` doubling per such re-add
        up to ``READD_MAX``, until it is RW again (``readd_wait``). A re-add the engine
        refused (the replica unreachable: a node down, a partition) costs nothing and does
        not count: it is tried again every ``every`` seconds, so a replica comes back soon
        after its node does."""
        now = time.monotonic()
        want = {spec.split("@", 1)[0]: spec for spec in self.spec.replicas}
        have = {str(x.get("id")): x for x in self.status.get("replicas", []) if isinstance(x, dict)}
        plan: list[tuple[str, str, float]] = []
        for rid, spec in want.items():
            link = have.get(rid)
            if link is None:
                plan.append(("add", spec, every))
            elif link.get("mode") == "ERR":
                plan.append(("add", spec, readd_wait(self.readds.get(rid, 0), every)))
            elif link.get("mode") == "RW":
                self.readds.pop(rid, None)  # current again: the next drop starts over
        plan += [("remove", rid, every) for rid in have if rid not in want]
        out = []
        for k, v, wait in plan:
            rid = v.split("@")[0]
            if now - self.tried.get(rid, -math.inf) < wait:
                continue
            if k == "add" and rid in have:  # a re-add of a dropped replica
                self._readding.add(rid)
                n = self.readds.get(rid, 0)
                if n:
                    log.warning(
                        "volume %s: re-adding replica %s, dropped again (%s); re-add %d, the "
                        "next one no sooner than in %.0f s if it fails again",
                        self.volume,
                        rid,
                        have[rid].get("error") or "no reason given",
                        n + 1,
                        readd_wait(n + 1, every),
                    )
            out.append((k, v))
        return out

    def readded(self, rid: str) -> None:
        """The engine took ``rid`` back (WO: it rebuilds it). If that was a re-add of a
        dropped replica and it is dropped again, the next re-add waits longer."""
        if rid in self._readding:
            self._readding.discard(rid)
            self.readds[rid] = self.readds.get(rid, 0) + 1

    def report(self) -> EngineReport:
        running = self.running
        return EngineReport(
            volume=self.volume,
            epoch=self.epoch,
            running=running,
            endpoint=str(self.status.get("endpoint") or self.endpoint) if running else "",
            error=self.error,
            status=self._reported() if running else {},
        )

    def _reported(self) -> dict[str, Any]:
        status = key_rotation.tagged(self, _reported(self.status))
        if self.fair_iops is not None:  # held to its share of a busy node (docs/qos.md)
            status["qos"] = {**(status.get("qos") or {}), "fair_iops": self.fair_iops}
        if self.fair_bandwidth is not None:
            status["qos"] = {**(status.get("qos") or {}), "fair_bandwidth": self.fair_bandwidth}
        if self.nice is not None:  # its CPU priority from its weight (cpu_priority.py)
            status["qos"] = {**(status.get("qos") or {}), "nice": self.nice}
        return status


def readd_wait(readds: int, every: float) -> float:
    """Seconds between re-adds of a replica after ``readds`` re-adds that did not make it RW:
    ``every``, doubling each time, at most ``READD_MAX`` (5 s, 10 s, ... 5 min). Before,
    a replica on a full disk was re-added every 5 s for ever (WO, then ERR in its rebuild:
    a 6 s cycle) and each attempt re-read the data the rebuild copies."""
    return min(READD_MAX, every * 2 ** min(readds, 16))


def _reported(status: dict[str, Any]) -> dict[str, Any]:
    """The manager's part of an engine's status: not the counters and latency histograms,
    which would make every heartbeat several times larger; only four I/O totals (``io``,
    for the console's sparklines: control/io_history.py). As they move while the volume
    is busy, a busy engine is asked for its status every heartbeat."""
    out = {k: v for k, v in status.items() if k not in UNREPORTED}
    counters = status.get("counters")
    if isinstance(counters, dict):
        out["io"] = {k: counters.get(k, 0) for k in IO_TOTALS}
    return out


def _settled(status: dict[str, Any]) -> bool:
    """Nothing under way that the manager follows: every replica RW, no import running."""
    reps = status.get("replicas") or []
    imp = status.get("import")
    rekey = status.get("rekey")  # a data-key sweep is followed every heartbeat too
    return all(isinstance(r, dict) and r.get("mode") == "RW" for r in reps) and not (
        (isinstance(imp, dict) and imp.get("state") == "running")
        or (isinstance(rekey, dict) and rekey.get("state") == "running")
    )
