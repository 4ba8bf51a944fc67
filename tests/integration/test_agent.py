"""The node agent as a real process (``cargohold agent``) against a fake manager on
loopback: registration, replicas, engines (start, crash, epoch change, replica re-add, stop),
operations, a manager outage, and a clean shutdown that leaves no child behind.

One agent serves the whole module (its node is ``node-1``); a second replica server stands
in for another node holding two more replicas of the volume. Each test scripts the
assignments it needs and waits for the heartbeats that show them done.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cargohold.replica.client import ReplicaClient
from tests.integration.fake_manager import JSON, FakeManager, engine_of, operation_of
from tests.support.nbd_clients import qemu_io
from tests.support.polling import wait_until
from tests.support.processes import ROOT, ServerProc

NODE = "node-1"
SIZE = 64 << 20
LOCAL = "data-r00000a"  # on the agent's node
REMOTE = ["data-r00000b", "data-r00000c"]  # on the stand-in for another node
OTHER = "data-r00000f"  # a second replica on the agent's node, deleted later


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line)"""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            out[int(entry)] = (int(fields[1]), int(fields[3]), cmd)
    return out


def descendants(pid: int) -> dict[int, str]:
    table = process_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for p, (ppid, _, cmd) in table.items():
            if ppid == parent and p not in found:
                found[p] = cmd
                frontier.append(p)
    return found


class AgentProc:
    def __init__(self, directory: Path, api: list[str], extra: list[str] | None = None) -> None:
        self.dir = directory
        self.api = api
        self.extra = extra or []  # more arguments (test_replica_tls.py: --ca-dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = str(directory) + ".log"
        self.replica_port = 0

    def start(self, fake: FakeManager, timeout: float = 30.0) -> AgentProc:
        cmd = [
            sys.executable,
            "-m",
            "cargohold",
            "agent",
            "--node",
            NODE,
            "--address",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--heartbeat",
            "0.2",
            "--zone",
            "z1",
            "--tag",
            "ssd",
        ]
        for url in self.api:
            cmd += ["--api", url]
        cmd += self.extra
        env = dict(os.environ, PYTHONPATH=ROOT, CARGOHOLD_LOG="INFO")
        registered = len(fake.registrations)
        with open(self.log_path, "ab") as log:
            # a session of its own, like a node: teardown finds every child by its session
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        wait_until(
            lambda: len(fake.registrations) > registered or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout,
            "the agent to register",
            0.05,
        )
        assert self.proc.poll() is None, self.output()
        self.replica_port = fake.registrations[-1][1]["replica_port"]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def engine_pid(self, volume: str = "data") -> int | None:
        for pid, cmd in descendants(self.pid).items():
            if " engine " in cmd and f"--volume {volume} " in cmd:
                return pid
        return None

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        """Kill whatever of this agent's session is left, each by its PID."""
        if self.proc is None:
            return
        for pid, (_, sid, _) in process_table().items():
            if sid == self.proc.pid:
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)


@dataclass
class Env:
    fake: FakeManager
    agent: AgentProc
    remote: ServerProc
    tmp: Path
    epoch: int = 1

    @property
    def disk(self) -> str:
        return str(self.agent.dir / "disk-0")

    def specs(self) -> list[str]:
        return [f"{LOCAL}@127.0.0.1:{self.agent.replica_port}"] + [
            f"{rid}@127.0.0.1:{self.remote.port}" for rid in REMOTE
        ]

    def serve(self, epoch: int | None = None) -> JSON:
        """Assign the volume's engine here (its local replica too); -> the engine's report
        once it runs with every replica current."""
        self.epoch = epoch or self.epoch
        local = {"id": LOCAL, "volume": "data", "size_bytes": SIZE, "disk_path": self.disk}
        engine = {
            "volume": "data",
            "epoch": self.epoch,
            "size_bytes": SIZE,
            "replicas": self.specs(),
            "local": LOCAL,
        }
        self.fake.assign(NODE, replicas=[local], engines=[engine])

        def serving(hb: JSON) -> bool:
            e = engine_of(hb, "data")
            if not (e and e["running"] and e["epoch"] == self.epoch):
                return False
            return sorted(r["mode"] for r in e["status"]["replicas"]) == ["RW"] * 3

        return engine_of(self.fake.wait_heartbeat(NODE, serving, 40, "the engine serving"), "data")  # type: ignore[return-value]


async def _create_remote(port: int) -> None:
    c = await ReplicaClient.connect("127.0.0.1", port)
    try:
        for rid in REMOTE:
            await c.create(rid, SIZE)
    finally:
        await c.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("agent")
    fake = FakeManager().start()
    (tmp / "remote").mkdir()
    remote = ServerProc([str(tmp / "remote")], log_dir=str(tmp)).start()
    asyncio.run(_create_remote(remote.port))
    # the first manager URL leads nowhere: the agent fails over to the second
    agent = AgentProc(tmp / NODE, [f"unix:{tmp}/no-manager.sock", fake.url])
    e = Env(fake, agent, remote, tmp)
    try:
        agent.start(fake)
        yield e
    finally:
        e.agent.cleanup()
        e.remote.stop()
        fake.stop()


def test_registers_with_its_disks(env: Env) -> None:
    name, reg = env.fake.registrations[-1]
    assert name == NODE
    assert reg["address"] == "127.0.0.1" and reg["zone"] == "z1" and reg["tags"] == ["ssd"]
    assert reg["agent_pid"] == env.agent.pid
    assert reg["replica_port"] > 0
    [disk] = reg["disks"]
    assert disk["name"] == "disk-0" and disk["path"] == env.disk and disk["capacity_bytes"] > 0
    hb = env.fake.wait_heartbeat(NODE, lambda hb: True, what="any heartbeat")
    assert hb["replica_port"] == reg["replica_port"]
    state = json.loads((env.agent.dir / "agent.json").read_text())
    assert state["replica_port"] == reg["replica_port"]


def test_creates_replicas_and_skips_bad_assignments(env: Env) -> None:
    good = [
        {"id": LOCAL, "volume": "data", "size_bytes": SIZE, "disk_path": env.disk},
        {"id": OTHER, "volume": "data", "size_bytes": 4 << 20, "disk_path": ""},
    ]
    bad_engine = {"volume": "Not_A/Name", "epoch": 1, "size_bytes": SIZE, "replicas": ["x@h:1"]}
    env.fake.assign(
        NODE,
        replicas=[*good, {"id": 7, "size_bytes": "lots"}],
        engines=[bad_engine],
        operations=[{"id": "op-x", "kind": "defragment", "volume": "data"}],
    )
    hb = env.fake.wait_heartbeat(
        NODE, lambda hb: {r["id"] for r in hb["replicas"]} >= {LOCAL, OTHER}, what="replicas"
    )
    reps = {r["id"]: r for r in hb["replicas"]}
    assert reps[LOCAL]["volume"] == "data" and reps[LOCAL]["size_bytes"] == SIZE
    assert reps[LOCAL]["disk_path"] == env.disk and reps[OTHER]["disk_path"] == env.disk
    for rid in (LOCAL, OTHER):
        assert (Path(env.disk) / "replicas" / rid / "replica.meta").exists()
    out = env.agent.output()
    assert f"replica {LOCAL} created on disk-0" in out
    assert "skipping a bad replica assignment" in out
    assert "skipping the engine assignment of volume 'Not_A/Name'" in out
    assert "skipping a bad operation assignment" in out
    assert env.agent.proc is not None and env.agent.proc.poll() is None


def test_runs_an_engine_reachable_over_nbd(env: Env) -> None:
    eng = env.serve()
    endpoint = eng["endpoint"]
    assert endpoint.startswith("nbd://127.0.0.1:") and endpoint.endswith("/data")
    assert eng["status"]["epoch"] == env.epoch and eng["error"] == ""
    size = subprocess.run(["nbdinfo", "--size", endpoint], capture_output=True, text=True)
    assert size.stdout.strip() == str(SIZE), size.stderr
    qemu_io(endpoint, "write -P 0x5a 0 1M")
    qemu_io(endpoint, "read -P 0x5a 0 1M")
    assert f"started engine for volume data (epoch {env.epoch}) on 127.0.0.1:" in env.agent.output()


def test_restarts_a_crashed_engine_on_the_same_endpoint(env: Env) -> None:
    before = env.serve()
    # written here (no flush: an acknowledged write survives the engine's crash), not by an
    # earlier test: under -n 2 --dist worksteal this test may run on another worker
    qemu_io(before["endpoint"], "write -P 0x5a 0 1M")
    pid = env.agent.engine_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    hb = env.fake.wait_heartbeat(
        NODE, lambda hb: "killed by signal 9" in (engine_of(hb, "data") or {}).get("error", "")
    )
    assert not engine_of(hb, "data")["running"]  # type: ignore[index]
    after = env.serve()
    assert env.agent.engine_pid() not in (None, pid)
    assert after["endpoint"] == before["endpoint"]
    qemu_io(after["endpoint"], "read -P 0x5a 0 1M")


def test_re_adds_a_replica_that_comes_back(env: Env) -> None:
    eng = env.serve()
    port = env.remote.port
    env.remote.kill()
    qemu_io(eng["endpoint"], "write -P 0x6b 1M 1M")  # acknowledged by the local replica alone

    def dropped(hb: JSON) -> bool:
        e = engine_of(hb, "data")
        modes = {r["id"]: r["mode"] for r in (e or {}).get("status", {}).get("replicas", [])}
        return all(modes.get(rid) == "ERR" for rid in REMOTE)

    env.fake.wait_heartbeat(NODE, dropped, what="the remote replicas dropped")
    env.remote = ServerProc([str(env.tmp / "remote")], port=port, log_dir=str(env.tmp)).start()
    env.serve()  # all three RW again: re-added and rebuilt
    assert "added replica data-r00000b@" in env.agent.output()
    qemu_io(eng["endpoint"], "read -P 0x6b 1M 1M")


def test_replaces_the_engine_when_the_epoch_changes(env: Env) -> None:
    """A new epoch replaces the engine; the new one serves what the old one stored (written
    here: under ``-n 2`` the module's other tests may run on another worker)."""
    first = env.serve()
    qemu_io(first["endpoint"], "write -P 0x4b 5M 1M", "flush")
    old = env.agent.engine_pid()
    eng = env.serve(env.epoch + 1)
    assert eng["status"]["epoch"] == env.epoch
    wait_until(lambda: env.agent.engine_pid() not in (None, old), 30.0, "the new engine", 0.05)
    assert not os.path.exists(f"/proc/{old}/cmdline") or old not in descendants(env.agent.pid)
    qemu_io(eng["endpoint"], "read -P 0x4b 5M 1M")


def test_runs_operations_and_reports_them(env: Env) -> None:
    env.serve()
    snap = {
        "id": "op-1",
        "kind": "snapshot-create",
        "volume": "data",
        "args": {"name": "before-upgrade", "labels": {"app": "db"}},
    }
    bad = {"id": "op-2", "kind": "expand", "volume": "data", "args": {"size_bytes": "big"}}
    env.fake.assign(NODE, operations=[snap, bad])

    def finished(hb: JSON) -> bool:
        ops = [operation_of(hb, oid) for oid in ("op-1", "op-2")]
        return all(o and o["state"] in ("succeeded", "failed") for o in ops)

    hb = env.fake.wait_heartbeat(NODE, finished, what="both operations finished")
    done, failed = operation_of(hb, "op-1"), operation_of(hb, "op-2")
    assert done["state"] == "succeeded" and done["progress"] == 1.0, done  # type: ignore[index]
    assert done["result"]["snapshot"]["name"] == "before-upgrade"  # type: ignore[index]
    assert failed["state"] == "failed" and "size_bytes" in failed["error"]  # type: ignore[index]
    env.fake.assign(NODE, operations=[])  # the manager has the results: no more reports
    env.fake.wait_heartbeat(NODE, lambda hb: not hb["operations"], what="no operations")


def test_keeps_serving_while_the_manager_is_down(env: Env) -> None:
    eng = env.serve()
    pid = env.agent.engine_pid()
    registrations = len(env.fake.registrations)
    env.fake.stop()
    try:
        wait_until(
            lambda: "heartbeat failed" in env.agent.output(), 30.0, "a failed heartbeat", 0.05
        )
        qemu_io(eng["endpoint"], "write -P 0x7c 2M 1M")
        qemu_io(eng["endpoint"], "read -P 0x7c 2M 1M")
        assert env.agent.engine_pid() == pid
    finally:
        env.fake.start(forget=True)  # a manager that lost its state: the agent registers again
    wait_until(lambda: len(env.fake.registrations) > registrations, 30.0, "registering again", 0.05)
    assert env.serve()["endpoint"] == eng["endpoint"]
    assert env.agent.engine_pid() == pid


@pytest.mark.parametrize(("status", "etype"), [(409, "WrongState"), (409, "Conflict"), (418, "")])
def test_a_refused_heartbeat_is_logged_and_retried(env: Env, status: int, etype: str) -> None:
    """Any refusal of the manager (every 4xx is mapped as for the CLI now: a 409 is a
    WrongState or a Busy, not an InvalidArgument) leaves the agent and its engine running,
    and it heartbeats on once the manager answers again."""
    eng = env.serve()
    pid = env.agent.engine_pid()
    with env.fake.lock:
        env.fake.refuse, env.fake.refused = (status, etype), 0
    try:
        wait_until(lambda: env.fake.refused >= 3, 30.0, "three refused heartbeats", 0.05)
        assert env.agent.proc is not None and env.agent.proc.poll() is None, env.agent.output()
        qemu_io(eng["endpoint"], "write -P 0x3d 1M 1M")
    finally:
        with env.fake.lock:
            env.fake.refuse = None
    assert env.serve()["endpoint"] == eng["endpoint"]
    assert env.agent.engine_pid() == pid
    assert f"refused ({etype})" in env.agent.output()


def test_stops_an_engine_no_longer_assigned(env: Env) -> None:
    env.serve()
    pid = env.agent.engine_pid()
    env.fake.assign(NODE, engines=[])
    env.fake.wait_heartbeat(NODE, lambda hb: engine_of(hb, "data") is None, what="no engine")
    wait_until(lambda: env.agent.engine_pid() is None, 30.0, "the engine to exit", 0.05)
    assert pid not in descendants(env.agent.pid)
    assert not (env.agent.dir / "run" / "data.sock").exists()


def test_deletes_only_the_replicas_it_is_told_to(env: Env) -> None:
    other = {"id": OTHER, "volume": "data", "size_bytes": 4 << 20, "disk_path": "", "delete": True}
    env.fake.assign(NODE, replicas=[other], engines=[])  # LOCAL is not listed: it stays
    hb = env.fake.wait_heartbeat(
        NODE, lambda hb: OTHER not in {r["id"] for r in hb["replicas"]}, what="the deletion"
    )
    assert LOCAL in {r["id"] for r in hb["replicas"]}
    assert not (Path(env.disk) / "replicas" / OTHER).exists()
    assert (Path(env.disk) / "replicas" / LOCAL / "replica.meta").exists()


def test_sigterm_stops_every_child_and_the_replica_port_survives(env: Env) -> None:
    """SIGTERM stops the agent's children; the next agent keeps its replica port, and the
    engine it starts from the same replicas serves what was written before the stop (its
    own pattern: under ``-n 2`` the module's other tests may run on another worker)."""
    eng = env.serve()
    qemu_io(eng["endpoint"], "write -P 0x6e 3M 1M", "flush")
    children = descendants(env.agent.pid)
    assert any(" engine " in c for c in children.values()), children
    assert any(" replica-server " in c for c in children.values()), children
    port = env.agent.replica_port
    assert env.agent.stop() == 0
    wait_until(lambda: not set(children) & set(process_table()), 15, "every child to exit", 0.05)
    out = env.agent.output()
    assert "stopped engine for volume data" in out and "stopped the replica server" in out

    env.agent = AgentProc(env.agent.dir, [env.fake.url]).start(env.fake)
    assert env.agent.replica_port == port  # from NODEDIR/agent.json
    eng = env.serve()  # same replica addresses: the engine starts from the same replicas
    qemu_io(eng["endpoint"], "read -P 0x6e 3M 1M")


def test_a_restarted_agent_adopts_what_the_last_one_left_running(env: Env) -> None:
    """SIGKILL the agent alone (not its children): the replica server and the engine keep
    serving, and the next agent adopts them (same PIDs, same endpoint) instead of
    restarting them, so an NBD connection open across the restart keeps working."""
    from cargohold.verify.client import Pool

    eng = env.serve()
    children = descendants(env.agent.pid)
    engine = env.agent.engine_pid()
    server = next(p for p, c in children.items() if " replica-server " in c)
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(Pool.connect(eng["endpoint"], 1))
    try:
        loop.run_until_complete(pool.pick().write(4 << 20, b"\x5a" * 4096, fua=True))
        os.kill(env.agent.pid, signal.SIGKILL)
        assert env.agent.proc is not None
        env.agent.proc.wait(10)
        old = env.agent
        env.agent = AgentProc(old.dir, [env.fake.url]).start(env.fake)
        again = env.serve()  # same epoch: reported running, nothing restarted
        assert again["endpoint"] == eng["endpoint"]
        assert {engine, server} <= set(process_table()), "an adopted child is gone"
        assert "adopted the engine of volume data" in env.agent.output()
        # the connection made before the agent died still works, through the same engine
        loop.run_until_complete(pool.pick().write(4 << 20 | 4096, b"\xa5" * 4096, fua=True))
        data = loop.run_until_complete(pool.read(4 << 20, 8192))
        assert bytes(data) == b"\x5a" * 4096 + b"\xa5" * 4096
    finally:
        loop.run_until_complete(pool.close())
        loop.close()
    # the adopted children are not in the new agent's session: its SIGTERM stops them
    assert env.agent.stop() == 0
    wait_until(
        lambda: not {engine, server} & set(process_table()),
        15,
        "the adopted children to exit",
        0.05,
    )


def test_a_handover_agent_leaves_its_children_running_on_sigterm(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CARGOHOLD_AGENT_HANDOVER (docs/upgrades.md): SIGTERM ends the agent alone, as in a
    rollout; its engine and replica server keep serving an open NBD connection, and the
    next agent adopts them. Without handover, SIGTERM stops them (the test above)."""
    from cargohold.verify.client import Pool

    monkeypatch.setenv("CARGOHOLD_AGENT_HANDOVER", "1")
    if env.agent.proc is not None and env.agent.proc.poll() is None:
        env.agent.stop()
    env.agent = AgentProc(env.agent.dir, [env.fake.url]).start(env.fake)
    eng = env.serve()
    engine = env.agent.engine_pid()
    server = next(p for p, c in descendants(env.agent.pid).items() if " replica-server " in c)
    loop = asyncio.new_event_loop()
    pool = loop.run_until_complete(Pool.connect(eng["endpoint"], 1))
    try:
        loop.run_until_complete(pool.pick().write(6 << 20, b"\x3c" * 4096, fua=True))
        adopted = env.agent.output().count("adopted the engine of volume data")
        assert env.agent.stop() == 0  # SIGTERM: a clean exit, the children left running
        assert "leaving 1 engine(s) and the replica server running" in env.agent.output()
        assert {engine, server} <= set(process_table()), "handover stopped a child"
        loop.run_until_complete(pool.pick().write(6 << 20 | 4096, b"\xc3" * 4096, fua=True))
        monkeypatch.delenv("CARGOHOLD_AGENT_HANDOVER")
        env.agent = AgentProc(env.agent.dir, [env.fake.url]).start(env.fake)
        again = env.serve()
        assert again["endpoint"] == eng["endpoint"]
        assert env.agent.output().count("adopted the engine of volume data") == adopted + 1
        data = loop.run_until_complete(pool.read(6 << 20, 8192))
        assert bytes(data) == b"\x3c" * 4096 + b"\xc3" * 4096
    finally:
        loop.run_until_complete(pool.close())
        loop.close()
    assert env.agent.stop() == 0  # no handover now: its SIGTERM stops the adopted children
    wait_until(
        lambda: not {engine, server} & set(process_table()),
        15,
        "the adopted children to exit",
        0.05,
    )


def test_acts_only_for_a_manager_of_its_disks_cluster(env: Env) -> None:
    """Issue 14: the disk is stamped with the first cluster id a manager gives; a manager
    of another cluster (an empty state store given --init) is refused — nothing deleted,
    the refusal reported — and a deletion by its own cluster goes to the disk's trash."""
    mine, theirs = "c-" + "1" * 32, "c-" + "2" * 32
    extra = "data-r0000e1"
    if env.agent.proc is None or env.agent.proc.poll() is not None:
        env.agent = AgentProc(env.agent.dir, [env.fake.url]).start(env.fake)
    local = {"id": LOCAL, "volume": "data", "size_bytes": SIZE, "disk_path": env.disk}
    new = {"id": extra, "volume": "data", "size_bytes": 4 << 20, "disk_path": env.disk}
    env.fake.assign(NODE, replicas=[local, new], engines=[], cluster_id=mine)
    hb = env.fake.wait_heartbeat(
        NODE, lambda hb: extra in {r["id"] for r in hb["replicas"]}, what="the new replica"
    )
    stamp = json.loads((Path(env.disk) / "cargohold-disk.json").read_text())
    assert (stamp["magic"], stamp["cluster_id"], stamp["node"]) == ("cargohold-disk", mine, NODE)
    reps = {r["id"]: r for r in hb["replicas"]}
    assert reps[extra]["cluster_id"] == mine  # stamped at CREATE
    assert reps[LOCAL]["cluster_id"] == "" and reps[LOCAL]["disk_cluster_id"] == mine

    # another cluster's manager asks for a deletion: refused, reported, nothing deleted
    gone = {**new, "delete": True}
    env.fake.assign(NODE, replicas=[gone], engines=[], cluster_id=theirs)
    hb = env.fake.wait_heartbeat(
        NODE, lambda hb: "cluster id mismatch" in hb.get("refusal", ""), what="the refusal"
    )
    assert mine in hb["refusal"] and theirs in hb["refusal"]
    time.sleep(1.0)  # several heartbeats of the wrong manager
    assert (Path(env.disk) / "replicas" / extra / "replica.meta").exists()
    assert env.agent.output().count("cluster id mismatch") == 1  # said once, not per beat

    # its own cluster asks: done, into the trash (where it can be moved back from)
    env.fake.assign(NODE, replicas=[gone], engines=[], cluster_id=mine)
    hb = env.fake.wait_heartbeat(
        NODE,
        lambda hb: extra not in {r["id"] for r in hb["replicas"]} and not hb.get("refusal"),
        what="the deletion",
    )
    assert not (Path(env.disk) / "replicas" / extra).exists()
    assert extra in [p.name.rsplit(".", 1)[0] for p in (Path(env.disk) / "trash").iterdir()]
    assert LOCAL in {r["id"] for r in hb["replicas"]}

    # undone: moved back from the trash, it is listed again, with its cluster id
    env.fake.assign(NODE, replicas=[local], engines=[], cluster_id=mine)
    (trashed,) = [p for p in (Path(env.disk) / "trash").iterdir() if p.name.startswith(extra)]
    trashed.rename(Path(env.disk) / "replicas" / extra)
    hb = env.fake.wait_heartbeat(
        NODE, lambda hb: extra in {r["id"] for r in hb["replicas"]}, what="it back"
    )
    back = {r["id"]: r for r in hb["replicas"]}[extra]
    assert back["cluster_id"] == mine and back["size_bytes"] == 4 << 20
