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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cargohold.agent.engine_link import EngineLink
from cargohold.constants import BLOCK_SIZE
from cargohold.control.client import ManagerClient, WaitTimeout
from cargohold.encryption import layout
from cargohold.launcher.cluster import LocalCluster
from cargohold.launcher.netns import call_in
from cargohold.launcher.processes import proc_stat
from cargohold.verify.checker import RULE_ACKED, CheckResult, check_volume
from cargohold.verify.client import Pool
from cargohold.verify.history import History
from cargohold.verify.workload import Workload, WorkloadSpec
from tests.support.processes import rot

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


READD_EVERY = 5.0  # the agent re-adds a dropped replica at most this often (agent.py)
HEARTBEAT = 1.0  # the agents' heartbeat interval (the manager's default)
SLACK = 10.0  # seconds of margin in every bound: a loaded 2-core VM shared with other runs


@dataclass
class Env:
    cluster: LocalCluster
    api: ManagerClient
    workdir: str
    replica_timeout: float = 3.0  # CARGOHOLD_ENGINE_REPLICA_TIMEOUT of the cluster
    node_down_after: float = 2.0
    rebuild_bandwidth: float = 4 * MiB  # CARGOHOLD_ENGINE_REBUILD_BANDWIDTH of the cluster
    size: int = 16 * MiB
    load_seconds: float = 4.0  # workload before and after the fault
    converge_timeout: float = 120.0
    small_disk_node: str | None = None  # a node whose disk-0 is a small loop-mounted ext4
    # scenarios' volumes are encrypted at rest (issue 19: ``volume create --encrypted`` with
    # the cluster's KEK): the workload and the checker see the engine's decrypted volume,
    # the replicas (digests, rebuilds) its stored one, ciphertext and tag blocks
    encrypted: bool = False
    rng: random.Random = field(default_factory=random.Random)
    seq: int = 0

    def vol_name(self, what: str) -> str:
        self.seq += 1
        return f"{what}-{self.seq}"[:40]

    @property
    def rebuild_seconds(self) -> float:
        """The longest a rebuild of one replica can take: the whole volume, throttled."""
        return stored_size(self.size, self.encrypted) / self.rebuild_bandwidth


def stored_size(size: int, encrypted: bool) -> int:
    """Bytes the replicas of a volume of ``size`` hold (encrypted: 65/64, with tag blocks)."""
    return layout.physical_size(layout.logical_size_for(size)) if encrypted else size


@dataclass
class Outcome:
    name: str
    result: CheckResult | None = None  # the main volume check (for SoakSummary.add)
    extra_checks: list[CheckResult] = field(default_factory=list)
    converge_seconds: float | None = None
    rebuilt: dict[str, str] = field(default_factory=dict)  # replica id -> "delta"/"full"
    digests_equal: bool = False
    replicas_checked: int = 0  # replicas whose digest was taken
    replicas_wanted: int = 0
    notes: list[str] = field(default_factory=list)  # what was measured, for people
    failed: list[str] = field(default_factory=list)  # expectations that did not hold
    converge_bound: float | None = None  # seconds the scenario must converge within
    bound_why: str = ""
    converge_from: str = "the fault"
    skipped: str = ""

    def expect(self, ok: bool, what: str) -> bool:
        """A check of this scenario: ``what`` is what must hold (and what it measured)."""
        if not ok:
            self.failed.append(what)
        return ok

    def bound(self, seconds: float, why: str, since: str = "the fault") -> None:
        self.converge_bound, self.bound_why, self.converge_from = seconds, why, since

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
    out = []
    for pid in c.node_processes(node):  # its agent's group and those of earlier agents
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
    # every node up first: the scenario before may have healed one a moment ago
    until(
        "every node up",
        lambda: all(n["state"] == "up" for n in env.api.nodes()),
        60,
    )
    name = env.vol_name(what)
    env.api.create_volume(
        name,
        env.size,
        replicas=replicas,
        stale_replica_timeout=stale,
        encrypted=True if env.encrypted else None,
    )
    v = env.api.wait_volume(name, lambda v: all(r["state"] == "stopped" for r in v["replicas"]), 60)
    nodes = sorted(r["node"] for r in v["replicas"])
    env.api.attach(name, nodes[0])
    return env.api.wait_volume(name, converged(nodes[0]), 90)


def remove(env: Env, name: str) -> None:
    with contextlib.suppress(Exception):
        env.api.detach(name)
        env.api.wait_detached(name, 60)
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


def per_replica(env: Env, v: JSON, ask: Callable[[Any, JSON], Awaitable[Any]]) -> dict[str, Any]:
    """``ask(client, replica)`` of each live replica of ``v``, over a connection to its
    server opened at the engine's epoch (from the engine's node namespace) as that node's
    agent (mutual TLS unless the cluster runs --plaintext); -> by id."""
    from cargohold.replica.client import ReplicaClient
    from tests.support.tls import node_agent_credentials

    nodes = {n["name"]: n for n in env.api.nodes()}
    epoch = v["engine"]["epoch"]
    tls = node_agent_credentials(env.cluster, v["attached_node"])

    async def go() -> dict[str, Any]:
        out = {}
        for r in v["replicas"]:
            if r["state"] == "deleting":
                continue
            n = nodes[r["node"]]
            c = await ReplicaClient.connect(
                n["address"], n["replica_port"], tls=tls, replica=r["id"]
            )
            try:
                await c.open(r["id"], epoch)
                out[r["id"]] = await ask(c, r)
            finally:
                await c.close()
        return out

    return in_ns(env.cluster.nodes[v["attached_node"]].netns, go)


def replica_digests(env: Env, v: JSON) -> dict[str, str]:
    """SHA-256 of each live replica's content, read from its server at the engine's epoch."""
    size = (v.get("encryption") or {}).get("stored_bytes") or v["size_bytes"]

    async def digest(c: Any, r: JSON) -> str:
        h = hashlib.sha256()
        for off in range(0, size, 4 * MiB):
            h.update(bytes(await c.read(off, min(4 * MiB, size - off))))
        return h.hexdigest()

    return per_replica(env, v, digest)


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
    digests(env, out, v)
    return out


def digests(env: Env, out: Outcome, v: JSON) -> None:
    d = replica_digests(env, v)
    out.replicas_checked, out.replicas_wanted = len(d), v["replicas_wanted"]
    out.digests_equal = len(set(d.values())) == 1
    out.expect(out.digests_equal, f"replicas identical (digests {d})")
    if env.encrypted:
        encryption_checks(env, out, v)


def found(doc: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a JSON document (depth first), or None."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        doc = list(doc.values())
    if isinstance(doc, list):
        for x in doc:
            if (got := found(x, key)) is not None:
                return got
    return None


def encryption_checks(env: Env, out: Outcome, v: JSON) -> None:
    """An encrypted scenario's volume was encrypted (the manager's record) and served by
    the encrypting device (its engine's status: key check passed, blocks encrypted by this
    engine); the authentication counters go into the notes (retries and repairs are not
    errors: the checker judges the reads)."""
    enc = v.get("encryption") or {}
    out.expect(bool(enc.get("id")), f"the volume is encrypted ({enc})")
    st = engine_status(env.cluster, v["attached_node"], v["name"])
    section = found(st, "key_check") and found(st, "encryption")
    counters = {
        k: n
        for k, n in (found(st, "counters") or {}).items()
        if k.startswith(("authentication_", "encrypted_", "decrypted_", "tag_block"))
    }
    out.expect(
        isinstance(section, dict) and section.get("key_check") == "ok",
        f"the engine serves it through the encrypting device, key check ok ({section})",
    )
    out.expect(
        counters.get("encrypted_blocks", 0) > 0,
        f"the engine encrypted the blocks it wrote ({counters})",
    )
    out.notes.append("encrypted: " + ", ".join(f"{k} {n}" for k, n in sorted(counters.items())))


def no_client_errors(out: Outcome, h: History, what: str) -> None:
    """Every write and flush of ``h`` was acknowledged: no error, no connection lost."""
    n = h.counts()
    bad = {k: n[k] for k in ("writes_failed", "writes_lost", "writes_in_flight")}
    bad["flushes_not_acked"] = n["flushes"] - n["flushes_acked"]
    out.expect(not any(bad.values()), f"{what}: no failed or lost client I/O ({bad})")
    out.expect(
        h.ended == "stopped by the scenario", f"{what}: the workload ran to the end ({h.ended!r})"
    )


def worst_latency(h: History) -> float:
    """The longest time from sending a write to its acknowledgement (acknowledged ones)."""
    tab = h.table()
    ok = tab.status[1:] == 1
    if not ok.any():
        return float("nan")
    return float((tab.t1[1:][ok] - tab.t0[1:][ok]).max())


def replica_on(v: JSON, node: str) -> str:
    return next(r["id"] for r in v["replicas"] if r["node"] == node and r["state"] != "deleting")


def other_nodes(v: JSON) -> list[str]:
    return sorted(r["node"] for r in v["replicas"] if r["node"] != v["attached_node"])


# --- 1: SIGKILL a replica server; its agent restarts it -------------------------------------


def replica_server_killed(env: Env) -> Outcome:
    out = Outcome("1 replica server SIGKILL")
    out.bound(
        env.replica_timeout + READD_EVERY + env.rebuild_seconds + SLACK,
        "replica timeout + re-add interval + a rebuild of the whole volume + slack",
    )
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
        out.expect(rid in rw_running(v), f"the same replica {rid} is back RW (not replaced)")
        out.expect(out.rebuilt.get(rid) == "delta", f"{rid} rebuilt as a delta ({out.rebuilt})")
    return out


# --- 2: SIGKILL the engine (the agent restarts it), then re-attach on another node ----------


def engine_killed(env: Env) -> Outcome:
    """The engine is restarted by its agent (same epoch, same port): clients reconnect. The
    workload's connections die with it, so phase A (before the kill) and phase B (after the
    restart) write disjoint block ranges; then the volume moves to another node (detach,
    attach: a new epoch) and phase C writes there. Every phase is checked at the end."""
    out = Outcome("2 engine SIGKILL + reattach elsewhere")
    out.bound(
        HEARTBEAT + 2.0 + SLACK,
        "the agent notices within a heartbeat, restarts at once (0.5 s backoff), the engine "
        "opens its replicas (~1 s) + slack",
    )
    with scenario(env, "s2") as v:
        name, node = v["name"], v["attached_node"]
        endpoint, epoch = v["endpoint"], v["engine"]["epoch"]
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
        out.expect(
            v["endpoint"] == endpoint and v["engine"]["epoch"] == epoch,
            f"restarted with the same endpoint and epoch ({v['endpoint']}, {v['engine']['epoch']})",
        )
        b = start_load(env, v, "b", third, third).start()
        b.wait_acked(300, 60)
        b.stop()
        # re-attach on another node: the volume moves, a new engine with a new epoch
        dest = other_nodes(v)[0]
        env.api.detach(name)
        env.api.wait_detached(name, 60)
        env.api.attach(name, dest)
        v = env.api.wait_volume(name, converged(dest), 90)
        out.expect(v["engine"]["epoch"] > epoch, "the engine on the other node has a new epoch")
        c_ = start_load(env, v, "c", 2 * third, env.size // BLOCK_SIZE - 2 * third).start()
        c_.wait_acked(300, 60)
        # loads a and b are stopped already: their stop() returns their histories
        finish(env, out, v, [c_, a, b])
        out.notes.append(f"restarted on {node}, moved to {dest}")
    return out


# --- 3: SIGKILL the node agent and the manager: the data path goes on --------------------


def control_plane_killed(env: Env) -> Outcome:
    """SIGKILL the attach node's agent (only: its engine and replica server stay) and every
    manager; the workload goes on with no control plane at all; the managers and the agent
    are started again. The new agent adopts the engine and the replica server (same PIDs):
    one workload runs through all of it and not one write or flush fails or is lost."""
    out = Outcome(f"3 agent+manager SIGKILL ({env.cluster.backend})")
    out.bound(
        2 * HEARTBEAT + SLACK,
        "the new agent registers and reports within two heartbeats + slack",
        "the agent's restart",
    )
    c = env.cluster
    with scenario(env, "s3") as v:
        name, node = v["name"], v["attached_node"]
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
        engine_pids = node_children(c, node, "engine", name)
        server_pids = node_children(c, node, "replica-server")
        t = time.monotonic()
        c.reload()
        agent_pid = c.nodes[node].pid
        assert agent_pid is not None
        sigkill([agent_pid])  # only the agent: its engine and replica server stay
        for m in c.managers:  # every manager (etcd: both): no control plane at all
            c.kill_manager(m.id)
        load.wait_acked(500, 60)  # the data path goes on with no agent and no manager
        stalled = time.monotonic() - t
        for m in c.managers:
            c.start_manager(m.id, timeout=60)
        until("the old agent gone", lambda: gone(agent_pid), 10)
        t_agent = time.monotonic()
        c.start_node(node, timeout=60)  # same dir, ports and namespace
        c.reload()
        new_agent = c.nodes[node].pid
        until(  # converged means: the new agent registered and reports the volume again
            "the new agent reporting",
            lambda: env.api.node(node).get("agent_pid") == new_agent,
            60,
        )
        v = wait_converged(env, name, node, out, t_agent)
        load.wait_acked(300, 60)  # and on after the new agent took over
        out.expect(
            node_children(c, node, "engine", name) == engine_pids,
            f"the new agent adopted the engine (pids {engine_pids}), did not restart it",
        )
        out.expect(
            node_children(c, node, "replica-server") == server_pids,
            f"the new agent adopted the replica server (pids {server_pids})",
        )
        finish(env, out, v, [load])
        assert load.history is not None
        no_client_errors(out, load.history, "across the kills and restarts")
        out.notes.append(
            f"500 writes acked with no agent and no manager ({stalled:.1f} s); engine and "
            "replica server adopted by the new agent"
        )
    return out


# --- 4: partition a replica node: shorter than the replica timeout, longer, and longer
#        than stale_replica_timeout -------------------------------------------------------


BRIEF_CUT = 1.0  # seconds: well under the 3 s replica timeout, TCP retransmits included


def replica_partitioned_briefly(env: Env) -> Outcome:
    """Cut a replica's node off for BRIEF_CUT seconds, less than the engine's replica
    timeout: writes wait for it (TCP retransmits after the heal) but nothing is dropped,
    nothing is rebuilt, and no write waits longer than the replica timeout."""
    out = Outcome("4a replica partition < replica timeout")
    out.bound(HEARTBEAT + SLACK, "nothing to repair: a heartbeat + slack", "the heal")
    c = env.cluster
    with scenario(env, "s4b") as v:
        name, node = v["name"], v["attached_node"]
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
        modes: set[str] = set()
        c.partition_node(victim)
        t_cut = time.monotonic()
        try:
            while time.monotonic() - t_cut < BRIEF_CUT:
                with contextlib.suppress(Exception):
                    st = engine_status(c, node, name)
                    modes |= {r["mode"] for r in st["replicas"] if r["id"] == rid}
                time.sleep(0.1)
        finally:
            c.heal_node(victim)
        t = time.monotonic()
        load.wait_acked(300, 60)
        for _ in range(20):  # a drop would show within the replica timeout after the heal
            with contextlib.suppress(Exception):
                st = engine_status(c, node, name)
                modes |= {r["mode"] for r in st["replicas"] if r["id"] == rid}
            time.sleep(env.replica_timeout / 20)
        v = wait_converged(env, name, node, out, t)
        finish(env, out, v, [load])
        assert load.history is not None
        worst = worst_latency(load.history)
        cnt = engine_status(c, node, name)["counters"]
        out.expect(modes == {"RW"}, f"{rid} never left RW (modes seen {sorted(modes)})")
        out.expect(not out.rebuilt, f"no rebuild ({out.rebuilt})")
        out.expect(
            cnt.get("replica_errors", 0) == 0, f"no replica error ({cnt.get('replica_errors')})"
        )
        out.expect(
            worst < env.replica_timeout,
            f"worst write latency {worst:.2f} s < replica timeout {env.replica_timeout:g} s",
        )
        no_client_errors(out, load.history, "through the brief partition")
        out.notes.append(f"cut {BRIEF_CUT:g} s; worst write latency {worst:.2f} s")
    return out


def replica_partitioned(env: Env, longer: bool) -> Outcome:
    """Cut a replica's node off for longer than the replica timeout: the engine drops it
    and goes on. Shorter than the volume's stale_replica_timeout (120 s): after the heal
    the same replica is re-added and delta-rebuilt, none placed. Longer (8 s): a new
    replica is placed on the spare node and rebuilt in full, the old one deleted."""
    stale = 8.0 if longer else 120.0
    out = Outcome(
        f"4{'c' if longer else 'b'} replica partition > {'stale' if longer else 'replica'} timeout"
    )
    out.bound(
        env.node_down_after + READD_EVERY + env.rebuild_seconds + SLACK,
        "the node is up again after a heartbeat, re-add interval, a rebuild of the whole "
        "volume + slack",
        "the heal",
    )
    c = env.cluster
    with scenario(env, "s4l" if longer else "s4s", stale=stale) as v:
        name, node = v["name"], v["attached_node"]
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
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
        t = time.monotonic()
        v = wait_converged(env, name, node, out, t)
        if longer:
            until(
                f"{rid} deleted",
                lambda: rid not in {r["id"] for r in env.api.volume(name)["replicas"]},
                60,
            )
            v = env.api.volume(name)
            out.converge_seconds = time.monotonic() - t
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        ids = rw_running(v)
        if longer:
            out.expect(rid not in ids, f"{rid} (stale) is not back: it was replaced and deleted")
            new = [r for r in ids if r != replica_on(v, node)]
            out.expect(
                len(new) == 1 and out.rebuilt.get(new[0]) == "full",
                f"the new replica {new} was rebuilt in full ({out.rebuilt})",
            )
        else:
            out.expect(rid in ids, f"the same replica {rid} is back RW (not replaced)")
            out.expect(out.rebuilt.get(rid) == "delta", f"{rid} rebuilt as a delta ({out.rebuilt})")
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
    out.bound(
        env.node_down_after + READD_EVERY + env.rebuild_seconds + SLACK,
        "the old node is up again, re-add interval, a full rebuild of the forked replica + slack",
        "the heal",
    )
    c = env.cluster
    with scenario(env, "s5", replicas=2, stale=90.0) as v:
        name, old = v["name"], v["attached_node"]
        forked = replica_on(v, old)
        half = env.size // BLOCK_SIZE // 2
        a = start_load(env, v, "a", 0, half).start()
        a.wait_acked(400, 60)
        ha = a.stop()
        old_uri = v["endpoint"]
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
        finally:
            c.heal_node(old)
        t = time.monotonic()
        v = wait_converged(env, name, dest, out, t)
        data = read_blocks(c.nodes[dest].netns, v["endpoint"], half, half)
        nonzero = sum(1 for i in range(half) if any(data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]))
        out.expect(
            zc["writes_acked"] > 0,
            f"the old engine acknowledged writes after the takeover ({zc['writes_acked']}): "
            "the fencing check is not vacuous",
        )
        out.expect(nonzero == 0, f"none of them exists: {nonzero} non-zero blocks in its range")
        b = start_load(env, v, "b", half, half).start()
        out.result = check(c.nodes[dest].netns, v["endpoint"], ha)
        b.wait_acked(200, 60)
        hb = b.stop()
        out.extra_checks.append(check(c.nodes[dest].netns, v["endpoint"], hb))
        v = env.api.wait_volume(name, converged(dest), 60)
        digests(env, out, v)
        out.expect(forked in rw_running(v), f"the forked replica {forked} rejoined in place")
        out.expect(
            out.rebuilt.get(forked) == "full",
            f"{forked} rebuilt in full (its history is a fork) ({out.rebuilt})",
        )
        out.notes.append(
            f"old engine after takeover: {zc['writes_acked']} acked, {zc['writes_failed']} "
            f"failed, {zc['writes_lost']} lost; {nonzero} of them visible"
        )
    return out


# --- 6: a slow replica (tc tbf on its node's bridge port) --------------------------------

LATENCY_MARGIN = 1.0  # seconds beyond the replica timeout: NBD framing, event-loop turns


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
    out.bound(
        READD_EVERY + env.rebuild_seconds + SLACK,
        "re-add interval + a rebuild of the whole volume + slack",
        "the end of the shaping",
    )
    c = env.cluster
    with scenario(env, "s6") as v:
        name, node = v["name"], v["attached_node"]
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
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
        t = time.monotonic()
        v = wait_converged(env, name, node, out, t)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        assert load.history is not None
        worst = worst_latency(load.history)
        out.expect(
            worst <= env.replica_timeout + LATENCY_MARGIN,
            f"worst write latency {worst:.2f} s <= replica timeout {env.replica_timeout:g} s "
            f"+ {LATENCY_MARGIN:g} s",
        )
        no_client_errors(out, load.history, "while the replica was slow")
        out.expect(rid in rw_running(v), f"the same replica {rid} is back RW")
        out.expect(out.rebuilt.get(rid) == "delta", f"{rid} rebuilt as a delta ({out.rebuilt})")
        out.notes.append(
            f"worst write latency {worst:.2f} s (replica timeout {env.replica_timeout:g} s)"
        )
    return out


# --- 7: the disk under one replica fills up ----------------------------------------------


def disk_full(env: Env) -> Outcome:
    """One node's disk is a small loop-mounted ext4 (``env.small_disk_node``). A filler file
    leaves it ~256 KiB free before the workload starts: that replica's writes fail with
    ENOSPC (NoSpace), the engine drops it, the volume serves on. The filler is removed;
    the agent re-adds the replica and it is delta-rebuilt. While the disk is full every
    re-add fails again in its rebuild, and the agent waits twice as long before the next
    (5 s, 10 s, 20 s, ...: agent/processes.py ``readd_wait``), so the next try after the
    space returns comes at most about as long after as the disk was full, plus 5 s."""
    out = Outcome("7 disk full on one replica")
    out.bound(
        READD_EVERY + env.rebuild_seconds + SLACK,
        "re-add interval + a rebuild of the whole volume + slack",
        "the space's return",
    )
    node = env.small_disk_node
    if node is None:
        out.skipped = "no small disk (no loop device)"
        return out
    disk = os.path.join(env.cluster.nodes[node].dir, "disk-0")
    with scenario(env, "s7", replicas=len(env.cluster.nodes)) as v:
        name = v["name"]
        rid = replica_on(v, node)
        settle_disk(disk, rid)
        st = os.statvfs(disk)
        filler = os.path.join(disk, "filler")
        room = st.f_bavail * st.f_frsize - 256 * 1024
        subprocess.run(["fallocate", "-l", str(max(room, 0)), filler], check=True)
        try:
            load = start_load(env, v, "a").start()
            env.api.wait_volume(
                name,
                lambda v: {r["id"]: r["mode"] for r in v["replicas"]}.get(rid) != "RW",
                60,
            )
            dropped = time.monotonic()
            load.wait_acked(300, 60)
            err = {r["id"]: r["error"] for r in env.api.volume(name)["replicas"]}.get(rid, "")
        finally:
            os.unlink(filler)
        t = time.monotonic()
        out.bound(
            READD_EVERY + (t - dropped) + env.rebuild_seconds + SLACK,
            "re-add interval + the back-off (at most as long as the disk was full) + a "
            "rebuild of the whole volume + slack",
            "the space's return",
        )
        v = wait_converged(env, name, v["attached_node"], out, t)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        # NoSpace, or the gap it leaves: a later write to an allocated block can succeed on
        # that replica and be answered first ("missed a mutation": dropped all the same), or
        # be refused because of it (the server stops a connection's mutations after a failed
        # one: "an earlier one of this connection did not complete", its reason cut off in
        # the engine's status) and that refusal answered first
        out.expect(
            "NoSpace" in err
            or "missed a mutation" in err
            or "an earlier one of this connection did not complete" in err,
            f"dropped for NoSpace or the generation gap it left (error: {err[:120]!r})",
        )
        out.expect(rid in rw_running(v), f"the same replica {rid} is back RW (not replaced)")
        out.expect(out.rebuilt.get(rid) == "delta", f"{rid} rebuilt as a delta ({out.rebuilt})")
        no_client_errors(out, load.history, "while one disk was full")  # type: ignore[arg-type]
        out.notes.append(f"dropped: {err[:60]}")
    return out


def settle_disk(disk: str, keep: str, timeout: float = 60.0) -> None:
    """Wait until ``disk`` holds no replica but ``keep`` and its trash is empty. The
    replicas of an earlier scenario's volume are deleted by their agents after the volume
    is gone, and their space returns when the trash is emptied: a filler sized before that
    would leave room for the whole volume (a soak saw it: the previous volume's replica
    left the trash a second after the filler was made, and no write ever failed)."""
    deadline = time.monotonic() + timeout
    while True:
        others = [d for d in os.listdir(os.path.join(disk, "replicas")) if d != keep]
        trash = os.path.join(disk, "trash")
        left = os.listdir(trash) if os.path.isdir(trash) else []
        if not others and not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{disk}: other replicas {others} and trash {left} still there")
        time.sleep(0.2)


# --- 8: bit rot ----------------------------------------------------------------------------


def head_data_file(c: LocalCluster, node: str, rid: str) -> str:
    d = os.path.join(c.nodes[node].dir, "disk-0", "replicas", rid)
    with open(os.path.join(d, "replica.meta"), "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[12:16], "big")
    meta = json.loads(raw[20 : 20 + n])
    return os.path.join(d, f"layer-{int(meta['head']):06d}.data")


def written_blocks(h: History) -> list[int]:
    """Every block an acknowledged write of ``h`` covers."""
    tab = h.table()
    out: set[int] = set()
    for b, n, st in zip(tab.block[1:], tab.n[1:], tab.status[1:], strict=True):
        if st == 1:
            out.update(range(int(b), int(b) + int(n)))
    return sorted(out)


def scrub_volume(env: Env, name: str) -> JSON:
    """``cargohold volume scrub NAME``: the manager's scrub operation; -> the pass's report."""
    op = env.api.scrub(name)
    done = env.api.wait_operation(op["id"], 120)
    return done["result"]["scrub"]


def bit_rot(env: Env, k: int = 8) -> Outcome:
    """Rot ``k`` written blocks of each replica (different blocks on each, so that every
    block has an intact copy). (a) The engine's local replica is the one reads go to: the
    checker's full read-back hits its rotted blocks, the engine re-reads each from the
    other replica and repairs it in place (``repaired_blocks``). (b) Nobody reads the
    other replica: its rot is found by a scrub (the manager's ``scrub`` operation, run by
    the engine's scrubber), read from the healthy replica and repaired in place; a second
    scrub finds nothing; the replicas end identical.

    The local rot is in the first half of the volume and the other replica's in the second:
    the checker reads in 8 MiB chunks, and a chunk that fails on the local replica is read
    again from the other one, which would then read (and repair) its rot too."""
    out = Outcome("8 bit rot (read repair, scrub)")
    out.bound(
        2 * HEARTBEAT + 2 * env.size / (32 * MiB) + SLACK,
        "the read-back, then two scrub operations (each a heartbeat to assign and a pass "
        "at 32 MiB/s per replica) + slack",
        "the rot",
    )
    c = env.cluster
    with scenario(env, "s8") as v:
        name, node = v["name"], v["attached_node"]
        other = other_nodes(v)[0]
        local, remote = replica_on(v, node), replica_on(v, other)
        a = start_load(env, v, "a").start()
        a.wait_acked(800, 60)
        ha = a.stop()
        t = time.monotonic()
        pool = written_blocks(ha)
        half = env.size // BLOCK_SIZE // 2
        read_rot = sorted(env.rng.sample([b for b in pool if b < half], k))
        unread_rot = sorted(env.rng.sample([b for b in pool if b >= half], k))
        before = engine_status(c, node, name)["counters"]
        rot(head_data_file(c, node, local), read_rot)
        rot(head_data_file(c, other, remote), unread_rot)
        # (a) the checker reads back every block: the local replica's rot is repaired
        out.result = check(c.nodes[node].netns, v["endpoint"], ha)
        base = before.get("repaired_blocks", 0)
        try:  # repairs are sent after the read is answered: wait for them
            until(
                "the read repairs",
                lambda: (
                    engine_status(c, node, name)["counters"].get("repaired_blocks", 0) - base
                    >= len(read_rot)
                ),
                30,
            )
        except ScenarioFailed:
            pass
        cnt = engine_status(c, node, name)["counters"]
        repaired = cnt.get("repaired_blocks", 0) - base
        out.expect(
            repaired == len(read_rot),
            f"every rotted block read was repaired: {repaired} of {len(read_rot)}",
        )
        # (b) the scrub finds exactly the rot nobody read, and repairs it
        first = scrub_volume(env, name)
        found = sorted(b["block"] for b in first["bad"] if b["replica"] == remote)
        out.expect(
            first["found"] == len(unread_rot) and found == unread_rot,
            f"the scrub found the {len(unread_rot)} rotted unread blocks of {remote}: "
            f"found {first['found']} ({found})",
        )
        out.expect(
            first["repaired"] == len(unread_rot) and first["unrepaired"] == 0,
            f"and repaired them all ({first['repaired']} repaired, {first['unrepaired']} not)",
        )
        second = scrub_volume(env, name)
        out.converge_seconds = time.monotonic() - t
        out.expect(second["found"] == 0, f"a second scrub finds nothing ({second['found']})")
        cnt = engine_status(c, node, name)["counters"]
        out.expect(
            cnt.get("scrub_repaired_blocks", 0) == len(unread_rot),
            f"engine counter scrub_repaired_blocks {cnt.get('scrub_repaired_blocks')}",
        )
        # the manager keeps the last pass (volume get's last_scrub) for the next engine
        try:
            rec = env.api.wait_volume(
                name,
                lambda v: (v.get("last_scrub") or {}).get("ended_at", 0) >= second["started_at"],
                15,
            )
            last = rec["last_scrub"]
        except WaitTimeout:
            last = None
        out.expect(
            last is not None
            and last["found"] == 0
            and last["checked_blocks"] == second["checked_blocks"],
            f"the manager recorded the second scrub as the volume's last_scrub: {last}",
        )
        v = env.api.wait_volume(name, converged(node), 60)
        digests(env, out, v)
        out.notes.append(
            f"read rot {len(read_rot)}: {cnt.get('checksum_errors', 0)} reads hit it, "
            f"{repaired} blocks repaired on read; unread rot {len(unread_rot)}: scrub found "
            f"{first['found']}, repaired {first['repaired']} ({first['seconds']:.1f} s); "
            f"second scrub {second['found']}"
        )
    return out


# --- 9: crashes during a rebuild and during snapshot create / delete ----------------------

SNAPSHOT_PAUSE = 1.5  # CARGOHOLD_FAULT_PAUSE_SNAPSHOT of the cluster (cargohold/engine/faults.py)


def replica_snapshots(env: Env, v: JSON, name: str) -> dict[str, bool]:
    """Whether each live replica holds snapshot ``name`` (asked of its replica server)."""

    async def holds(c: Any, r: JSON) -> bool:
        return any(s["name"] == name for s in await c.snapshot_list())

    return per_replica(env, v, holds)


def crash_during_rebuild_and_snapshots(env: Env) -> Outcome:
    """(a) SIGKILL the engine while a replica is WO (rebuilding): the restarted engine
    rebuilds it again. (b) Ask for a snapshot, wait until the engine reports it busy with
    it, and SIGKILL it in the middle: the fault hook ``CARGOHOLD_FAULT_PAUSE_SNAPSHOT``
    holds the snapshot between the first replica and the other, so the kill leaves it on
    one replica only. The agent runs the operation again on the restarted engine, which
    takes it again on all. Then the same for its delete. After each: the snapshot exists
    on every replica or on none, and the manager's record says the same."""
    out = Outcome("9 crash in rebuild, snapshot create/delete")
    out.bound(
        HEARTBEAT + 2.0 + env.rebuild_seconds + SLACK,
        "the agent restarts the engine (a heartbeat, ~2 s), which rebuilds the replica "
        "again (at most the whole volume) + slack",
        "the engine kill in the rebuild",
    )
    c = env.cluster
    with scenario(env, "s9") as v:
        name, node = v["name"], v["attached_node"]
        victim = other_nodes(v)[0]
        rid = replica_on(v, victim)
        q = env.size // BLOCK_SIZE // 4
        loads: list[Load] = []
        # phase a writes half the volume: the delta to rebuild can reach 8 MiB, 2 s at the
        # throttled 4 MiB/s (a quarter, as before, was often rebuilt before it was seen WO)
        a = start_load(env, v, "a", 0, 2 * q).start()
        loads.append(a)
        a.wait_acked(200, 60)
        kill_replica_server(env, victim)
        a.wait_acked(4000, 90)  # a delta to copy (rebuilds are throttled in this cluster)
        until(
            f"{rid} rebuilding",
            lambda: any(
                r["id"] == rid and r["mode"] == "WO"
                for r in engine_status(c, node, name)["replicas"]
            ),
            60,
            every=0.02,
        )
        t = time.monotonic()
        pid = kill_engine(env, node, name)  # the engine dies mid-rebuild
        a.stop()
        until(
            "the engine restarted",
            lambda: [p for p in node_children(c, node, "engine", name) if p != pid],
            30,
        )
        out.rebuilt.clear()  # only rebuilds the restarted engine runs count
        v = wait_converged(env, name, node, out, t)
        ok_rebuild = out.converge_seconds
        out.expect(rid in out.rebuilt, f"the restarted engine rebuilt {rid} again ({out.rebuilt})")
        out.expect(rid in rw_running(v), f"{rid} is RW after the rebuild")
        for i, kind in enumerate(("create", "delete")):
            ld = start_load(env, v, kind, 2 * q + i * (q // 2), q // 2).start()
            loads.append(ld)
            ld.wait_acked(300, 60)
            if kind == "create":
                op = env.api.create_snapshot(name, "snap")
                busy_op = "snapshot"
            else:
                op = env.api.delete_snapshot(name, "snap")
                busy_op = "snapshot-delete"
            until(
                f"the engine busy with the snapshot {kind}",
                lambda busy_op=busy_op: any(
                    b["op"] == busy_op for b in engine_status(c, node, name).get("busy", [])
                ),
                30,
                every=0.05,
            )
            time.sleep(SNAPSHOT_PAUSE / 3)  # the first replica did it; the hook holds the other
            half = replica_snapshots(env, v, "snap")
            pid = kill_engine(env, node, name)
            ld.stop()
            with contextlib.suppress(Exception):  # failed or not: judged below
                env.api.wait_operation(op["id"], 120)
            res = env.api.operation(op["id"])
            v = env.api.wait_volume(name, converged(node), env.converge_timeout)
            on = replica_snapshots(env, v, "snap")
            snaps = {s["name"]: s["state"] for s in env.api.snapshots(name)}
            out.expect(
                len(set(half.values())) == 2,
                f"snapshot {kind}: the kill landed with it on one replica only ({half})",
            )
            out.expect(
                len(set(on.values())) == 1, f"snapshot {kind}: on every replica or none ({on})"
            )
            want = kind == "create"
            out.expect(
                res["state"] == "succeeded" and all(x == want for x in on.values()),
                f"snapshot {kind}: the retried operation succeeded ({res['state']}: "
                f"{res.get('error', '')[:80]}), snapshot {'on all' if want else 'on none'}",
            )
            out.expect(
                (snaps.get("snap") == "ready") == want,
                f"snapshot {kind}: the manager's record agrees ({snaps})",
            )
            out.notes.append(f"snapshot {kind}: killed at {half}, after: {res['state']}, {on}")
        d = start_load(env, v, "d", 3 * q, env.size // BLOCK_SIZE - 3 * q).start()
        d.wait_acked(300, 60)
        finish(env, out, v, [d, *loads])
        out.converge_seconds = ok_rebuild
    return out


# --- 10: two faults: a replica killed while another rebuilds ------------------------------


def two_faults(env: Env) -> Outcome:
    """Three replicas: SIGKILL one replica server, and while its replica is being rebuilt,
    SIGKILL a second one. Both come back in place, each rebuilt as a delta."""
    out = Outcome("10 replica killed while another rebuilds")
    out.bound(
        env.replica_timeout + READD_EVERY + 2 * env.rebuild_seconds + SLACK,
        "replica timeout + re-add interval + two rebuilds of the whole volume + slack",
    )
    c = env.cluster
    with scenario(env, "s10", replicas=3) as v:
        name, node = v["name"], v["attached_node"]
        first, second = other_nodes(v)
        r1, r2 = replica_on(v, first), replica_on(v, second)
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
        ids = rw_running(v)
        out.expect({r1, r2} <= ids, f"both {r1} and {r2} back RW in place ({sorted(ids)})")
        out.expect(
            out.rebuilt.get(r1) == "delta" and out.rebuilt.get(r2) == "delta",
            f"both rebuilt as deltas ({out.rebuilt})",
        )
    return out


# --- 11: the wrong state store (issue 14): an empty store under a restarted manager ------


WRONG_STORE_WATCH = 12.0  # seconds the agents are watched under the wrong manager (it took ~8)


class StateSwap:
    """The manager's real state taken away (SQLite: the files moved aside and an empty
    state.db in their place; etcd: every key under the prefix saved and deleted), and put
    back. Only while every manager is stopped."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self.aside = os.path.join(c.dir, "state-aside")
        self.saved: dict[str, bytes] | None = None

    def _etcd(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        from cargohold.launcher import etcd_certs

        e = self.c.etcd
        assert e is not None

        async def go() -> Any:
            store = etcd_certs.open_store(self.c.dir, e.client_url)  # with its certificate
            try:
                return await fn(store)
            finally:
                await store.close()

        return in_ns(e.netns, go)

    def take(self) -> None:
        if self.c.etcd is None:
            os.makedirs(self.aside)
            for f in os.listdir(self.c.dir):
                if f.startswith("state.db"):
                    os.rename(os.path.join(self.c.dir, f), os.path.join(self.aside, f))
            with open(os.path.join(self.c.dir, "state.db"), "wb"):
                pass
            return

        async def take(store: Any) -> dict[str, bytes]:
            saved = {e.key: e.value for e in await store.range("/")}
            for k in saved:
                await store.delete(k)
            return {k: v for k, v in saved.items() if not k.startswith("/leader/")}

        self.saved = self._etcd(take)

    def put_back(self) -> None:
        if self.c.etcd is None:
            if not os.path.isdir(self.aside):
                return
            for f in os.listdir(self.c.dir):
                if f.startswith("state.db"):
                    os.unlink(os.path.join(self.c.dir, f))
            for f in os.listdir(self.aside):
                os.rename(os.path.join(self.aside, f), os.path.join(self.c.dir, f))
            os.rmdir(self.aside)
            return
        saved = self.saved
        if saved is None:
            return

        async def back(store: Any) -> None:
            for e in await store.range("/"):
                await store.delete(e.key)
            for k, v in saved.items():
                await store.put(k, v)

        self._etcd(back)
        self.saved = None


def replica_dirs(c: LocalCluster, v: JSON) -> dict[str, bool]:
    """Each replica of ``v`` -> whether its directory is on its node's disk."""
    return {
        r["id"]: os.path.isdir(os.path.join(c.nodes[r["node"]].dir, "disk-0", "replicas", r["id"]))
        for r in v["replicas"]
    }


def wrong_state_store(env: Env) -> Outcome:
    """Under load, every manager is SIGKILLed and the state store replaced by an empty one
    (SQLite: an empty state.db; etcd: the key prefix emptied). The manager refuses to
    start on it, with --init neither (its certificate, issue 16, names the real cluster;
    before that, --init made a new cluster that every agent refused), while the engine
    keeps serving and every replica stays on disk; the real state back, the volume converges with every
    acknowledged write intact. Before issue 14 the agents deleted every replica within
    about 8 s."""
    c = env.cluster
    out = Outcome(f"11 wrong state store ({c.backend})")
    out.bound(
        2 * HEARTBEAT + SLACK,
        "the agents act for the real manager again within two heartbeats + slack",
        "the real state's return",
    )
    swap = StateSwap(c)
    with scenario(env, "s11") as v:
        name, node = v["name"], v["attached_node"]
        real = env.api.status()["cluster_id"]
        load = start_load(env, v, "a").start()
        load.wait_acked(300, 60)
        try:
            for m in c.managers:
                c.kill_manager(m.id)
            swap.take()
            first = c.managers[0].id
            try:
                c.start_manager(first, timeout=30)
                refused = False
            except Exception as e:  # LauncherError: it exited, saying why
                refused = "exited with code 2" in str(e)
            out.expect(refused, "the manager refuses to start on the empty store without --init")
            try:  # a new cluster would need a certificate the cluster's CA never issues
                c.start_manager(first, timeout=60, init=True)
                made = True
            except Exception:  # LauncherError: it exited, naming the certificate's cluster
                made = False
            out.expect(
                not made,
                "--init on the empty store is refused too: the manager's certificate names "
                f"the real cluster {real} (issue 16), so no manager of another cluster runs",
            )
            t = time.monotonic()
            acked = load.acked
            while time.monotonic() - t < WRONG_STORE_WATCH:
                dirs = replica_dirs(c, v)
                if not out.expect(all(dirs.values()), f"every replica kept on disk ({dirs})"):
                    break
                time.sleep(0.5)
            out.expect(
                load.acked > acked,
                f"the engine kept serving without a manager ({load.acked - acked} writes)",
            )
            for m in c.managers:
                if m.running():
                    c.kill_manager(m.id)
        finally:
            for m in c.managers:
                with contextlib.suppress(Exception):
                    c.kill_manager(m.id)
            swap.put_back()
            for m in c.managers:
                c.start_manager(m.id, timeout=60)
        t_back = time.monotonic()
        out.expect(env.api.status()["cluster_id"] == real, "the real cluster is back")
        until(
            "every agent acting for the real cluster",
            lambda: all(n["error"] == "" and n["state"] == "up" for n in env.api.nodes()),
            30,
        )
        v = wait_converged(env, name, node, out, t_back)
        load.wait_acked(200, 60)
        finish(env, out, v, [load])
        assert load.history is not None
        no_client_errors(out, load.history, "across the wrong manager and back")
        orphans = env.api.orphans()
        out.expect(orphans == [], f"no orphans in the real cluster ({orphans})")
        out.notes.append(
            f"no manager could start on the wrong store for {WRONG_STORE_WATCH:.0f} s, "
            "every replica kept"
        )
    return out


# --- the matrix ----------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Env], Outcome]] = {
    "replica-server-kill": replica_server_killed,
    "engine-kill-reattach": engine_killed,
    "control-plane-kill": control_plane_killed,
    "partition-brief": replica_partitioned_briefly,
    "partition-short": lambda env: replica_partitioned(env, longer=False),
    "partition-long": lambda env: replica_partitioned(env, longer=True),
    "engine-node-failover": engine_node_partitioned,
    "slow-replica": slow_replica,
    "disk-full": disk_full,
    "bit-rot": bit_rot,
    "crash-rebuild-snapshot": crash_during_rebuild_and_snapshots,
    "two-faults": two_faults,
    "wrong-state-store": wrong_state_store,
}


def problems(out: Outcome) -> list[str]:
    """What is wrong with an outcome (empty: the scenario passed): the checks every
    scenario makes, then its own expectations (``Outcome.expect``)."""
    if out.skipped:
        return []
    bad = []
    if out.result is None:
        bad.append("no check ran")
    if out.violations:
        bad.append(f"{out.violations} violations")
    if not out.digests_equal:
        bad.append("replicas differ")
    if out.replicas_checked != out.replicas_wanted or not out.replicas_wanted:
        bad.append(f"{out.replicas_checked} replicas, {out.replicas_wanted} wanted")
    if out.converge_seconds is None:
        bad.append("no time to converge")
    elif out.converge_bound is not None and out.converge_seconds > out.converge_bound:
        bad.append(
            f"converged in {out.converge_seconds:.1f} s from {out.converge_from}, over the "
            f"bound of {out.converge_bound:.1f} s ({out.bound_why})"
        )
    return bad + out.failed
