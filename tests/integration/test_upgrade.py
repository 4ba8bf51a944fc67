"""A rolling upgrade of a running cluster under a ``cargohold verify`` workload: no I/O
error, and the history check passes (docs/upgrades.md).

A 3-node local cluster whose agents run with ``CARGOHOLD_AGENT_HANDOVER=1`` (as the
Kubernetes DaemonSet does): on SIGTERM an agent exits leaving its engines and replica
server running, and the next agent adopts them. A 3-replica volume is attached on node-1
and ``cargohold verify run`` writes, flushes and reads it over NBD all along, while the
"upgrade" happens in the documented order: the manager (SIGTERM, started again reporting
a new version through ``CARGOHOLD_VERSION_OVERRIDE``), then each node's agent, one by one,
each time waiting until the manager sees the node up at the new version. The engine and
the replica servers keep their PIDs: the data path never stopped. Then an agent two minor
versions away is refused (409, its node kept up, the reason on the node) and the workload's
own check and a second check of its saved history from another process pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.control.version_skew import VERSION_OVERRIDE_ENV
from cargohold.launcher.cluster import LocalCluster, get_json
from tests.support.cli import cli, js
from tests.support.polling import wait_until

pytestmark = pytest.mark.long  # ~2 minutes: make test-long / make upgrade-test
HANDOVER_ENV = "CARGOHOLD_AGENT_HANDOVER"
NEW = "0.2.0"  # the version the "upgraded" processes report (the package is 0.1.x)
WORKLOAD_SECONDS = 120


@contextlib.contextmanager
def env(**values: str | None) -> Iterator[None]:
    """Set (None: unset) variables in this process, which the launcher passes on."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pids_with(c: LocalCluster, *needles: str) -> list[int]:
    """This cluster's processes (its nodes' process groups, adopted ones included) whose
    command line has every needle: other clusters may run on the machine."""
    c.reload()
    ours = {p for name in c.nodes for p in c.node_processes(name)}
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) in ours:
            try:
                args = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in args for n in needles):
                out.append(int(p.name))
    return sorted(out)


def stop(pid: int) -> None:
    """SIGTERM a process the launcher in this process started, and reap it."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        assert time.monotonic() < deadline, f"pid {pid} did not exit on SIGTERM"
        time.sleep(0.05)


@pytest.fixture
def cluster() -> Iterator[tuple[LocalCluster, Path]]:
    d = Path(f"/tmp/upgrade-{os.getpid()}")
    with env(**{HANDOVER_ENV: "1", VERSION_OVERRIDE_ENV: None}):
        c = LocalCluster.create(str(d), nodes=3, backend="sqlite", managers=1).up(timeout=120)
        try:
            yield c, d
        finally:
            for name in c.nodes:  # agents hand over on SIGTERM: stop their children too
                with contextlib.suppress(Exception):
                    c.kill_node(name)
            c.down(purge=True)


def test_a_rolling_upgrade_under_a_verify_workload(cluster: tuple[LocalCluster, Path]) -> None:
    c, d = cluster
    cli(d, "volume", "create", "data", "--size", "64MiB", "--replicas", "3")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    engine = pids_with(c, " engine ", "--volume data ")
    servers = pids_with(c, " replica-server ")
    assert len(engine) == 1 and len(servers) == 3, (engine, servers)
    history = d / "verify.jsonl"
    out = open(d / "verify.out", "w")
    workload = subprocess.Popen(
        [sys.executable, "-m", "cargohold", "verify", "run", uri, "--seconds",
         str(WORKLOAD_SECONDS), "-c", "2", "--depth", "4", "--history", str(history),
         "-o", "json"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: history.exists() and history.stat().st_size > 4096, 30, "writes")
        t0 = time.monotonic()
        with env(**{VERSION_OVERRIDE_ENV: NEW}):
            # 1. the manager(s)
            manager = c.managers[0]
            assert manager.pid is not None
            stop(manager.pid)
            assert c.start_manager(manager.id, timeout=60)
            assert get_json(c.api, "/livez")["version"] == NEW
            # 2. the agents, node by node, each back up at the new version before the next
            for name in sorted(c.nodes):
                c.reload()
                agent = c.nodes[name].pid
                assert agent is not None
                stop(agent)
                assert c.start_node(name, timeout=60)
                wait_until(
                    lambda name=name: (
                        {
                            n["name"]: (n["state"], n["agent_version"])
                            for n in js(d, "node", "list")  # type: ignore[union-attr]
                        }[name]
                        == ("up", NEW)
                    ),
                    60,
                    f"{name} up at {NEW}",
                    0.2,
                )
                assert workload.poll() is None, "the workload ended before the upgrade did"
        upgraded_in = time.monotonic() - t0
        # the data path never stopped: the same engine and replica servers, adopted
        assert pids_with(c, " engine ", "--volume data ") == engine
        assert pids_with(c, " replica-server ") == servers
        assert "adopted the engine of volume data" in Path(c.nodes["node-1"].log).read_text()
        vol = js(d, "volume", "get", "data")
        assert vol["state"] == "attached" and vol["robustness"] == "healthy", vol  # type: ignore[index]

        # an agent too far from the manager is refused, its node kept up, the reason shown
        with env(**{VERSION_OVERRIDE_ENV: "0.4.0"}):
            c.reload()
            stop(c.nodes["node-3"].pid)  # type: ignore[arg-type]
            assert c.start_node("node-3", timeout=0)

            def refused() -> dict | None:  # type: ignore[type-arg]
                n = next(n for n in js(d, "node", "list") if n["name"] == "node-3")  # type: ignore[union-attr,index]
                return n if "0.4.0 is newer than manager version 0.2.0" in n["error"] else None

            n3 = wait_until(refused, 60, "node-3's agent refused", 0.2)
            assert n3["state"] == "up" and n3["agent_version"] == "0.4.0", n3
        with env(**{VERSION_OVERRIDE_ENV: NEW}):
            c.reload()
            stop(c.nodes["node-3"].pid)  # type: ignore[arg-type]
            assert c.start_node("node-3", timeout=60)
            wait_until(
                lambda: (
                    next(
                        n
                        for n in js(d, "node", "list")
                        if n["name"] == "node-3"  # type: ignore[union-attr,index]
                    )["error"]
                    == ""
                ),
                60,
                "node-3 accepted again",
                0.2,
            )
        assert workload.poll() is None, "the workload ended before the skew check did"
        assert pids_with(c, " replica-server ") == servers

        # the workload: no I/O error, every acknowledged write where it belongs
        rc = workload.wait(timeout=WORKLOAD_SECONDS + 120)
        out.close()
        text = (d / "verify.out").read_text()
        assert rc == 0, text
        result = json.loads(text[text.index("{") :])
        h = result["history"]
        assert result["ok"] and result["violations_total"] == 0, text
        assert h["writes_failed"] == 0 and h["writes_lost"] == 0, h
        assert h["writes_acked"] > 1000 and h["flushes_acked"] > 0 and h["reads_checked"] > 0, h
        again = subprocess.run(
            [sys.executable, "-m", "cargohold", "verify", "check", uri, "--history",
             str(history), "--rule", "acked", "-o", "json"],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(again.stdout)["ok"], again.stdout
        print(
            f"upgrade of 1 manager + 3 agents in {upgraded_in:.1f} s under verify: "
            f"{h['writes_acked']} writes, {h['flushes_acked']} flushes, "
            f"{h['reads_checked']} reads checked, 0 errors"
        )
    finally:
        if workload.poll() is None:
            workload.kill()
            workload.wait()
