"""The local cluster launcher (``cargohold up`` / ``down`` / ``status``, ``LocalCluster``).

Most tests run stand-ins for ``cargohold manager`` and ``cargohold agent`` (``FAKE`` below:
same flags, a few lines of http.server; the fake agent heartbeats over TCP and has a child
process), so they check the launcher itself: process groups, cluster.json, killing and
restarting a node as a whole, refusing a second ``up``, a clean ``down``, etcd and two
managers, and nodes in network namespaces cut off and healed. ``test_real_cluster`` runs
the real manager and agents.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from cargohold.errors import ManagerUnavailable
from cargohold.launcher import ClusterRunning, LauncherError, LocalCluster, NoCluster, get_json
from cargohold.launcher import netns as lab_netns
from tests.support.polling import wait_until
from tests.support.processes import ROOT

FAKE = r'''
"""Stand-ins for `cargohold manager` and `cargohold agent` (the flags of control-plane.md)."""
import argparse, json, os, signal, socket, ssl, subprocess, sys, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingUnixStreamServer

DOWN_AFTER = 1.5


def manager(argv):
    p = argparse.ArgumentParser()
    for flag in ("--state", "--listen", "--unix", "--id", "--tls-dir", "--admin-token-file",
                 "--etcd-tls-dir", "--cluster-id", "--key-dir"):
        p.add_argument(flag)
    p.add_argument("--init", action="store_true")
    a = p.parse_args(argv)
    if a.admin_token_file:
        with open(os.open(a.admin_token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("chk_000000000000_" + "A" * 43 + "\n")
    backend = a.state.split(":", 1)[0]
    if backend == "etcd":  # fail like a manager without its store would
        context = None
        if a.etcd_tls_dir:  # etcd wants the managers' client certificate
            context = ssl.create_default_context(cafile=os.path.join(a.etcd_tls_dir, "ca.crt"))
            context.check_hostname = False
            context.load_cert_chain(*(os.path.join(a.etcd_tls_dir, f) for f in ("tls.crt", "tls.key")))
        urllib.request.urlopen(a.state[5:].split(",")[0] + "/health", timeout=5, context=context).read()
    nodes, lock = {}, threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, body, code=200):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            now = time.time()
            with lock:
                view = [dict(n, state="up" if now - n["heartbeat_at"] < DOWN_AFTER else "down")
                        for n in nodes.values()]
            up = sum(n["state"] == "up" for n in view)
            if self.path == "/healthz":
                self.reply({"ok": True, "leader": True, "manager": a.id, "backend": backend})
            elif self.path == "/api/v1/nodes":
                self.reply(view)
            elif self.path == "/api/v1/status":
                self.reply({"backend": backend, "leader": a.id,
                            "nodes": {"up": up, "down": len(view) - up, "cordoned": 0},
                            "volumes": {"total": 0, "healthy": 0, "degraded": 0,
                                        "faulted": 0, "attached": 0},
                            "capacity_bytes": 1 << 30, "allocated_bytes": 0})
            else:
                self.reply({"error": {"type": "NotFound", "message": self.path}}, 404)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = self.path.split("/")[4]
            with lock:
                nodes[name] = dict(body, name=name, heartbeat_at=time.time())
            self.reply({})

    class UnixServer(ThreadingUnixStreamServer):
        daemon_threads = True

    host, port = a.listen.rsplit(":", 1)
    if os.path.exists(a.unix):
        os.unlink(a.unix)
    tcp = ThreadingHTTPServer((host, int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # HTTPS with the launcher's certificate
    ctx.load_cert_chain(os.path.join(a.tls_dir, "tls.crt"), os.path.join(a.tls_dir, "tls.key"))
    tcp.socket = ctx.wrap_socket(tcp.socket, server_side=True)
    servers = [tcp, UnixServer(a.unix, Handler)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()

    def stop(*_):
        os.unlink(a.unix)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        signal.pause()


def agent(argv):
    p = argparse.ArgumentParser()
    for flag in ("--node", "--address", "--dir", "--zone", "--ca-dir", "--metrics-port"):
        p.add_argument(flag)
    p.add_argument("--api", action="append")
    p.add_argument("--disk", action="append")
    a = p.parse_args(argv)
    if os.environ.get("FAKE_SILENT_AGENT"):  # an agent that never reaches the manager
        time.sleep(3600)
    child = subprocess.Popen([sys.executable, __file__, "child"])  # in the agent's group
    with open(os.path.join(a.dir, "child.pid"), "w") as f:
        f.write(str(child.pid))
    server = socket.create_server((a.address, 0))
    threading.Thread(target=lambda: [server.accept()[0].close() for _ in iter(int, 1)],
                     daemon=True).start()

    def stop(*_):
        child.terminate()
        child.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    tls = os.environ["CARGOHOLD_TLS_DIR"]  # the agent's own certificate (agent/<node>)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(os.path.join(tls, "ca.crt"))
    ctx.load_cert_chain(os.path.join(tls, "tls.crt"), os.path.join(tls, "tls.key"))
    body = json.dumps({"zone": a.zone or "", "address": a.address, "agent_pid": os.getpid(),
                       "replica_port": server.getsockname()[1]}).encode()
    while True:
        for api in a.api:
            req = urllib.request.Request(f"{api}/api/v1/nodes/{a.node}/heartbeat", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=0.5, context=ctx).read()
            except OSError:
                pass
        time.sleep(0.2)


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "child":
        time.sleep(3600)
    {"manager": manager, "agent": agent}[role](rest)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def _states(cluster: LocalCluster) -> dict[str, str]:
    return {n["name"]: n["state"] for n in get_json(cluster.api_answering(), "/api/v1/nodes")}


def _all_pids(cluster: LocalCluster) -> set[int]:
    pids = {p.pid for p in cluster.processes if p.pid}
    for name in cluster.nodes:
        pids.update(cluster.node_processes(name))
    return pids


@pytest.fixture
def fake(tmp_path) -> list[str]:
    path = tmp_path / "fake-cargohold.py"
    path.write_text(FAKE)
    return [sys.executable, str(path)]


@pytest.fixture
def clusters():
    """Clusters a test started; stopped at the end whatever happened."""
    started: list[str] = []
    yield started
    for d in started:
        try:
            LocalCluster.load(d).down(grace=2.0)
        except NoCluster:
            pass


def test_up_kill_start_down(tmp_path, fake, clusters):
    d = str(tmp_path / "c")
    clusters.append(d)
    c = LocalCluster.create(d, nodes=3, zones=["a", "b"], command=fake).up(timeout=20)

    with open(os.path.join(d, "cluster.json")) as f:
        record = json.load(f)
    assert record["api"] == f"unix:{d}/api.sock" and record["backend"] == "sqlite"
    assert record["netns"] is False and record["etcd"] is None
    assert record["api_tcp"].startswith("https://127.0.0.1:")
    assert [n["zone"] for n in record["nodes"].values()] == ["a", "b", "a"]
    assert {n["address"] for n in record["nodes"].values()} == {"127.0.0.1"}
    mgr = record["managers"][0]
    assert mgr["id"] == "manager-1"
    with open(f"/proc/{mgr['pid']}/cmdline", "rb") as f:
        assert f"sqlite:{d}/state.db".encode() in f.read()
    assert get_json(c.api, "/healthz")["manager"] == "manager-1"

    # each agent leads a process group of its own, its children in it
    for name, node in c.nodes.items():
        assert node.pgid == node.pid == os.getpgid(node.pid) != os.getpgrp()
        with open(os.path.join(node.dir, "child.pid")) as f:
            child = int(f.read())
        assert os.getpgid(child) == node.pgid
        assert c.node_processes(name) == sorted([node.pid, child])
        assert os.path.isdir(os.path.join(node.dir, "disk-0"))

    # a second `up` on a live directory is refused and harms nothing
    with pytest.raises(ClusterRunning, match=r"cargohold down --dir"):
        LocalCluster.create(d, nodes=1, command=fake).up(timeout=5)
    assert LocalCluster.load(d).nodes["node-1"].pid == c.nodes["node-1"].pid
    assert all(p.running() for p in c.processes)

    # kill a node: the agent and its child die together, the rest lives on
    victims = c.node_processes("node-2")
    assert len(victims) == 2
    assert c.kill_node("node-2")
    assert not any(_alive(p) for p in victims)
    assert c.nodes["node-2"].pid is None and not c.node_processes("node-2")
    wait_until(lambda: _states(c)["node-2"] == "down", 10.0, "node-2 down", 0.05)
    assert c.nodes["node-1"].running() and c.managers[0].running()

    # start it again from another LocalCluster (as `cargohold node start` does)
    assert LocalCluster.load(d).start_node("node-2", timeout=10)
    c.reload()
    assert c.nodes["node-2"].running() and c.nodes["node-2"].pid not in victims
    assert _states(c) == {"node-1": "up", "node-2": "up", "node-3": "up"}
    assert not LocalCluster.load(d).start_node("node-2")  # already running

    # everything stops; nothing is left
    pids = _all_pids(c)
    assert len(pids) == 1 + 3 * 2
    stopped = c.down()
    assert len(stopped) == 4
    assert not [p for p in pids if _alive(p)]
    assert not os.path.exists(os.path.join(d, "cluster.json"))
    assert not os.path.exists(os.path.join(d, "api.sock"))
    with pytest.raises(NoCluster):
        LocalCluster.load(d)


def test_cli_up_status_down(tmp_path, fake, clusters):
    d = str(tmp_path / "cli")
    clusters.append(d)
    env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="250", CARGOHOLD_DIR=d)
    env["CARGOHOLD_LAUNCHER_COMMAND"] = shlex.join(fake)

    def run(*args: str, rc: int = 0) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "cargohold", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert p.returncode == rc, p.stdout + p.stderr
        return p.stdout + (p.stderr if rc else "")

    out = run("up", "--nodes", "2", "--zones", "x,y", "--timeout", "20")
    assert f"export CARGOHOLD_DIR={d}" in out
    assert f"cluster up: 2 nodes, manager at unix:{d}/api.sock (https://127.0.0.1:" in out
    assert "started node-2 agent" in out

    status = json.loads(run("status", "-o", "json"))
    assert {n["name"]: (n["state"], n["zone"]) for n in status["nodes"]} == {
        "node-1": ("up", "x"),
        "node-2": ("up", "y"),
    }
    assert status["status"]["nodes"]["up"] == 2
    table = run("status", "--dir", d)
    assert "node-2" in table and "volumes: 0" in table and "capacity:" in table
    assert "node-1" in run("status", "--api", f"unix:{d}/api.sock", "-o", "yaml")

    pids = _all_pids(LocalCluster.load(d))
    assert "stopped node-1" in run("down", "--purge")
    assert not [p for p in pids if _alive(p)]
    assert not os.path.exists(d)
    # nothing where it looked: it says where, and fails (the cluster meant may run elsewhere)
    assert f"no local cluster in {d}" in run("down", rc=4)


def test_etcd_two_managers_failover(tmp_path, fake, clusters):
    if not os.access("/usr/bin/etcd", os.X_OK):
        pytest.skip("etcd is not installed")
    d = str(tmp_path / "e")
    clusters.append(d)
    c = LocalCluster.create(d, nodes=1, backend="etcd", command=fake).up(timeout=30)
    assert c.etcd is not None and c.etcd.running()
    assert [m.id for m in c.managers] == ["manager-1", "manager-2"]
    assert c.apis == [f"unix:{d}/api.sock", f"unix:{d}/api-2.sock"]
    # etcd speaks TLS and wants a client certificate: the managers' is admitted, none is not
    assert c.etcd.client_url.startswith("https://") and c._etcd_health() is None
    with pytest.raises(ManagerUnavailable):
        get_json(c.etcd.client_url, "/health")
    with open(f"/proc/{c.nodes['node-1'].pid}/cmdline", "rb") as f:
        assert f.read().count(b"--api") == 2

    def argv(m: str) -> list[bytes]:
        with open(f"/proc/{c._manager(m).pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")

    # a new cluster: only the first manager makes it (--init), and only this once, under
    # the id of the cluster's CA (made by `up`: etcd's certificates come from it)
    assert b"--init" in argv("manager-1") and b"--init" not in argv("manager-2")
    ca_id = open(os.path.join(d, "ca", "cluster")).read().strip()
    assert argv("manager-1")[argv("manager-1").index(b"--cluster-id") + 1].decode() == ca_id
    assert b"--cluster-id" not in argv("manager-2")
    for m in ("manager-1", "manager-2"):
        assert b"--etcd-tls-dir" in argv(m)
    assert LocalCluster.load(d).initialized

    assert c.kill_manager("manager-1")
    with pytest.raises(ManagerUnavailable):
        get_json(c.api, "/healthz")
    assert c.api_answering() == c.apis[1]
    assert get_json(c.apis[1], "/healthz")["backend"] == "etcd"
    assert c.start_manager("manager-1")
    assert get_json(c.api, "/healthz")["manager"] == "manager-1"
    assert b"--init" not in argv("manager-1")  # a lost store is refused, never made anew

    pids = _all_pids(c)
    c.down(purge=True)
    assert not [p for p in pids if _alive(p)]
    assert not os.path.exists(d)


def _connect_from(ns: str, host: str, port: int) -> bool:
    def attempt() -> bool:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return True
        except OSError:
            return False

    return lab_netns.call_in(ns, attempt)


@pytest.mark.root
def test_netns_partition_and_heal(tmp_path, fake, clusters):
    why = lab_netns.available()
    if why:
        pytest.skip(why)
    d = str(tmp_path / "n")
    clusters.append(d)
    c = LocalCluster.create(d, nodes=2, netns=True, command=fake).up(timeout=20)
    lab = c.lab
    assert lab is not None
    assert lab_netns.existing(lab.prefix) == sorted(lab.namespaces(2))
    assert c.managers[0].listen == f"{lab.subnet}.2:9600"
    root_net = os.readlink("/proc/self/ns/net")
    for name, node in c.nodes.items():
        assert node.address == f"{lab.subnet}.{10 + node.index}"
        assert node.netns == f"{lab.prefix}-{name}"
        assert os.readlink(f"/proc/{node.pid}/ns/net") != root_net
    ports = {n["name"]: n["replica_port"] for n in get_json(c.api, "/api/v1/nodes")}
    node1 = c.nodes["node-1"]
    assert _connect_from(lab.manager_ns, node1.address, ports["node-1"])

    c.partition_node("node-1")
    wait_until(lambda: _states(c) == {"node-1": "down", "node-2": "up"}, 10.0, "node-1 down", 0.05)
    assert not _connect_from(lab.manager_ns, node1.address, ports["node-1"])
    c.heal_node("node-1")
    wait_until(lambda: _states(c) == {"node-1": "up", "node-2": "up"}, 10.0, "node-1 up", 0.05)
    assert _connect_from(lab.manager_ns, node1.address, ports["node-1"])

    pids = _all_pids(c)
    c.down()
    assert not [p for p in pids if _alive(p)]
    assert lab_netns.existing(lab.prefix) == []


@functools.cache
def _real_commands_missing() -> str | None:
    for role in ("manager", "agent"):
        p = subprocess.run(
            [sys.executable, "-m", "cargohold", role, "--help"],
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=ROOT),
            timeout=60,
        )
        if p.returncode != 0:
            return f"`cargohold {role}` is not there yet"
    return None


def test_real_cluster(tmp_path, clusters, monkeypatch):
    """The real manager and agents: up, a node crash and restart, status, down."""
    missing = _real_commands_missing()
    if missing:
        pytest.skip(missing)
    monkeypatch.setenv("CARGOHOLD_MANAGER_NODE_DOWN_AFTER", "2")
    d = str(tmp_path / "r")
    clusters.append(d)
    c = LocalCluster.create(d, nodes=3, zones=["a", "b", "c"]).up(timeout=45)
    nodes = {n["name"]: n for n in get_json(c.api, "/api/v1/nodes")}
    assert {n: (v["state"], v["zone"]) for n, v in nodes.items()} == {
        "node-1": ("up", "a"),
        "node-2": ("up", "b"),
        "node-3": ("up", "c"),
    }
    assert get_json(c.api, "/api/v1/status")["nodes"]["up"] == 3

    victims = c.node_processes("node-2")
    assert len(victims) >= 2, "the agent and its replica server"
    assert c.kill_node("node-2")
    assert not any(_alive(p) for p in victims)
    wait_until(lambda: _states(c)["node-2"] == "down", 15, "node-2 down", 0.05)
    assert c.start_node("node-2", timeout=20)
    assert _states(c) == {"node-1": "up", "node-2": "up", "node-3": "up"}

    pids = _all_pids(c)
    c.down()
    assert not [p for p in pids if _alive(p)]


def test_failed_start_says_why_and_cleans_up(tmp_path, clusters):
    d = str(tmp_path / "f")
    clusters.append(d)
    broken = [sys.executable, "-c", "import sys; sys.exit('cargohold: no such thing')"]
    with pytest.raises(LauncherError, match=r"manager-1 exited with code 1 while starting") as e:
        LocalCluster.create(d, nodes=1, command=broken).up(timeout=10)
    assert f"{d}/logs/manager-1.log" in str(e.value) and "no such thing" in str(e.value)
    assert not os.path.exists(os.path.join(d, "cluster.json"))


def test_timeout_names_what_is_not_up(tmp_path, fake, clusters, monkeypatch):
    d = str(tmp_path / "t")
    clusters.append(d)
    monkeypatch.setenv("FAKE_SILENT_AGENT", "1")
    c = LocalCluster.create(d, nodes=2, command=fake)
    with pytest.raises(LauncherError, match=r"timed out: nodes not up \(node-1 not registered"):
        c.up(timeout=2)
    assert not [p for p in (c.managers[0].pid, c.nodes["node-2"].pid) if p and _alive(p)]
    assert not os.path.exists(os.path.join(d, "cluster.json"))


@pytest.mark.root
def test_real_cluster_in_namespaces_on_etcd(tmp_path, clusters, monkeypatch):
    """The real processes in a lab: a partitioned node goes down and comes back; the
    managers fail over."""
    missing = _real_commands_missing() or lab_netns.available()
    if missing:
        pytest.skip(missing)
    if not os.access("/usr/bin/etcd", os.X_OK):
        pytest.skip("etcd is not installed")
    monkeypatch.setenv("CARGOHOLD_MANAGER_NODE_DOWN_AFTER", "2")
    d = str(tmp_path / "rn")
    clusters.append(d)
    c = LocalCluster.create(d, nodes=2, netns=True, backend="etcd").up(timeout=45)
    assert _states(c) == {"node-1": "up", "node-2": "up"}
    addresses = {n["name"]: n["address"] for n in get_json(c.api, "/api/v1/nodes")}
    assert addresses == {name: n.address for name, n in c.nodes.items()}

    c.partition_node("node-1")
    wait_until(lambda: _states(c) == {"node-1": "down", "node-2": "up"}, 15, "node-1 down", 0.05)
    c.heal_node("node-1")
    wait_until(lambda: _states(c) == {"node-1": "up", "node-2": "up"}, 15, "node-1 up", 0.05)

    assert c.kill_manager("manager-1")
    wait_until(lambda: get_json(c.apis[1], "/healthz")["leader"], 15, "manager-2 leads", 0.05)
    assert c.start_manager("manager-1")

    pids = _all_pids(c)
    lab = c.lab
    assert lab is not None
    c.down()
    assert not [p for p in pids if _alive(p)]
    assert lab_netns.existing(lab.prefix) == []
