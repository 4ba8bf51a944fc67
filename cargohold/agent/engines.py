"""The engine supervisor: the engines this node runs, one per assigned volume, converged to
the manager's engine assignments. Used by ``cargohold.agent.agent`` every heartbeat
(``watch``, ``report``, ``converge``), at start (``adopt``), by its watcher of starting
engines (``watch_starting``) and at shutdown (``stop_all``).

Each engine's life is the state machine of ``cargohold.agent.engine_process`` (the table of
states and transitions is in its docstring); this module decides the events: it starts an
engine first assigned here or DOWN with its back-off due, replaces one whose volume moved
to a new epoch, retires one no longer assigned, and adds, re-adds and removes a running
engine's replicas through its control socket. Crashed engines are restarted whether the
manager answers or not: the data path never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cargohold.agent import key_rotation
from cargohold.agent.engine_process import EngineProcess, EngineState, readd_wait
from cargohold.agent.fair_share import NodeShare
from cargohold.agent.key_rotation import FetchedKeys
from cargohold.agent.latency_target import LatencyTarget
from cargohold.agent.processes import check_engine, hostport, nbd_listening
from cargohold.control.model import EngineAssignment, EngineReport
from cargohold.errors import CargoholdError

log = logging.getLogger("cargohold.agent")

READD_EVERY = 5.0  # seconds between attempts to add (or remove) one replica of an engine
FAIR_SHARE_EVERY = 1.0  # seconds between looks at the engines' rates (agent setting node_iops)
STARTING_POLL = 0.05  # seconds between looks at a starting engine (is its NBD server up?)


class Engines:
    """The node's engines by volume. ``save`` persists agent.json (the agent's); ``news``
    is set when the manager waits for something that happened here; ``complain`` logs a
    bad assignment once; ``control_path`` gives a volume's control socket path."""

    def __init__(
        self,
        address: str,
        dir: str,
        state: Callable[[], dict[str, Any]],
        save: Callable[[], None],
        news: asyncio.Event,
        complain: Callable[..., None],
        control_path: Callable[[str], str],
        node: str = "",
        tls_dir: str = "",
    ) -> None:
        self.address = address  # where engines' NBD endpoints listen (loopback by default)
        self.node = node  # this node: its agent's identity may use NBD over TLS
        self.tls_dir = tls_dir  # NBD over TLS with these credentials (a network address)
        self.dir = dir
        self.procs: dict[str, EngineProcess] = {}
        self.sharing: NodeShare | None = None  # the node's fair share, while share_node runs
        self._state = state
        self._save = save
        self._news = news
        self._complain = complain
        self._control_path = control_path
        self._spawned = asyncio.Event()  # an engine was started: the watcher looks closely
        # volume -> its engine's credentials directory (None: plaintext): set by the agent
        self.credentials: Callable[[str], str | None] = lambda volume: None
        # (volume, epoch) -> (data key, encryption id): an encrypted volume's key, from the
        # manager (POST /api/v1/volumes/{volume}/data-key); set by the agent
        self.key_source: Callable[[str, int], Awaitable[FetchedKeys]] | None = None
        # the replica server's unix socket: engines reach their local replica through it,
        # in clear (docs/security.md, "The local replica link"); set by the agent
        self.local_unix: str | None = None

    def _process(self, spec: EngineAssignment, port: int = 0) -> EngineProcess:
        """The one place an engine of this node is built (assigned or adopted)."""
        proc = EngineProcess(
            spec,
            self.address,
            self._control_path(spec.volume),
            os.path.join(self.dir, "logs", f"engine-{spec.volume}.log"),
            port,
            node=self.node,
            tls_dir=self.tls_dir,
        )
        proc.credentials = self.credentials
        proc.key_source = self.key_source
        proc.local_unix = self.local_unix
        return proc

    async def adopt(self, engines: Any) -> set[int]:
        """Take over the engines agent.json's ``children.engines`` recorded, those that run
        exactly the recorded arguments and answer ``status``. -> the PIDs adopted."""
        adopted: set[int] = set()
        for volume, rec in engines.items() if isinstance(engines, dict) else ():
            try:
                spec = EngineAssignment.model_validate(rec["spec"])
                check_engine(spec)
                pid, argv, port = int(rec["pid"]), list(rec["argv"]), int(rec["port"])
            except (KeyError, TypeError, ValueError):
                continue
            if spec.volume != volume:
                continue
            eng = self._process(spec, port)
            if await eng.adopt(pid, argv):
                self.procs[volume] = eng
                adopted.add(pid)
                log.info(
                    "adopted the engine of volume %s (epoch %d, pid %d) on %s",
                    volume,
                    spec.epoch,
                    pid,
                    hostport(eng.host, eng.port),
                )
        return adopted

    def watch(self) -> list[EngineProcess]:
        """Note engines that came up or died; restart dead ones still assigned (the data
        path does not wait for the manager). -> the engines that run now."""
        for eng in list(self.procs.values()):
            event = eng.poll()
            if event == "ready":
                log.info(
                    "engine for volume %s (epoch %d) serves %s", eng.volume, eng.epoch, eng.endpoint
                )
            elif event == "exited" and eng.state is EngineState.DOWN:
                log.warning(
                    "%s; restarting it in %.1f s",
                    eng.error,
                    max(0.0, eng.backoff.not_before - time.monotonic()),
                )
            if eng.state is EngineState.DOWN and eng.backoff.due:
                self._spawn(eng)
        return [e for e in self.procs.values() if e.running]

    async def report(self) -> list[EngineReport]:
        running = self.watch()
        t = time.monotonic()
        await asyncio.gather(*(e.refresh() for e in running if e.status_due(t)))
        return [e.report() for e in self.procs.values()]

    def _spawn(self, eng: EngineProcess) -> None:
        if eng.needs_key:  # fetch the data key first (async), then start it
            if eng.key_fetch is None or eng.key_fetch.done():
                eng.key_fetch = asyncio.create_task(self._fetch_key_then_spawn(eng))
            return
        try:
            eng.spawn()
        except (OSError, CargoholdError) as e:  # e.g. its certificate has not come yet
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
        self._save()

    async def _fetch_key_then_spawn(self, eng: EngineProcess) -> None:
        spec = eng.spec
        try:
            await eng.fetch_key()
        except CargoholdError as e:  # the manager refuses, no KEK, no manager: try later
            eng.error = f"cannot start the engine of volume {eng.volume}: {e}"
            log.error("%s (next try in %.1f s)", eng.error, eng.backoff.failed())
            if eng.state is EngineState.REPLACING:
                eng.move("spawn_failed")
            return
        if (
            eng.spec.epoch != spec.epoch
            or self.procs.get(eng.volume) is not eng
            or eng.state not in (EngineState.DOWN, EngineState.REPLACING)
        ):
            eng.drop_key()  # assigned otherwise meanwhile: fetched again for that one
            return
        self._spawn(eng)

    def converge(self, assigned: list[EngineAssignment]) -> None:
        wanted: dict[str, EngineAssignment] = {}
        for a in assigned:
            try:
                check_engine(a)
                if a.volume in wanted:
                    raise ValueError("the volume is assigned twice")
            except ValueError as e:
                self._complain("skipping the engine assignment of volume %r: %s", a.volume, e)
                continue
            wanted[a.volume] = a
        for old in list(self.procs.values()):
            if old.volume not in wanted and old.state is not EngineState.RETIRING:
                old.move("retire")
                if old.changing is not None:
                    old.changing.cancel()
                old.transition = asyncio.create_task(self._retire(old))
        for a in wanted.values():
            eng = self.procs.get(a.volume)
            if eng is None:
                port = int(self._state().get("engine_ports", {}).get(a.volume, 0) or 0)
                eng = self.procs[a.volume] = self._process(a, port)
                self._spawn(eng)
            elif eng.state in (EngineState.RETIRING, EngineState.REPLACING):
                continue  # being stopped or replaced: look again next round
            elif a.epoch != eng.epoch:
                eng.move("replace")
                if eng.changing is not None:
                    eng.changing.cancel()
                eng.transition = asyncio.create_task(self._replace(eng, a))
            else:
                eng.spec = a  # the replica set may have changed; restarts use the newest
                if eng.running and eng.status and (eng.changing is None or eng.changing.done()):
                    plan = eng.replica_plan(READD_EVERY)
                    if plan:
                        eng.changing = asyncio.create_task(self._change_replicas(eng, plan))
                if eng.qos_due():  # new QoS limits: to the running engine, now
                    eng.qos_push = asyncio.create_task(eng.push_qos())
                eng.apply_nice()  # a new weight: its CPU priority too
                if key_rotation.push_due(eng):  # newer data keys: to the running engine
                    eng.keys.push = asyncio.create_task(key_rotation.push(eng))

    async def _retire(self, eng: EngineProcess) -> None:
        await eng.stop()
        log.info(
            "stopped engine for volume %s (epoch %d): no longer assigned here",
            eng.volume,
            eng.epoch,
        )
        if self.procs.get(eng.volume) is eng:
            del self.procs[eng.volume]
        self._state().get("engine_ports", {}).pop(eng.volume, None)
        self._save()
        self._news.set()  # the manager waits for it (a detach, a delete)

    async def _replace(self, eng: EngineProcess, a: EngineAssignment) -> None:
        log.info(
            "volume %s moves from epoch %d to %d: replacing its engine",
            eng.volume,
            eng.epoch,
            a.epoch,
        )
        try:
            await eng.stop()
        except Exception:
            if eng.state is EngineState.REPLACING:
                eng.move("spawn_failed")  # DOWN: restarted after its back-off
            raise
        if eng.state is not EngineState.REPLACING:
            return  # retired while it was being stopped: it stays stopped
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

    async def watch_starting(self, news: asyncio.Event) -> None:
        """News when a starting engine's NBD server comes up or it dies: the manager hears
        of it at once, not when the held heartbeat ends."""
        told: set[tuple[str, int | None, bool]] = set()  # (volume, pid, up): said once
        while True:
            if any(e.child is not None and not e.ready for e in self.procs.values()):
                await asyncio.sleep(STARTING_POLL)
            else:  # none starting: sleep until one is started (or a while)
                self._spawned.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spawned.wait(), 1.0)
                continue
            if len(told) > 10_000:
                told.clear()
            for eng in self.procs.values():
                if eng.child is None or eng.ready:
                    continue
                if eng.state in (EngineState.RETIRING, EngineState.REPLACING):
                    continue
                alive = eng.alive
                if alive and not nbd_listening(eng.child):
                    continue
                key = (eng.volume, eng.pid, alive)
                if key not in told:
                    told.add(key)
                    news.set()

    async def share_node(
        self,
        budget: int,
        bandwidth: int = 0,
        every: float = FAIR_SHARE_EVERY,
        latency_target_us: int = 0,
    ) -> None:
        """Divide the node's IOPS ``budget`` and bytes/s ``bandwidth`` (0: either not
        shared) among its busy volumes by weight while they contend for it (agent settings
        ``node_iops``, ``node_bandwidth``; docs/qos.md): each ``every`` seconds, ask the
        running engines for their counters, and give each its fair IOPS and bandwidth
        limits (or take them away) through the engine op ``qos``. ``latency_target_us``
        (``node_latency_target``, 0: none): the IOPS budget is also held to what keeps the
        engines' mean service latency at it (latency_target.py); ``self.sharing`` is the
        policy, for the node's metrics."""
        target = LatencyTarget(float(latency_target_us)) if latency_target_us else None
        policy = NodeShare(float(budget) if budget else math.inf, float(bandwidth), target=target)
        self.sharing = policy
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            running = [
                e for e in self.procs.values() if e.running and e.state is EngineState.RUNNING
            ]
            looks = await asyncio.gather(
                *(e.link.status(timeout=min(2.0, every)) for e in running),
                return_exceptions=True,
            )
            seen = {
                e.volume: (e.spec.qos, st)
                for e, st in zip(running, looks, strict=True)
                if isinstance(st, dict)
            }
            try:
                fair = policy.divide(loop.time(), seen)
            except Exception:  # a bug here must not stop the node's engines
                log.exception("fair sharing of the node failed; trying again")
                continue
            for e in running:
                if e.volume not in fair:
                    continue
                e.fair_iops = fair[e.volume].iops
                e.fair_bandwidth = fair[e.volume].bandwidth
                if isinstance(looks[running.index(e)], dict):
                    e.status = dict(e.status, qos=seen[e.volume][1].get("qos", {}))
                if e.qos_due():
                    e.qos_push = asyncio.create_task(e.push_qos())

    def tasks(self) -> list[asyncio.Task[None]]:
        """The replacements, retirements and replica changes under way (cancelled at
        shutdown)."""
        return [
            t
            for e in self.procs.values()
            for t in (e.transition, e.changing, e.qos_push, e.keys.push)
            if t is not None
        ]

    async def stop_all(self) -> None:
        """Stop every engine (SIGTERM: they flush and close) and forget them."""
        engines = list(self.procs.values())
        await asyncio.gather(*(e.stop() for e in engines))
        for e in engines:
            log.info("stopped engine for volume %s (epoch %d)", e.volume, e.epoch)
        self.procs.clear()
