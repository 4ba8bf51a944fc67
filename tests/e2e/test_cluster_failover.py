"""The control plane's failure tests, end to end: real managers, agents, replica servers and
engines (``LocalCluster``), every node in a network namespace of its own.

- A replica's node dies (SIGKILL) or is cut off for longer than the volume's
  ``stale_replica_timeout``: the volume goes degraded, a new replica is placed on a spare
  node and rebuilt, the data survives (and what was written while degraded); when the lost
  node comes back, its stale replica is deleted from its disk.
- A replica's node is cut off for less than that: after the heal the same replica is
  rebuilt (delta) and serves again; no new replica is placed.
- On etcd with two managers, the leader dies while a client keeps writing and reading
  through the engine: the standby takes over within seconds, the I/O never fails (the data
  path does not depend on the manager), control operations work afterwards, and the old
  leader, restarted, stands by.

Data goes through the engine's NBD endpoint with qemu-io and nbdcopy, run inside the
attach node's namespace (the endpoint's address exists only in the lab). What a volume
should hold is kept in memory (``Model``) and compared with a hash of the whole volume.
Every wait polls with a deadline. The manager marks a node down after 2 s without a
heartbeat (``CARGOHOLD_MANAGER_NODE_DOWN_AFTER``). The clusters' logs are copied to the
test's ``tmp_path`` (``logs-N/``) before the clusters are purged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster, get_json
from cargohold.launcher.netns import exec_prefix
from tests import netns

pytestmark = pytest.mark.root

MiB = 1 << 20
SIZE = 32 * MiB
NODE_DOWN_AFTER = 2  # seconds: the manager's node_down_after in these clusters
TOOLS = ("qemu-io", "nbdcopy")

JSON = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------


def until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something true; that. AssertionError at the
    deadline, naming ``what`` and the last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as e:  # a manager between leaders, a node on its way back
            last = f"{type(e).__name__}: {e}"
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last})")
        time.sleep(every)


def run_in(ns: str | None, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*exec_prefix(ns), *argv], capture_output=True, timeout=timeout, check=False
    )


def qemu_io(ns: str | None, uri: str, *cmds: str, timeout: float = 60) -> None:
    """Run qemu-io commands against ``uri`` from namespace ``ns``; fail on any error or
    pattern mismatch."""
    argv = ["qemu-io", "-f", "raw"]
    for c in cmds:
        argv += ["-c", c]
    p = run_in(ns, *argv, uri, timeout=timeout)
    out = (p.stdout + p.stderr).decode(errors="replace")
    bad = p.returncode != 0 or "error" in out.lower() or "verification failed" in out.lower()
    assert not bad, f"qemu-io {cmds} on {uri} (exit {p.returncode}): {out}"


def volume_sha256(ns: str | None, uri: str) -> str:
    """The SHA-256 of the whole volume, read through NBD from namespace ``ns``."""
    p = run_in(ns, "nbdcopy", uri, "-", timeout=120)
    assert p.returncode == 0, f"nbdcopy {uri}: {p.stderr.decode(errors='replace')}"
    return hashlib.sha256(p.stdout).hexdigest()


class Model:
    """What the volume should hold: the writes the test made, in order."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def write(self, pattern: int, offset: int, length: int) -> str:
        """Note a write; the qemu-io command that makes it."""
        self.data[offset : offset + length] = bytes([pattern]) * length
        return f"write -P {pattern:#x} {offset} {length}"

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def replica_dir(c: LocalCluster, node: str, rid: str) -> str:
    return os.path.join(c.nodes[node].dir, "disk-0", "replicas", rid)


def on_disks(c: LocalCluster) -> dict[str, str]:
    """Every replica on the nodes' disks: id -> node."""
    out = {}
    for name, n in c.nodes.items():
        with contextlib.suppress(FileNotFoundError):
            out.update((rid, name) for rid in os.listdir(os.path.join(n.dir, "disk-0", "replicas")))
    return out


def rw_nodes(vol: JSON) -> set[str]:
    return {r["node"] for r in vol["replicas"] if r["mode"] == "RW" and r["state"] == "running"}


def attach(api: ManagerClient, name: str, node: str, timeout: float = 60) -> JSON:
    """Attach and wait until the engine serves on ``node`` with every replica RW."""
    api.attach(name, node)
    return api.wait_volume(
        name,
        lambda v: (
            v["state"] == "attached"
            and v["attached_node"] == node
            and bool(v["endpoint"])
            and v["robustness"] == "healthy"
            and len(rw_nodes(v)) == v["replicas_wanted"]
        ),
        timeout,
    )


def detach(api: ManagerClient, name: str, timeout: float = 60) -> JSON:
    api.detach(name)
    return api.wait_detached(name, timeout)


def leaders(c: LocalCluster) -> dict[str, bool | None]:
    """Each manager's answer to "are you the leader?" (None: it does not answer)."""
    out: dict[str, bool | None] = {}
    for m in c.managers:
        try:
            out[m.id] = bool(get_json(m.api, "/healthz", timeout=1.0)["leader"])
        except Exception:
            out[m.id] = None
    return out


# --- clusters --------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Iterator[Callable[..., LocalCluster]]:
    """``cluster(**create_kwargs)`` starts a LocalCluster in namespaces; every cluster a
    test started is torn down (and purged) at its end, whatever happened; its logs are kept
    under ``tmp_path/logs-N``."""
    why = netns.available()
    if why:
        pytest.skip(f"the failover tests run nodes in network namespaces: {why}")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: qemu-utils, libnbd-bin)")
    monkeypatch.setenv("CARGOHOLD_MANAGER_NODE_DOWN_AFTER", str(NODE_DOWN_AFTER))
    started: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        c = LocalCluster.create(str(tmp_path / f"c{len(started)}"), netns=True, **kwargs)
        started.append(c)
        return c.up(timeout=90)

    try:
        yield make
    finally:
        errors = []
        for i, c in enumerate(started):
            with contextlib.suppress(OSError):
                keep_logs(c, str(tmp_path / f"logs-{i}"))
            try:
                c.down(purge=True, grace=5.0)
            except Exception as e:  # tear down the others anyway
                errors.append(f"{c.dir}: {e}")
        assert not errors, "could not tear down: " + "; ".join(errors)


def keep_logs(c: LocalCluster, dest: str) -> None:
    """Copy DIR/logs and DIR/nodes/*/logs to ``dest`` (the cluster dir is purged)."""
    if not os.path.isdir(c.dir):
        return
    src = os.path.join(c.dir, "logs")
    if os.path.isdir(src):
        shutil.copytree(src, dest, dirs_exist_ok=True)
    for name, n in c.nodes.items():
        logs = os.path.join(n.dir, "logs")
        if os.path.isdir(logs):
            shutil.copytree(logs, os.path.join(dest, name), dirs_exist_ok=True)


def setup_volume(c: LocalCluster, api: ManagerClient, stale: float) -> tuple[JSON, str, str, str]:
    """A 2-replica volume ``vol`` attached on one of its replicas' nodes. -> (volume,
    attach node, the other replica's node, the spare node)."""
    api.create_volume("vol", SIZE, replicas=2, stale_replica_timeout=stale)
    vol = api.wait_volume("vol", lambda v: len(v["replicas"]) == 2, 30)
    held = sorted(r["node"] for r in vol["replicas"])
    assert len(set(held)) == 2, f"two replicas on two nodes: {vol['replicas']}"
    here, other = held
    (spare,) = set(c.nodes) - set(held)
    vol = attach(api, "vol", here)
    return vol, here, other, spare


# --- 1 and 2: a replica's node is lost for longer than stale_replica_timeout -------------


@pytest.mark.parametrize("fault", ["kill", "partition"])
def test_a_lost_replica_is_replaced_rebuilt_and_its_stale_copy_deleted(cluster, fault):
    c = cluster(nodes=3)
    stale = 5.0
    with ManagerClient(c.api) as api:
        vol, here, other, spare = setup_volume(c, api, stale)
        ns, uri = c.nodes[here].netns, vol["endpoint"]
        lost = next(r["id"] for r in vol["replicas"] if r["node"] == other)
        model = Model(SIZE)
        qemu_io(ns, uri, model.write(0x5A, 0, 4 * MiB), model.write(0xA5, 20 * MiB, MiB))
        assert volume_sha256(ns, uri) == model.sha256()

        # the other replica's node dies, or is cut off
        if fault == "kill":
            assert c.kill_node(other)
        else:
            c.partition_node(other)

        def degraded(v: JSON) -> bool:
            states = {r["id"]: r["state"] for r in v["replicas"]}
            return v["robustness"] == "degraded" and states.get(lost) == "failed"

        api.wait_volume("vol", degraded, NODE_DOWN_AFTER + 15)
        t_degraded = time.monotonic()
        # writes go on while degraded (to a partitioned replica they stall until the
        # engine drops it: its replica_timeout, 5 s)
        qemu_io(ns, uri, model.write(0x77, 8 * MiB, 2 * MiB), "read -P 0x77 8388608 2097152")
        qemu_io(ns, uri, model.write(0x3C, SIZE - MiB, MiB))

        # after stale_replica_timeout a new replica goes to the spare node and is rebuilt
        placed: list[float] = []

        def note(v: JSON) -> None:
            if not placed and any(r["node"] == spare for r in v["replicas"]):
                placed.append(time.monotonic())

        def replaced(v: JSON) -> bool:
            return v["robustness"] == "healthy" and rw_nodes(v) == {here, spare}

        vol = api.wait_volume("vol", replaced, stale + 60, on_progress=note)
        # not before the timeout (the node was marked down at most ~1.5 s before the
        # volume showed degraded: one heartbeat of the attach node, one poll)
        early = placed[0] - t_degraded
        assert early >= stale - 2, f"replaced {early:.1f} s after degraded, stale is {stale} s"
        assert [r for r in vol["replicas"] if r["mode"] == "RW"] == [
            r for r in vol["replicas"] if r["node"] in (here, spare)
        ], vol["replicas"]
        old = [r for r in vol["replicas"] if r["id"] == lost]
        assert not old or old[0]["state"] == "deleting", old
        assert volume_sha256(ns, uri) == model.sha256()

        # the lost node comes back: its stale replica is deleted, record and directory
        assert os.path.isdir(replica_dir(c, other, lost)), "nothing deletes it while away"
        if fault == "kill":
            assert c.start_node(other)
        else:
            c.heal_node(other)
        vol = api.wait_volume(
            "vol", lambda v: lost not in {r["id"] for r in v["replicas"]}, NODE_DOWN_AFTER + 30
        )
        until(
            f"{replica_dir(c, other, lost)} deleted",
            lambda: not os.path.exists(replica_dir(c, other, lost)),
            30,
        )
        assert rw_nodes(vol) == {here, spare} and len(vol["replicas"]) == 2, vol["replicas"]
        assert vol["robustness"] == "healthy"
        assert api.node(other)["state"] == "up"
        assert on_disks(c) == {r["id"]: r["node"] for r in vol["replicas"]}

        # the rebuilt copy holds the data: attached on its node, reads go to it first
        detach(api, "vol")
        vol = attach(api, "vol", spare)
        assert volume_sha256(c.nodes[spare].netns, vol["endpoint"]) == model.sha256()


# --- 2b: a partition shorter than stale_replica_timeout ----------------------------------


def test_a_short_partition_rebuilds_the_same_replica(cluster):
    c = cluster(nodes=3)
    with ManagerClient(c.api) as api:
        vol, here, other, _spare = setup_volume(c, api, stale=120)
        ns, uri = c.nodes[here].netns, vol["endpoint"]
        ids = {r["id"] for r in vol["replicas"]}
        back = next(r["id"] for r in vol["replicas"] if r["node"] == other)
        model = Model(SIZE)
        qemu_io(ns, uri, model.write(0x11, 0, 8 * MiB))

        seen: set[str] = set()

        def note(v: JSON) -> None:
            seen.update(r["id"] for r in v["replicas"])

        c.partition_node(other)
        # written while cut off: the engine drops the replica (ERR) after its timeout
        qemu_io(ns, uri, model.write(0x22, 2 * MiB, 3 * MiB), model.write(0x33, 16 * MiB, MiB))

        def away(v: JSON) -> bool:
            states = {r["id"]: r["state"] for r in v["replicas"]}
            return v["robustness"] == "degraded" and states.get(back) == "failed"

        api.wait_volume("vol", away, NODE_DOWN_AFTER + 15, on_progress=note)
        qemu_io(ns, uri, model.write(0x44, 24 * MiB, MiB))
        c.heal_node(other)

        # the agent re-adds it, the engine rebuilds what it missed, it is RW again
        def rejoined(v: JSON) -> bool:
            modes = {r["id"]: (r["mode"], r["state"]) for r in v["replicas"]}
            return v["robustness"] == "healthy" and modes.get(back) == ("RW", "running")

        vol = api.wait_volume("vol", rejoined, 60, on_progress=note)
        assert seen == ids, f"no replica was placed: saw {sorted(seen)}, had {sorted(ids)}"
        assert {r["id"] for r in vol["replicas"]} == ids
        assert on_disks(c) == {r["id"]: r["node"] for r in vol["replicas"]}
        assert rw_nodes(vol) == {here, other}
        assert volume_sha256(ns, uri) == model.sha256()

        # the rejoined replica holds every write, those it missed too: attached on its
        # node, reads go to it first
        detach(api, "vol")
        vol = attach(api, "vol", other)
        assert {r["id"] for r in vol["replicas"]} == ids
        assert volume_sha256(c.nodes[other].netns, vol["endpoint"]) == model.sha256()


# --- 3: the leader manager dies under I/O (etcd, two managers) ---------------------------


class Writer(threading.Thread):
    """Writes a new pattern to one of eight 1 MiB slots and reads it back, over and over,
    through NBD from the attach node's namespace, until stopped. Every failure and the
    slowest round are kept."""

    def __init__(self, ns: str | None, uri: str, model: Model) -> None:
        super().__init__(name="nbd-writer", daemon=True)
        self.ns, self.uri, self.model = ns, uri, model
        self.stop = threading.Event()
        self.rounds = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            i = self.rounds
            off, pattern = (i % 8) * MiB, 1 + i % 250
            t = time.monotonic()
            try:
                qemu_io(
                    self.ns,
                    self.uri,
                    f"write -P {pattern} {off} {MiB}",
                    f"read -P {pattern} {off} {MiB}",
                    timeout=30,
                )
            except (AssertionError, subprocess.TimeoutExpired) as e:
                self.failures.append(f"round {i}: {e}")
                self.stop.wait(0.2)
                continue
            with self.lock:
                self.model.write(pattern, off, MiB)
                self.rounds += 1
                self.slowest = max(self.slowest, time.monotonic() - t)

    def wait_rounds(self, more: int, timeout: float) -> None:
        target = self.rounds + more
        until(f"{more} more writer rounds", lambda: self.rounds >= target or self.failures, timeout)
        assert not self.failures, self.failures


def test_the_leader_manager_dies_under_io(cluster):
    if not (os.environ.get("CARGOHOLD_ETCD") or shutil.which("etcd")):
        pytest.skip("needs etcd (Debian: etcd-server)")
    c = cluster(nodes=2, backend="etcd")
    assert len(c.managers) == 2
    lead = until("one leader", lambda: [m for m, v in leaders(c).items() if v], 15)
    assert len(lead) == 1, leaders(c)
    dead = lead[0]
    (alive,) = [m for m in c.managers if m.id != dead]

    with ManagerClient(alive.api) as api:
        api.create_volume("vol", SIZE, replicas=2, stale_replica_timeout=30)
        api.wait_volume("vol", lambda v: len(v["replicas"]) == 2, 30)
        vol = attach(api, "vol", "node-1")
        ns, uri = c.nodes["node-1"].netns, vol["endpoint"]
        model = Model(SIZE)
        writer = Writer(ns, uri, model)
        writer.start()
        try:
            writer.wait_rounds(3, 30)

            t0 = time.monotonic()
            rounds_at_kill = writer.rounds
            assert c.kill_manager(dead)
            until(f"{alive.id} leads", lambda: leaders(c)[alive.id], 20)
            took = time.monotonic() - t0
            rounds_at_takeover = writer.rounds
            assert not writer.failures, writer.failures
            # the I/O went on while no manager led
            assert rounds_at_takeover > rounds_at_kill, (rounds_at_kill, rounds_at_takeover)

            # control operations work on the new leader, I/O goes on meanwhile
            api.create_volume("two", SIZE, replicas=2, stale_replica_timeout=30)
            api.wait_volume("two", lambda v: len(v["replicas"]) == 2, 30)
            two = attach(api, "two", "node-2")
            qemu_io(c.nodes["node-2"].netns, two["endpoint"], "write -P 0x42 0 1M")
            qemu_io(c.nodes["node-2"].netns, two["endpoint"], "read -P 0x42 0 1M")
            op = api.create_snapshot("vol", "s1")
            api.wait_operation(op["id"], 60)
            assert [(s["name"], s["state"]) for s in api.snapshots("vol")] == [("s1", "ready")]

            # the killed manager comes back and stands by; it serves the API all the same
            assert c.start_manager(dead)
            state = until(
                f"{dead} answering", lambda: (s := leaders(c))[dead] is not None and s, 20
            )
            assert state == {dead: False, alive.id: True}, state
            back = next(m for m in c.managers if m.id == dead)
            with ManagerClient(back.api) as standby:
                assert standby.healthz()["leader"] is False
                standby.detach("two")
                standby.wait_detached("two", 60)
                assert standby.volume("vol")["state"] == "attached"

            writer.wait_rounds(3, 30)
            assert writer.rounds > rounds_at_takeover
            assert leaders(c) == {dead: False, alive.id: True}
        finally:
            writer.stop.set()
            writer.join(60)
        assert not writer.is_alive()
        assert not writer.failures, writer.failures
        # every round was quick: the data path never waited for a manager
        assert writer.slowest < 10, f"slowest write+read round: {writer.slowest:.1f} s"
        with writer.lock:
            assert volume_sha256(ns, uri) == model.sha256()
        vol = api.volume("vol")
        assert vol["robustness"] == "healthy" and rw_nodes(vol) == {"node-1", "node-2"}
        print(f"leader failover took {took:.1f} s; {writer.rounds} write+read rounds")
