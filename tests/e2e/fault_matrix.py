"""Issue 7's fault matrix: scenarios against a real ``LocalCluster`` in network namespaces,
each run under the checker's workload (``cargohold.verify``), docs/reliability.md.

Every scenario is a function ``scenario(env, **params) -> Outcome``: it creates a fresh
volume, attaches it, runs the workload (over NBD, from inside the attach node's
namespace, in a thread that entered it) while it injects the fault, heals, waits for the
volume to converge (healthy: every wanted replica RW and running, the engine running on
the attach node), stops the workload, then reads the volume back through the engine and
judges it against the history (``check_volume``), compares a SHA-256 of every replica's
full content (read from its replica server at the engine's epoch: that fences no one),
and records which replicas were rebuilt and how (delta or full, from the engine's status
polled while converging). The outcome carries the ``CheckResult`` for
``SoakSummary.add``. The volume is deleted at the end so that the cluster can run the next
scenario.

Nothing here kills a process it did not start: replica servers and engines are found among
the members of a node's process group (the launcher's record of the agent we started).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cargohold.agent.engine_link import EngineLink
from cargohold.constants import BLOCK_SIZE
from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster
from cargohold.launcher.netns import call_in
from cargohold.launcher.processes import group_members, proc_stat
from cargohold.verify.checker import RULE_ACKED, CheckResult, check_volume
from cargohold.verify.client import Pool
from cargohold.verify.history import History
from cargohold.verify.workload import Workload, WorkloadSpec

MiB = 1 << 20
JSON = dict[str, Any]


class ScenarioFailed(AssertionError):
    pass


def until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as e:  # a manager restarting, a node coming back
            last = f"{type(e).__name__}: {e}"
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise ScenarioFailed(f"timed out after {timeout:g} s waiting for {what} (last: {last})")
        time.sleep(every)


# --- the environment a scenario runs in --------------------------------------------------


@dataclass
class Env:
    cluster: LocalCluster
    api: ManagerClient
    workdir: str
    replica_timeout: float = 3.0  # CARGOHOLD_ENGINE_REPLICA_TIMEOUT of the cluster
    node_down_after: float = 2.0
    size: int = 16 * MiB
    load_seconds: float = 4.0  # workload before and after the fault
    converge_timeout: float = 120.0
    small_disk_node: str | None = None  # a node whose disk-0 is a small loop-mounted ext4
    rng: random.Random = field(default_factory=random.Random)
    seq: int = 0

    def vol_name(self, what: str) -> str:
        self.seq += 1
        return f"{what}-{self.seq}"[:40]


@dataclass
class Outcome:
    name: str
    result: CheckResult | None = None  # the main volume check (for SoakSummary.add)
    extra_checks: list[CheckResult] = field(default_factory=list)
    converge_seconds: float | None = None
    rebuilt: dict[str, str] = field(default_factory=dict)  # replica id -> "delta"/"full"
    digests_equal: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return sum(r.history["writes"] for r in self.checks)

    @property
    def violations(self) -> int:
        return sum(r.violations_total + len(r.read_violations) for r in self.checks)

    @property
    def checks(self) -> list[CheckResult]:
        return ([self.result] if self.result else []) + self.extra_checks

    @property
    def detail(self) -> str:
        rb = ", ".join(f"{k.rsplit('-', 1)[-1]}:{v}" for k, v in sorted(self.rebuilt.items()))
        return "; ".join([*(["rebuilt " + rb] if rb else []), *self.notes])

    def summary_result(self) -> CheckResult:
        """One CheckResult standing for all of this scenario's checks (SoakSummary.add)."""
        assert self.result is not None
        r = self.result
        if not self.extra_checks:
            return r
        return dataclasses.replace(
            r,
            history=dict(r.history, writes=self.writes),
            violations_total=sum(c.violations_total for c in self.checks),
            read_violations=[v for c in self.checks for v in c.read_violations],
        )


# --- namespaces, processes, engines ------------------------------------------------------


def in_ns(ns: str | None, coro_fn: Callable[[], Any]) -> Any:
    """Run ``asyncio.run(coro_fn())`` in a thread inside namespace ``ns``."""
    return call_in(ns, lambda: asyncio.run(coro_fn()))


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def node_children(c: LocalCluster, node: str, kind: str, volume: str | None = None) -> list[int]:
    """PIDs in node's process group (the agent we started) running ``cargohold <kind>``."""
    c.reload()
    pgid = c.nodes[node].pgid
    if pgid is None:
        return []
    out = []
    for pid in group_members(pgid):
        argv = cmdline(pid)
        if kind not in argv:
            continue
        if volume is not None and volume not in argv:
            continue
        out.append(pid)
    return out


def gone(pid: int) -> bool:
    st = proc_stat(pid)
    return st is None or st[0] in "ZX"


def restore(env: Env) -> None:
    """Undo what a failed scenario may have left: partitions, shaping, dead agents or
    managers (only the processes the launcher recorded for this cluster)."""
    c = env.cluster
    for name in c.nodes:
        with contextlib.suppress(Exception):
            c.heal_node(name)
        with contextlib.suppress(Exception):
            tc(c, name, "del", "root")
    c.reload()
    for m in c.managers:
        if not m.running():
            with contextlib.suppress(Exception):
                c.start_manager(m.id, timeout=60)
    for name, n in c.nodes.items():
        if not n.running():
            with contextlib.suppress(Exception):
                c.start_node(name, timeout=60)


def sigkill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_replica_server(env: Env, node: str) -> None:
    pids = node_children(env.cluster, node, "replica-server")
    if not pids:
        raise ScenarioFailed(f"no replica server runs on {node}")
    sigkill(pids)


def kill_engine(env: Env, node: str, volume: str) -> int:
    pids = node_children(env.cluster, node, "engine", volume)
    if not pids:
        raise ScenarioFailed(f"no engine of {volume} runs on {node}")
    sigkill(pids)
    return pids[0]


def control_path(c: LocalCluster, node: str, volume: str) -> str:
    """The engine's control socket (the agent's rule, cargohold/agent/agent.py)."""
    d = c.nodes[node].dir
    path = os.path.join(d, "run", f"{volume}.sock")
    if len(path.encode()) < 100:
        return path
    short = hashlib.sha256(d.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"cargohold-{short}", f"{volume}.sock")


def engine_status(c: LocalCluster, node: str, volume: str) -> JSON:
    return asyncio.run(EngineLink(control_path(c, node, volume)).status(timeout=3.0))


# --- the workload, in a node's namespace --------------------------------------------------


class Load:
    """The checker's workload over NBD from inside ``ns``, in a thread, until stopped."""

    def __init__(
        self,
        ns: str | None,
        uri: str,
        spec: WorkloadSpec,
        history_path: str,
        connections: int = 3,
    ) -> None:
        self.ns, self.uri, self.spec = ns, uri, spec
        self.path = history_path
        self.connections = connections
        self.history: History | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wl: Workload | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._main, name="fault-load", daemon=True)

    def start(self) -> Load:
        self.thread.start()
        if not self._started.wait(60):
            raise ScenarioFailed("the workload did not connect in 60 s")
        if self.error:
            raise ScenarioFailed(f"the workload could not start: {self.error}")
        return self

    def _main(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            deadline = time.monotonic() + 30
            while True:
                try:
                    pool = await Pool.connect(self.uri, self.connections)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.3)
            with open(self.path, "w") as stream:
                try:
                    self._wl = Workload(pool, self.spec, stream)
                    self._started.set()
                    self.history = await self._wl.run()
                finally:
                    await pool.close()

        try:
            call_in(self.ns, lambda: asyncio.run(go()))
        except BaseException as e:
            self.error = e
        finally:
            self._started.set()

    @property
    def acked(self) -> int:
        wl = self._wl
        return wl.history.counts()["writes_acked"] if wl is not None else 0

    def wait_acked(self, more: int, timeout: float) -> None:
        target = self.acked + more
        until(f"{more} more acknowledged writes", lambda: self.acked >= target, timeout)

    def stop(self, timeout: float = 120.0) -> History:
        if self._loop is not None and self._wl is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wl.stop, "stopped by the scenario")
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise ScenarioFailed("the workload did not stop (an NBD request hangs)")
        if self.history is None:
            raise ScenarioFailed(f"the workload failed: {self.error!r}")
        return self.history


def check(ns: str | None, uri: str, history: History, rule: str = RULE_ACKED) -> CheckResult:
    async def go() -> CheckResult:
        pool = await Pool.connect(uri, 2)
        try:
            return await check_volume(pool, history, rule)
        finally:
            await pool.close()

    return in_ns(ns, go)


def read_blocks(ns: str | None, uri: str, first: int, n: int) -> bytes:
    async def go() -> bytes:
        pool = await Pool.connect(uri, 1)
        try:
            out = bytearray()
            for b in range(first, first + n, 1024):
                out += await pool.read(b * BLOCK_SIZE, min(1024, first + n - b) * BLOCK_SIZE)
            return bytes(out)
        finally:
            await pool.close()

    return in_ns(ns, go)


# --- volumes -------------------------------------------------------------------------------


def rw_running(v: JSON) -> set[str]:
    return {r["id"] for r in v["replicas"] if r["mode"] == "RW" and r["state"] == "running"}


def converged(node: str) -> Callable[[JSON], bool]:
    def ok(v: JSON) -> bool:
        live = [r for r in v["replicas"] if r["state"] != "deleting"]
        eng = v.get("engine") or {}
        return (
            v["state"] == "attached"
            and v["attached_node"] == node
            and eng.get("node") == node
            and bool(eng.get("running"))
            and bool(v["endpoint"])
            and v["robustness"] == "healthy"
            and len(rw_running(v)) == v["replicas_wanted"] == len(live)
        )

    return ok


def create_attached(env: Env, what: str, replicas: int = 2, stale: float = 60.0) -> JSON:
    name = env.vol_name(what)
    env.api.create_volume(name, env.size, replicas=replicas, stale_replica_timeout=stale)
    v = env.api.wait_volume(name, lambda v: all(r["state"] == "stopped" for r in v["replicas"]), 60)
    nodes = sorted(r["node"] for r in v["replicas"])
    env.api.attach(name, nodes[0])
    return env.api.wait_volume(name, converged(nodes[0]), 90)


def remove(env: Env, name: str) -> None:
    with contextlib.suppress(Exception):
        env.api.detach(name)
        env.api.wait_volume(name, lambda v: v["state"] == "detached", 60)
        env.api.delete_volume(name)
        env.api.wait_gone(name, 60)


def wait_converged(
    env: Env, name: str, node: str, out: Outcome, t_fault: float, timeout: float | None = None
) -> JSON:
    """Wait until converged; note rebuilds seen in the engine's status meanwhile; set the
    time to converge (from ``t_fault``)."""

    def note(_: JSON) -> None:
        with contextlib.suppress(Exception):
            st = engine_status(env.cluster, node, name)
            for r in st["replicas"]:
                rb = r.get("rebuild")
                if rb and rb.get("full") is not None:
                    out.rebuilt[r["id"]] = "full" if rb["full"] else "delta"

    def both(v: JSON) -> bool:
        if not converged(node)(v):
            return False
        st = engine_status(env.cluster, node, name)
        return len(st["replicas"]) == v["replicas_wanted"] and all(
            r["mode"] == "RW" for r in st["replicas"]
        )

    def ok(v: JSON) -> bool:
        try:
            return both(v)
        except Exception:
            return False

    v = env.api.wait_volume(name, ok, timeout or env.converge_timeout, on_progress=note)
    out.converge_seconds = time.monotonic() - t_fault
    note(v)
    return v


def engine_dropped(env: Env, node: str, name: str, rid: str, timeout: float = 60) -> None:
    """Wait until the engine no longer has ``rid`` RW (it dropped it)."""
    until(
        f"the engine dropping {rid}",
        lambda: any(
            r["id"] == rid and r["mode"] != "RW"
            for r in engine_status(env.cluster, node, name)["replicas"]
        ),
        timeout,
        every=0.05,
    )


def replica_digests(env: Env, v: JSON) -> dict[str, str]:
    """SHA-256 of each live replica's content, read from its server at the engine's epoch."""
    from cargohold.replica.client import ReplicaClient

    nodes = {n["name"]: n for n in env.api.nodes()}
    epoch = v["engine"]["epoch"]
    ns = env.cluster.nodes[v["attached_node"]].netns

    async def go() -> dict[str, str]:
        out = {}
        for r in v["replicas"]:
            if r["state"] == "deleting":
                continue
            n = nodes[r["node"]]
            c = await ReplicaClient.connect(n["address"], n["replica_port"])
            try:
                await c.open(r["id"], epoch)
                h = hashlib.sha256()
                for off in range(0, v["size_bytes"], 4 * MiB):
                    h.update(bytes(await c.read(off, min(4 * MiB, v["size_bytes"] - off))))
                out[r["id"]] = h.hexdigest()
            finally:
                await c.close()
        return out

    return in_ns(ns, go)


def spec(env: Env, first: int = 0, nblocks: int | None = None, seconds: float | None = None):
    return WorkloadSpec(
        seconds=seconds,
        writes=None if seconds else 10**9,
        depth=4,
        first_block=first,
        nblocks=nblocks,
        seed=env.rng.getrandbits(62),
    )


@contextlib.contextmanager
def scenario(env: Env, what: str, replicas: int = 2, stale: float = 60.0) -> Iterator[tuple]:
    """A fresh attached volume and its load; finally the volume is removed."""
    v = create_attached(env, what, replicas, stale)
    try:
        yield v
    finally:
        restore(env)
        remove(env, v["name"])


def start_load(env: Env, v: JSON, tag: str, first: int = 0, nblocks: int | None = None) -> Load:
    node = v["attached_node"]
    path = os.path.join(env.workdir, f"{v['name']}-{tag}.jsonl")
    return Load(env.cluster.nodes[node].netns, v["endpoint"], spec(env, first, nblocks), path)


def finish(env: Env, out: Outcome, v: JSON, loads: list[Load], rule: str = RULE_ACKED) -> Outcome:
    """Stop the loads, check every history through the engine, compare replica digests."""
    hs = [ld.stop() for ld in loads]
    v = env.api.volume(v["name"])
    ns = env.cluster.nodes[v["attached_node"]].netns
    for i, h in enumerate(hs):
        r = check(ns, v["endpoint"], h, rule)
        if i == 0:
            out.result = r
        else:
            out.extra_checks.append(r)
    v = env.api.wait_volume(v["name"], converged(v["attached_node"]), 60)
    d = replica_digests(env, v)
    out.digests_equal = len(set(d.values())) == 1 and len(d) == v["replicas_wanted"]
    if not out.digests_equal:
        out.notes.append(f"replica digests differ: {d}")
    return out


def replica_on(v: JSON, node: str) -> str:
    return next(r["id"] for r in v["replicas"] if r["node"] == node and r["state"] != "deleting")


def other_nodes(v: JSON) -> list[str]:
    return sorted(r["node"] for r in v["replicas"] if r["node"] != v["attached_node"])


# --- 1: SIGKILL a replica server; its agent restarts it -------------------------------------


def replica_server_killed(env: Env) -> Outcome:
    out = Outcome("1 replica server SIGKILL")
    with scenario(env, "s1") as v:
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
        t = time.monotonic()
        kill_replica_server(env, victim)
        engine_dropped(env, v["attached_node"], v["name"], rid)
        load.wait_acked(300, 60)  # writes go on without it
        v = wait_converged(env, v["name"], v["attached_node"], out, t)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        if rid not in rw_running(v):
            out.notes.append(f"{rid} was replaced instead of rebuilt")
        if out.rebuilt.get(rid) != "delta":
            out.notes.append(f"{rid} rebuild: {out.rebuilt.get(rid)} (expected delta)")
    return out


# --- 2: SIGKILL the engine (the agent restarts it), then re-attach on another node ----------


def engine_killed(env: Env) -> Outcome:
    """The engine is restarted by its agent (same epoch, same port): clients reconnect. The
    workload's connections die with it, so phase A (before the kill) and phase B (after the
    restart) write disjoint block ranges; then the volume moves to another node (detach,
    attach: a new epoch) and phase C writes there. Every phase is checked at the end."""
    out = Outcome("2 engine SIGKILL + reattach elsewhere")
    with scenario(env, "s2") as v:
        name, node = v["name"], v["attached_node"]
        third = env.size // BLOCK_SIZE // 3
        a = start_load(env, v, "a", 0, third).start()
        a.wait_acked(300, 60)
        t = time.monotonic()
        old_pid = kill_engine(env, node, name)
        a.stop()
        until(
            "the engine restarted by its agent",
            lambda: [p for p in node_children(env.cluster, node, "engine", name) if p != old_pid],
            30,
        )
        v = wait_converged(env, name, node, out, t)
        b = start_load(env, v, "b", third, third).start()
        b.wait_acked(300, 60)
        b.stop()
        # re-attach on another node: the volume moves, a new engine with a new epoch
        dest = other_nodes(v)[0]
        env.api.detach(name)
        env.api.wait_volume(name, lambda v: v["state"] == "detached", 60)
        env.api.attach(name, dest)
        v = env.api.wait_volume(name, converged(dest), 90)
        c_ = start_load(env, v, "c", 2 * third, env.size // BLOCK_SIZE - 2 * third).start()
        c_.wait_acked(300, 60)
        # loads a and b are stopped already: their stop() returns their histories
        finish(env, out, v, [c_, a, b])
        out.notes.append(f"restarted on {node}, moved to {dest}")
    return out


# --- 3: SIGKILL the node agent and the manager: the data path goes on --------------------


def control_plane_killed(env: Env) -> Outcome:
    out = Outcome(f"3 agent+manager SIGKILL ({env.cluster.backend})")
    c = env.cluster
    with scenario(env, "s3") as v:
        name, node = v["name"], v["attached_node"]
        half = env.size // BLOCK_SIZE // 2
        load = start_load(env, v, "a", 0, half).start()
        load.wait_acked(300, 60)
        engine_pids = node_children(c, node, "engine", name)
        t = time.monotonic()
        c.reload()
        agent_pid = c.nodes[node].pid
        assert agent_pid is not None
        sigkill([agent_pid])  # only the agent: its engine and replica server stay
        for m in c.managers:  # every manager (etcd: both): no control plane at all
            c.kill_manager(m.id)
        # the data path goes on with no agent on the node and no manager
        load.wait_acked(500, 60)
        stalled = time.monotonic() - t
        if node_children(c, node, "engine", name) != engine_pids:
            out.notes.append("the engine was replaced while the agent was away (unexpected)")
        for m in c.managers:
            c.start_manager(m.id, timeout=60)
        until("the old agent gone", lambda: gone(agent_pid), 10)
        acked_before = load.acked
        c.start_node(node, timeout=60)  # same dir, ports and namespace
        v = wait_converged(env, name, node, out, t)
        # the restarted agent stops what the old one left running and starts the engine
        # again (same epoch and port): the workload's connections may drop with it
        restarted = node_children(c, node, "engine", name) != engine_pids
        load.stop()
        b = start_load(env, v, "b", half, half).start()
        b.wait_acked(300, 60)
        finish(env, out, v, [b, load])
        out.notes.append(
            f"{acked_before} acked before the agent restart, 500 of them with no agent and "
            f"no manager ({stalled:.1f} s); engine restarted by the new agent: {restarted}"
        )
    return out


# --- 4: partition a replica node, shorter / longer than stale_replica_timeout ------------


def replica_partitioned(env: Env, longer: bool) -> Outcome:
    stale = 8.0 if longer else 120.0
    out = Outcome(f"4 replica partition {'> ' if longer else '< '}stale timeout")
    c = env.cluster
    with scenario(env, "s4l" if longer else "s4s", stale=stale) as v:
        name, node = v["name"], v["attached_node"]
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
        t = time.monotonic()
        c.partition_node(victim)
        try:
            env.api.wait_volume(
                name,
                lambda v: {r["id"]: r["state"] for r in v["replicas"]}.get(rid) == "failed",
                env.node_down_after + env.replica_timeout + 30,
            )
            load.wait_acked(300, 60)
            if longer:
                env.api.wait_volume(
                    name,
                    lambda v: any(r["node"] not in (node, victim) for r in v["replicas"]),
                    stale + 60,
                )
        finally:
            c.heal_node(victim)
        v = wait_converged(env, name, node, out, t)
        if longer:
            until(
                f"{rid} deleted",
                lambda: rid not in {r["id"] for r in env.api.volume(name)["replicas"]},
                60,
            )
            v = env.api.volume(name)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        ids = rw_running(v)
        if longer:
            if rid in ids:
                out.notes.append(f"{rid} came back RW although it was replaced")
            new = [r for r in ids if r != replica_on(v, node)]
            if new and out.rebuilt.get(new[0]) != "full":
                out.notes.append(f"new replica {new[0]} rebuild {out.rebuilt.get(new[0])}")
        else:
            if rid not in ids:
                out.notes.append(f"{rid} was replaced although the partition was short")
            elif out.rebuilt.get(rid) != "delta":
                out.notes.append(f"{rid} rebuild: {out.rebuilt.get(rid)} (expected delta)")
    return out


# --- 5: the engine's node is cut off; the volume fails over; the old engine is fenced -----


def engine_node_partitioned(env: Env) -> Outcome:
    """The engine's node is cut off; the volume is attached on another node (the old node
    is down: a takeover). The old engine keeps running in its namespace and keeps its
    local replica: a workload writes through it from inside that namespace after the
    takeover, to a block range of its own (zeros before). After the heal, reading through
    the new engine, that range must still be zeros: nothing the old engine acknowledged
    after the takeover exists. Everything acknowledged before the cut (phase A) is there."""
    out = Outcome("5 engine node partitioned, failover")
    c = env.cluster
    with scenario(env, "s5", replicas=2, stale=90.0) as v:
        name, old = v["name"], v["attached_node"]
        forked = replica_on(v, old)
        half = env.size // BLOCK_SIZE // 2
        a = start_load(env, v, "a", 0, half).start()
        a.wait_acked(400, 60)
        ha = a.stop()
        old_uri = v["endpoint"]
        t = time.monotonic()
        c.partition_node(old)
        try:
            until(
                f"{old} down",
                lambda: env.api.node(old)["state"] == "down",
                env.node_down_after + 30,
            )
            dest = other_nodes(v)[0]
            env.api.attach(name, dest, force=True)
            env.api.wait_volume(
                name,
                lambda v: (
                    (v.get("engine") or {}).get("node") == dest
                    and (v.get("engine") or {}).get("running")
                ),
                90,
            )
            # the old engine still runs over there: write through it after the takeover
            z = start_load(env, {**v, "endpoint": old_uri}, "old", half, half)
            z.spec.seconds = env.replica_timeout * 3 + 4
            z.spec.writes = None
            z.start()
            z.thread.join(z.spec.seconds + 60)
            hz = z.stop(timeout=120)
            zc = hz.counts()
            out.notes.append(
                f"old engine after takeover: {zc['writes_acked']} acked, "
                f"{zc['writes_failed']} failed, {zc['writes_lost']} lost"
            )
        finally:
            c.heal_node(old)
        v = wait_converged(env, name, dest, out, t)
        data = read_blocks(c.nodes[dest].netns, v["endpoint"], half, half)
        nonzero = sum(1 for i in range(half) if any(data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]))
        out.notes.append(f"blocks of the old engine's range not zero: {nonzero}")
        b = start_load(env, v, "b", half, half).start() if nonzero == 0 else None
        out.result = check(c.nodes[dest].netns, v["endpoint"], ha)
        if b is not None:
            b.wait_acked(200, 60)
            hb = b.stop()
            out.extra_checks.append(check(c.nodes[dest].netns, v["endpoint"], hb))
        v = env.api.wait_volume(name, converged(dest), 60)
        d = replica_digests(env, v)
        out.digests_equal = len(set(d.values())) == 1 and len(d) == 2
        out.fenced_nonzero = nonzero  # type: ignore[attr-defined]
        if forked not in {r["id"] for r in v["replicas"]}:
            out.notes.append(
                f"BUG: the old node's replica {forked} (forked by the old engine) was not "
                "rebuilt (full rebuild refused: 'generation N is below the newest this "
                "replica has seen'); it was replaced after stale_replica_timeout"
            )
        if nonzero:
            out.notes.append("SPLIT BRAIN: the old engine's writes exist")
    return out


# --- 6: a slow replica (tc tbf on its node's bridge port) --------------------------------


def tc(c: LocalCluster, node: str, *args: str) -> None:
    lab = c.lab
    assert lab is not None
    port = lab.node_port(c.nodes[node].index)
    subprocess.run(
        ["ip", "netns", "exec", lab.bridge_ns, "tc", "qdisc", *args[:1], "dev", port, *args[1:]],
        check=True,
        capture_output=True,
    )


def slow_replica(env: Env) -> Outcome:
    """Traffic into one replica node is shaped to 32 kbit/s (tbf on its bridge port, queue
    up to 30 s): its replica answers later than the engine's replica timeout, is dropped,
    and client writes stall at most about that long. After the shaping is removed the
    agent re-adds it and it is rebuilt (delta)."""
    out = Outcome("6 slow replica (tc tbf)")
    c = env.cluster
    with scenario(env, "s6") as v:
        name, node = v["name"], v["attached_node"]
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
        t = time.monotonic()
        tc(c, victim, "add", "root", "tbf", "rate", "32kbit", "burst", "4kb", "latency", "30s")
        try:
            env.api.wait_volume(
                name,
                lambda v: {r["id"]: r["mode"] for r in v["replicas"]}.get(rid) != "RW",
                env.replica_timeout + 30,
            )
            load.wait_acked(300, 60)
        finally:
            tc(c, victim, "del", "root")
        v = wait_converged(env, name, node, out, t)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        h = load.history
        assert h is not None
        tab = h.table()
        lat = (
            [
                t1 - t0
                for t0, t1, st in zip(
                    tab.t0.tolist(), tab.t1.tolist(), tab.status.tolist(), strict=False
                )
                if st == 1
            ]
            if hasattr(tab, "t0")
            else []
        )
        worst = max(lat) if lat else float("nan")
        out.worst_latency = worst  # type: ignore[attr-defined]
        out.notes.append(
            f"worst write latency {worst:.2f} s (replica timeout {env.replica_timeout:g} s)"
        )
        if out.rebuilt.get(rid) != "delta":
            out.notes.append(f"{rid} rebuild: {out.rebuilt.get(rid)} (expected delta)")
    return out


# --- 7: the disk under one replica fills up ----------------------------------------------


def disk_full(env: Env) -> Outcome:
    """One node's disk is a small loop-mounted ext4 (``env.small_disk_node``). A filler file
    leaves it ~256 KiB free before the workload starts: that replica's writes fail with
    ENOSPC, the engine drops it, the volume serves on. The filler is removed; the agent
    re-adds the replica (every 5 s) and it is rebuilt."""
    out = Outcome("7 disk full on one replica")
    node = env.small_disk_node
    if node is None:
        out.notes.append("SKIPPED: no small disk")
        return out
    disk = os.path.join(env.cluster.nodes[node].dir, "disk-0")
    with scenario(env, "s7", replicas=len(env.cluster.nodes)) as v:
        name = v["name"]
        rid = replica_on(v, node)
        st = os.statvfs(disk)
        filler = os.path.join(disk, "filler")
        room = st.f_bavail * st.f_frsize - 256 * 1024
        subprocess.run(["fallocate", "-l", str(max(room, 0)), filler], check=True)
        try:
            load = start_load(env, v, "a").start()
            t = time.monotonic()
            env.api.wait_volume(
                name,
                lambda v: {r["id"]: r["mode"] for r in v["replicas"]}.get(rid) != "RW",
                60,
            )
            load.wait_acked(300, 60)
            err = {r["id"]: r["error"] for r in env.api.volume(name)["replicas"]}.get(rid, "")
            out.notes.append(f"dropped: {err[:80]}")
        finally:
            os.unlink(filler)
        v = wait_converged(env, name, v["attached_node"], out, t)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        if rid not in rw_running(v):
            out.notes.append(f"{rid} was replaced")
    return out


# --- 8: bit rot ----------------------------------------------------------------------------


def head_data_file(c: LocalCluster, node: str, rid: str) -> str:
    d = os.path.join(c.nodes[node].dir, "disk-0", "replicas", rid)
    with open(os.path.join(d, "replica.meta"), "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[12:16], "big")
    meta = json.loads(raw[20 : 20 + n])
    return os.path.join(d, f"layer-{int(meta['head']):06d}.data")


def rot(path: str, blocks: list[int]) -> None:
    """Flip 16 bytes in the middle of each block's data (block b at 4096 + b*4096)."""
    fd = os.open(path, os.O_RDWR)
    try:
        for b in blocks:
            off = BLOCK_SIZE + b * BLOCK_SIZE + 1000
            old = os.pread(fd, 16, off)
            os.pwrite(fd, bytes(x ^ 0xFF for x in old), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def written_blocks(h: History, k: int, rng: random.Random) -> list[int]:
    tab = h.table()
    blocks = sorted(
        {int(b) for b, st in zip(tab.block[1:], tab.status[1:], strict=True) if st == 1}
    )
    return rng.sample(blocks, min(k, len(blocks)))


def scrub(env: Env, v: JSON, node: str, rid: str) -> JSON:
    from cargohold.replica.client import ReplicaClient

    n = env.api.node(node)
    epoch = v["engine"]["epoch"]

    async def go() -> JSON:
        c = await ReplicaClient.connect(n["address"], n["replica_port"])
        try:
            await c.open(rid, epoch)
            return await c.scrub()
        finally:
            await c.close()

    return in_ns(env.cluster.nodes[v["attached_node"]].netns, go)


def bit_rot(env: Env, k: int = 8) -> Outcome:
    """(a) rot in the engine's local replica, in blocks the workload wrote: reads (the
    workload's, then the checker's full read-back) hit them, the engine re-reads from the
    other replica and repairs in place (counters). (b) rot in the other replica, which no
    read touches (reads go to the local replica first): a scrub of that replica finds
    exactly those blocks. Nothing in the product runs scrubs or repairs what a scrub
    finds; the product path that repairs it is a read through an engine that reads that
    replica: the volume is re-attached on that replica's node (local first), read back in
    full (the checker), and a second scrub finds nothing."""
    out = Outcome("8 bit rot (read repair, scrub)")
    c = env.cluster
    with scenario(env, "s8") as v:
        name, node = v["name"], v["attached_node"]
        other = other_nodes(v)[0]
        local, remote = replica_on(v, node), replica_on(v, other)
        a = start_load(env, v, "a").start()
        a.wait_acked(800, 60)
        ha = a.stop()
        t = time.monotonic()
        rb = written_blocks(ha, k, env.rng)
        rot(head_data_file(c, node, local), rb)
        # (a) the checker reads back every block: a's blocks with rot are repaired on read
        ra = check(c.nodes[node].netns, v["endpoint"], ha)
        st = engine_status(c, node, name)["counters"]
        out.notes.append(
            f"local rot {len(rb)} blocks: checksum_errors {st.get('checksum_errors')}, "
            f"repaired {st.get('repaired_blocks')}"
        )
        if st.get("repaired_blocks", 0) < 1:
            out.notes.append("READ REPAIR DID NOT HAPPEN")
        out.result = ra
        # (b) rot in the remote replica: found by scrub
        v = env.api.volume(name)
        rr = written_blocks(ha, k, env.rng)
        rot(head_data_file(c, other, remote), rr)
        rep = scrub(env, v, other, remote)
        found = sorted({int(x.get("block", x.get("lba", -1))) for x in rep["bad"]})
        out.notes.append(f"remote rot {len(set(rr))} blocks, scrub found {len(found)}")
        # repair: the engine moves to the rotted replica's node (reads local first)
        env.api.detach(name)
        env.api.wait_volume(name, lambda v: v["state"] == "detached", 60)
        env.api.attach(name, other)
        v = wait_converged(env, name, other, out, t)
        out.extra_checks.append(check(c.nodes[other].netns, v["endpoint"], ha, "flushed"))
        st = engine_status(c, other, name)["counters"]
        rep2 = scrub(env, v, other, remote)
        out.notes.append(
            f"after re-attach + read: repaired {st.get('repaired_blocks')}, "
            f"second scrub bad {len(rep2['bad'])}"
        )
        d = replica_digests(env, v)
        out.digests_equal = len(set(d.values())) == 1
    return out


# --- 9: crashes during a rebuild and during snapshot create / delete ----------------------


def crash_during_rebuild_and_snapshots(env: Env) -> Outcome:
    out = Outcome("9 crash in rebuild, snapshot create/delete")
    c = env.cluster
    with scenario(env, "s9") as v:
        name, node = v["name"], v["attached_node"]
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        q = env.size // BLOCK_SIZE // 4
        loads: list[Load] = []
        a = start_load(env, v, "a", 0, q).start()
        loads.append(a)
        a.wait_acked(200, 60)
        kill_replica_server(env, victim)
        a.wait_acked(1500, 90)  # a delta to copy (rebuilds are throttled in this cluster)
        t = time.monotonic()
        until(
            f"{rid} rebuilding",
            lambda: any(
                r["id"] == rid and r["mode"] == "WO"
                for r in engine_status(c, node, name)["replicas"]
            ),
            60,
            every=0.05,
        )
        pid = kill_engine(env, node, name)  # the engine dies mid-rebuild
        a.stop()
        until(
            "the engine restarted",
            lambda: [p for p in node_children(c, node, "engine", name) if p != pid],
            30,
        )
        v = wait_converged(env, name, node, out, t)
        ok_rebuild = out.converge_seconds
        # snapshot create, the engine killed right after it was asked for
        for i, kind in enumerate(("create", "delete")):
            ld = start_load(env, v, kind, (i + 1) * q, q).start()
            loads.append(ld)
            ld.wait_acked(300, 60)
            if kind == "create":
                op = env.api.create_snapshot(name, "snap")
            else:
                op = env.api.delete_snapshot(name, "snap")
            time.sleep(env.rng.uniform(0.0, 0.05))
            pid = kill_engine(env, node, name)
            ld.stop()
            with contextlib.suppress(Exception):
                env.api.wait_operation(op["id"], 90)
            res = env.api.operation(op["id"])
            snaps = {s["name"]: s["state"] for s in env.api.snapshots(name)}
            out.notes.append(f"snapshot {kind}: op {res['state']}, snapshots {snaps}")
            v = env.api.wait_volume(name, converged(node), env.converge_timeout)
            if kind == "create" and snaps.get("snap") != "ready":
                # a failed create leaves an error record or nothing: make one to delete
                with contextlib.suppress(Exception):
                    env.api.delete_snapshot(name, "snap")
                op2 = env.api.create_snapshot(name, "snap")
                env.api.wait_operation(op2["id"], 90)
        d = start_load(env, v, "d", 3 * q, env.size // BLOCK_SIZE - 3 * q).start()
        d.wait_acked(300, 60)
        finish(env, out, v, [d, *loads])
        out.converge_seconds = ok_rebuild
        if out.rebuilt.get(rid) is None:
            out.notes.append(f"{rid}: rebuild not seen after the restart")
    return out


# --- 10: two faults: a replica killed while another rebuilds ------------------------------


def two_faults(env: Env) -> Outcome:
    out = Outcome("10 replica killed while another rebuilds")
    c = env.cluster
    with scenario(env, "s10", replicas=3) as v:
        name, node = v["name"], v["attached_node"]
        first, second = other_nodes(v)
        r1 = replica_on(v, first)
        load = start_load(env, v, "a").start()
        load.wait_acked(200, 60)
        t = time.monotonic()
        kill_replica_server(env, first)
        load.wait_acked(1500, 90)
        until(
            f"{r1} rebuilding",
            lambda: any(
                r["id"] == r1 and r["mode"] == "WO"
                for r in engine_status(c, node, name)["replicas"]
            ),
            60,
            every=0.05,
        )
        kill_replica_server(env, second)
        load.wait_acked(300, 60)
        v = wait_converged(env, name, node, out, t)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
    return out


# --- the matrix ----------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Env], Outcome]] = {
    "replica-server-kill": replica_server_killed,
    "engine-kill-reattach": engine_killed,
    "control-plane-kill": control_plane_killed,
    "partition-short": lambda env: replica_partitioned(env, longer=False),
    "partition-long": lambda env: replica_partitioned(env, longer=True),
    "engine-node-failover": engine_node_partitioned,
    "slow-replica": slow_replica,
    "disk-full": disk_full,
    "bit-rot": bit_rot,
    "crash-rebuild-snapshot": crash_during_rebuild_and_snapshots,
    "two-faults": two_faults,
}


def problems(out: Outcome) -> list[str]:
    """What is wrong with an outcome (empty: the scenario passed)."""
    bad = []
    if out.result is None:
        bad.append("no check ran")
    if out.violations:
        bad.append(f"{out.violations} violations")
    if not out.digests_equal:
        bad.append("replicas differ")
    for n in out.notes:
        if any(
            w in n for w in ("SPLIT", "DID NOT", "differ", "expected", "replaced", "SKIP", "BUG")
        ):
            bad.append(n)
    return bad
