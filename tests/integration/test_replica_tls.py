"""Mutual TLS and authorization on the replica wire, against real replica-server processes
on loopback: who is refused (no certificate, another CA's, an expired one, the wrong role
or volume), that the server goes on serving the good client, LIST filtered, routing by
SNI to worker processes, and an engine serving a volume over TLS (qemu-io)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import stat
import subprocess
import sys

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import PermissionDenied, ReplicaIOError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from cargohold.replica.client import ReplicaClient
from cargohold.replica.workers import owner
from cargohold.security.tls import Credentials
from tests.support.engine import EngineProc
from tests.support.processes import ROOT, ServerProc
from tests.support.tls import new_pki

SIZE = 16 * MIB


@pytest.fixture
def tserver(tmp_path, pki):
    (tmp_path / "d").mkdir()
    s = ServerProc(
        [str(tmp_path / "d")],
        unix=str(tmp_path / "rs.sock"),
        tls_dir=pki.dir("replica", "node-1"),
        log_dir=str(tmp_path),
    ).start()
    yield s
    s.stop()
    assert "Traceback" not in s.output(), s.output()


async def connect(server: ServerProc, creds: Credentials, replica: str | None = None):  # type: ignore[no-untyped-def]
    return await ReplicaClient.connect("127.0.0.1", server.port, tls=creds, replica=replica)


async def setup_replicas(server: ServerProc, pki) -> None:  # type: ignore[no-untyped-def]
    agent = pki.creds("agent", "node-1")
    for rid, volume in (("vol-a-r1", "vol-a"), ("vol-b-r1", "vol-b"), ("legacy-r0f", None)):
        c = await connect(server, agent, rid)
        await c.create(rid, SIZE, volume=volume)
        await c.close()


async def hello_over(port: int, ctx: ssl.SSLContext | None) -> bytes:
    """Send HELLO over a connection made with ``ctx`` (None: plain TCP) -> the reply bytes
    (b"" when the server closed the connection instead)."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 5)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        w.writelines(wire.encode_request(Op.HELLO, 1, 0, 0, wire.dump_json({"version": 1})))
        await w.drain()
        return await asyncio.wait_for(r.read(4096), 5)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return b""
    finally:
        w.close()


async def good_client_still_served(server: ServerProc, pki) -> None:  # type: ignore[no-untyped-def]
    c = await connect(server, pki.creds("engine", "vol-a"), "vol-a-r1")
    await c.open("vol-a-r1", 1)
    data = os.urandom(BLOCK_SIZE)
    await c.write(BLOCK_SIZE, data, fua=True)
    assert bytes(await c.read(BLOCK_SIZE, BLOCK_SIZE)) == data
    await c.close()


async def test_clients_without_a_good_certificate_are_refused(tserver, pki):
    await setup_replicas(tserver, pki)
    ca_file = pki.dir("engine", "vol-a") + "/ca.crt"
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts our CA, presents nothing
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cafile=ca_file)
    foreign = new_pki(pki.cluster).creds("agent", "node-1")  # same names, another CA
    expired = pki.expired("agent", "node-1")
    good = pki.creds("agent", "node-1")
    assert await hello_over(tserver.port, good.client_context())  # the control: answered
    assert await hello_over(tserver.port, None) == b""  # plain TCP
    assert await hello_over(tserver.port, anonymous) == b""
    assert await hello_over(tserver.port, foreign.client_context()) == b""
    assert await hello_over(tserver.port, expired.client_context()) == b""
    with pytest.raises(ReplicaIOError):  # through the client too: no way in
        c = await connect(tserver, foreign, "vol-a-r1")
        await c.open("vol-a-r1", 1)
    await good_client_still_served(tserver, pki)
    assert tserver.alive()


async def test_the_wrong_role_or_volume_is_refused_on_a_working_connection(tserver, pki):
    await setup_replicas(tserver, pki)
    # the engine of another volume: no OPEN of vol-a's replica (by label or by name)
    c = await connect(tserver, pki.creds("engine", "vol-b"), "vol-a-r1")
    with pytest.raises(PermissionDenied) as e:
        await c.open("vol-a-r1", 5)
    assert e.value.status == 13
    with pytest.raises(PermissionDenied):
        await c.open("legacy-r0f", 5)
    with pytest.raises(PermissionDenied):  # an engine never creates or deletes
        await c.delete("vol-b-r1")
    with pytest.raises(PermissionDenied):
        await c.create("vol-b-r2", SIZE, volume="vol-b")
    assert (await c.hello())["node"]  # the connection goes on
    await c.open("vol-b-r1", 1)  # its own volume's replica
    await c.close()
    # a person with the reader role: nothing on the replica wire
    r = await connect(tserver, pki.creds("reader", "alice"))
    for call in (r.hello(), r.list(), r.open("vol-a-r1", 1)):
        with pytest.raises(PermissionDenied):
            await call
    await r.close()
    # the refused OPEN did not move the fence: vol-a's engine opens at epoch 1
    await good_client_still_served(tserver, pki)
    agent = await connect(tserver, pki.creds("agent", "node-1"))
    listed = {x["id"]: x for x in await agent.list()}
    assert listed["vol-a-r1"]["epoch"] == 1 and listed["vol-a-r1"]["volume"] == "vol-a"
    await agent.close()


async def test_list_shows_an_engine_only_its_volume(tserver, pki):
    await setup_replicas(tserver, pki)
    agent = await connect(tserver, pki.creds("agent", "node-1"))
    assert sorted(x["id"] for x in await agent.list()) == ["legacy-r0f", "vol-a-r1", "vol-b-r1"]
    await agent.close()
    eng = await connect(tserver, pki.creds("engine", "vol-a"))
    assert [x["id"] for x in await eng.list()] == ["vol-a-r1"]
    await eng.close()
    legacy = await connect(tserver, pki.creds("engine", "legacy"))  # by the manager's naming
    assert [x["id"] for x in await legacy.list()] == ["legacy-r0f"]
    await legacy.close()


async def test_a_client_checks_the_servers_identity(tmp_path, pki):
    """A server with a certificate of our CA but not a replica server's is refused."""
    (tmp_path / "d").mkdir()
    impostor = ServerProc(
        [str(tmp_path / "d")], tls_dir=pki.dir("engine", "vol-a"), log_dir=str(tmp_path)
    ).start()
    try:
        with pytest.raises(PermissionDenied, match="replica"):
            await connect(impostor, pki.creds("agent", "node-1"))
    finally:
        impostor.stop()


async def test_the_unix_socket_is_the_owners_only(tserver, pki):
    mode = stat.S_IMODE(os.stat(tserver.unix).st_mode)
    assert mode == 0o600
    c = await ReplicaClient.connect(unix=tserver.unix)  # plain: served as the agent
    await c.create("vol-c-r1", SIZE, volume="vol-c")
    assert [x["id"] for x in await c.list()] == ["vol-c-r1"]
    await c.close()


def test_the_server_refuses_to_start_without_credentials(tmp_path):
    (tmp_path / "d").mkdir()
    p = subprocess.run(
        [sys.executable, "-m", "cargohold", "replica-server", "--disk", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")},
        cwd=ROOT,
    )
    assert p.returncode != 0 and "--tls-dir" in p.stdout + p.stderr


# --- worker processes: routing by the TLS server name ---------------------------------------


async def test_workers_route_tls_connections_by_server_name(tmp_path, pki):
    (tmp_path / "d").mkdir()
    s = ServerProc(
        [str(tmp_path / "d")],
        workers=2,
        unix=str(tmp_path / "w.sock"),
        tls_dir=pki.dir("replica", "node-w"),
        log_dir=str(tmp_path),
    ).start()
    try:
        a = next(f"vol-w-r{i:x}" for i in range(64) if owner(f"vol-w-r{i:x}", 2) == 0)
        b = next(f"vol-w-r{i:x}" for i in range(64) if owner(f"vol-w-r{i:x}", 2) == 1)
        agent = pki.creds("agent", "node-w")
        engine = pki.creds("engine", "vol-w")
        pids, data = {}, {}
        for rid in (a, b):
            c = await connect(s, agent, rid)
            await c.create(rid, SIZE, volume="vol-w")
            await c.close()
            c = await connect(s, engine, rid)
            info = await c.open(rid, 1)
            pids[rid] = info["pid"]
            data[rid] = os.urandom(BLOCK_SIZE)
            await c.write(0, data[rid], fua=True)
            assert bytes(await c.read(0, BLOCK_SIZE)) == data[rid]
            await c.close()
        assert len(set(pids.values())) == 2 and s.pid not in pids.values()
        # without a routing name (LIST, HELLO): served too, filtered the same way
        c = await connect(s, engine)
        assert sorted(x["id"] for x in await c.list()) == sorted([a, b])
        assert (await c.hello())["workers"] == 2
        await c.close()
        # the unix socket stays plain with workers too (0600: the agent's)
        assert stat.S_IMODE(os.stat(str(tmp_path / "w.sock")).st_mode) == 0o600
        c = await ReplicaClient.connect(unix=str(tmp_path / "w.sock"))
        assert sorted(x["id"] for x in await c.list()) == sorted([a, b])
        await c.close()
        # the wrong volume's engine is refused in the worker as in a single process
        c = await connect(s, pki.creds("engine", "vol-x"), a)
        with pytest.raises(PermissionDenied):
            await c.open(a, 2)
        await c.close()
        # garbage instead of a ClientHello is dropped; the server goes on
        _, w = await asyncio.open_connection("127.0.0.1", s.port)
        w.write(b"\x16\x03\x01\x00\x05hello" + b"x" * 100)
        await w.drain()
        w.close()
        for rid in (a, b):
            c = await connect(s, engine, rid)
            await c.open(rid, 1)
            assert bytes(await c.read(0, BLOCK_SIZE)) == data[rid]
            await c.close()
    finally:
        s.stop()
    assert "Traceback" not in s.output(), s.output()


# --- an engine over TLS --------------------------------------------------------------------


def test_an_engine_serves_its_volume_over_tls_and_not_another(tmp_path, pki):
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed")
    servers = []
    try:
        for i in range(3):
            d = tmp_path / f"d{i}"
            d.mkdir()
            servers.append(
                ServerProc(
                    [str(d)], tls_dir=pki.dir("replica", f"n{i}"), log_dir=str(tmp_path)
                ).start()
            )

        async def create() -> None:
            for i, s in enumerate(servers):
                c = await connect(s, pki.creds("agent", f"n{i}"), f"tvol-r{i}")
                await c.create(f"tvol-r{i}", 64 * MIB, volume="tvol")
                await c.close()

        asyncio.run(create())
        specs = [f"tvol-r{i}@127.0.0.1:{s.port}" for i, s in enumerate(servers)]
        e = EngineProc("tvol", specs, 1, str(tmp_path), tls_dir=pki.dir("engine", "tvol"))
        e.start()
        try:
            w = subprocess.run(
                ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "flush", e.uri],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert w.returncode == 0 and "error" not in (w.stdout + w.stderr).lower(), w
            r = subprocess.run(
                ["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 4M", e.uri],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0 and "pattern verification failed" not in r.stdout, r
            st = e.ctl(op="status")
            assert [x["mode"] for x in st["replicas"]] == ["RW", "RW", "RW"], st
        finally:
            e.stop()
        # the engine certificate of another volume opens none of them: it cannot start
        other = EngineProc("tvol", specs, 2, str(tmp_path), tls_dir=pki.dir("engine", "zvol"))
        with pytest.raises(Exception):  # noqa: B017 - it exits instead of listening
            other.start(timeout=20)
        other.stop()
        assert "PermissionDenied" in other.output() or "may not OPEN" in other.output()
    finally:
        for s in servers:
            s.stop()


# --- the node agent hands out the credentials ----------------------------------------------


def test_an_agent_with_a_ca_runs_its_replica_server_and_engines_over_tls(tmp_path, pki):
    """``cargohold agent --ca-dir``: its replica server and the engine it starts get
    certificates of the cluster CA; the engine serves the volume from a local replica and
    two on another node's TLS replica server; plain TCP to the agent's server is refused."""
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed")
    from tests.integration.fake_manager import FakeManager, engine_of
    from tests.integration.test_agent import NODE, AgentProc, descendants

    fake = FakeManager().start()
    (tmp_path / "remote").mkdir()
    remote = ServerProc(
        [str(tmp_path / "remote")], tls_dir=pki.dir("replica", "node-2"), log_dir=str(tmp_path)
    ).start()
    agent = AgentProc(tmp_path / NODE, [fake.url], ["--ca-dir", str(pki.root / "ca")])
    try:

        async def remote_replicas() -> None:
            for rid in ("tv-r00000b", "tv-r00000c"):
                c = await connect(remote, pki.creds("agent", "node-2"), rid)
                await c.create(rid, SIZE, volume="tv")
                await c.close()

        asyncio.run(remote_replicas())
        agent.start(fake)
        disk = str(agent.dir / "disk-0")
        specs = [f"tv-r00000a@127.0.0.1:{agent.replica_port}"] + [
            f"{rid}@127.0.0.1:{remote.port}" for rid in ("tv-r00000b", "tv-r00000c")
        ]
        fake.assign(
            NODE,
            replicas=[{"id": "tv-r00000a", "volume": "tv", "size_bytes": SIZE, "disk_path": disk}],
            engines=[
                {
                    "volume": "tv",
                    "epoch": 1,
                    "size_bytes": SIZE,
                    "replicas": specs,
                    "local": "tv-r00000a",
                }
            ],
        )

        def serving(hb):  # type: ignore[no-untyped-def]
            e = engine_of(hb, "tv")
            modes = [r["mode"] for r in (e or {}).get("status", {}).get("replicas", [])]
            return bool(e and e["running"]) and modes == ["RW"] * 3

        eng = engine_of(fake.wait_heartbeat(NODE, serving, 60, "the engine serving"), "tv")
        assert eng is not None
        for cmd in ("write -P 0x3c 0 1M", "read -P 0x3c 0 1M"):
            r = subprocess.run(
                ["qemu-io", "-f", "raw", "-c", cmd, eng["endpoint"]],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 0 and "fail" not in (r.stdout + r.stderr).lower(), r
        kids = descendants(agent.pid).values()
        server_cmd = next(c for c in kids if " replica-server " in c)
        engine_cmd = next(c for c in kids if " engine " in c)
        assert f"--tls-dir {agent.dir}/tls/replica-server" in server_cmd
        assert f"--tls-dir {agent.dir}/tls/engines/tv" in engine_cmd
        # the local replica over the server's unix socket (0600 in a 0700 directory), the
        # two others over TLS (docs/security.md, "The local replica link")
        sock = next(c for c in server_cmd.split(" --") if c.startswith("unix ")).split()[1]
        assert f"--local-unix {sock}" in engine_cmd
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
        transports = [r.get("transport") for r in eng["status"]["replicas"]]
        assert transports == ["unix", "tls", "tls"], eng["status"]
        assert asyncio.run(hello_over(agent.replica_port, None)) == b""  # no plain TCP

        # the replica the agent created records its volume: only tv's engine may open it
        async def other_engine() -> None:
            c = await connect(remote, pki.creds("engine", "zz"))
            assert await c.list() == []
            await c.close()
            c = await ReplicaClient.connect(
                "127.0.0.1", agent.replica_port, tls=pki.creds("engine", "zz"), replica="tv-r00000a"
            )
            with pytest.raises(PermissionDenied):
                await c.open("tv-r00000a", 9)
            await c.close()

        asyncio.run(other_engine())
    finally:
        agent.cleanup()
        remote.stop()
        fake.stop()
