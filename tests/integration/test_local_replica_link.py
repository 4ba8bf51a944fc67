"""The engine's link to the replica on its own node over the replica server's unix socket
(docs/security.md, "The local replica link"), against real processes on loopback: the
local replica through the socket in clear and the other two over mutual TLS (the engine's
status and the servers' connection counters say so; the bytes on every replica compared),
the fallback to TLS when the socket is missing or refuses, a user other than the server's
refused (by the socket's mode, and by SO_PEERCRED when the mode was loosened), and the
scope an engine takes on when it says which volume it runs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile

import pytest

from cargohold.constants import MIB
from cargohold.errors import InvalidArgument, PermissionDenied
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from cargohold.replica.client import ReplicaClient
from cargohold.replica.workers import owner
from tests.support.engine import EngineProc
from tests.support.processes import ServerProc

SIZE = 16 * MIB
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _servers(tmp_path, pki, unix: str | None, n: int = 3):  # type: ignore[no-untyped-def]
    """``n`` TLS replica servers, the first (this node's) also on ``unix``, and replica
    ``lv-r<i>`` of volume lv on server i."""
    servers = []
    for i in range(n):
        d = tmp_path / f"d{i}"
        d.mkdir()
        s = ServerProc(
            [str(d)],
            unix=unix if i == 0 else None,
            tls_dir=pki.dir("replica", f"n{i}"),
            log_dir=str(tmp_path),
        )
        servers.append(s.start())

    async def create() -> None:
        for i, s in enumerate(servers):
            c = await ReplicaClient.connect(
                "127.0.0.1", s.port, tls=pki.creds("agent", f"n{i}"), replica=f"lv-r{i}"
            )
            await c.create(f"lv-r{i}", SIZE, volume="lv")
            await c.close()

    asyncio.run(create())
    return servers


def _counters(server: ServerProc, pki, node: str) -> dict:  # type: ignore[no-untyped-def]
    async def go() -> dict:
        c = await ReplicaClient.connect("127.0.0.1", server.port, tls=pki.creds("agent", node))
        out = await c.listing()
        await c.close()
        return dict(out["server"]["counters"])

    return asyncio.run(go())


def _digest(server: ServerProc, pki, i: int) -> str:  # type: ignore[no-untyped-def]
    """sha256 of the first MiB of replica lv-r<i> (the engine is stopped: epoch 9 is fine)."""

    async def go() -> str:
        c = await ReplicaClient.connect(
            "127.0.0.1", server.port, tls=pki.creds("agent", f"n{i}"), replica=f"lv-r{i}"
        )
        await c.open(f"lv-r{i}", 9)
        data = bytes(await c.read(0, MIB))
        await c.close()
        return hashlib.sha256(data).hexdigest()

    return asyncio.run(go())


def _engine(tmp_path, pki, servers, unix: str | None, epoch: int = 1) -> EngineProc:  # type: ignore[no-untyped-def]
    specs = [f"lv-r{i}@127.0.0.1:{s.port}" for i, s in enumerate(servers)]
    extra = ["--local-unix", unix] if unix else []
    return EngineProc(
        "lv",
        specs,
        epoch,
        str(tmp_path),
        local="lv-r0",
        extra=extra,
        tls_dir=pki.dir("engine", "lv"),
    ).start()


def _qemu_io(uri: str, cmd: str) -> None:
    r = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", cmd, uri], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "fail" not in (r.stdout + r.stderr).lower(), r


def _root_dir(tmp_path) -> str:  # type: ignore[no-untyped-def]
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return str(d / "rs.sock")


def test_the_local_replica_goes_over_the_unix_socket_the_others_over_tls(tmp_path, pki):
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed")
    unix = _root_dir(tmp_path)
    servers = _servers(tmp_path, pki, unix)
    try:
        before = [_counters(s, pki, f"n{i}") for i, s in enumerate(servers)]
        e = _engine(tmp_path, pki, servers, unix)
        try:
            _qemu_io(e.uri, "write -P 0x6c 0 1M")
            _qemu_io(e.uri, "read -P 0x6c 0 1M")
            st = e.ctl(op="status")
            assert [(r["transport"], r["mode"]) for r in st["replicas"]] == [
                ("unix", "RW"),
                ("tls", "RW"),
                ("tls", "RW"),
            ], st
        finally:
            e.stop()
        after = [_counters(s, pki, f"n{i}") for i, s in enumerate(servers)]
        # the local server saw the engine on its unix socket; the others over TLS only
        assert after[0].get("connections_unix", 0) - before[0].get("connections_unix", 0) == 1
        for b, a in zip(before[1:], after[1:], strict=True):
            assert a.get("connections_unix", 0) == 0
            assert a["connections_tls"] - b["connections_tls"] >= 2  # engine + this LIST
        # every replica holds the same bytes: the unix link carried the writes as TLS did
        digests = {_digest(s, pki, i) for i, s in enumerate(servers)}
        pattern = hashlib.sha256(b"\x6c" * MIB).hexdigest()
        assert digests == {pattern}
        assert "PLAINTEXT" not in e.output()  # no --plaintext anywhere: TLS stays on
    finally:
        for s in servers:
            s.stop()


def test_without_the_socket_the_engine_falls_back_to_tls(tmp_path, pki):
    """A socket path that does not exist, then a stale one nobody listens on: the engine
    serves with all three replicas over TLS, and says why once."""
    servers = _servers(tmp_path, pki, None)
    try:
        missing = str(tmp_path / "nothing-here.sock")
        stale = str(tmp_path / "stale.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(stale)  # bound, never listening: connect is refused
        try:
            for epoch, path in ((1, missing), (2, stale)):
                e = _engine(tmp_path, pki, servers, path, epoch)
                try:
                    st = e.ctl(op="status")
                    assert [(r["transport"], r["mode"]) for r in st["replicas"]] == [
                        ("tls", "RW")
                    ] * 3, st
                    out = e.output()
                    assert out.count("unix socket") == 1 and "TLS over TCP" in out, out
                finally:
                    e.stop()
        finally:
            s.close()
        assert _counters(servers[0], pki, "n0").get("connections_unix", 0) == 0
    finally:
        for srv in servers:
            srv.stop()


def _as_nobody(path: str) -> str:
    """Connect to ``path`` as uid 65534 and send HELLO: -> what happened ("refused: ...",
    "closed", or "answered")."""
    hello = b"".join(
        bytes(x) for x in wire.encode_request(Op.HELLO, 1, 0, 0, wire.dump_json({"version": 1}))
    )
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(10)\n"
        f"try:\n s.connect({path!r})\nexcept OSError as e:\n print('refused:',e); sys.exit()\n"
        f"try:\n s.sendall(bytes.fromhex({hello.hex()!r})); d=s.recv(4096)\n"
        "except OSError as e:\n print('closed'); sys.exit()\n"
        "print('answered' if d else 'closed')\n"
    )
    r = subprocess.run(
        [*NOBODY, "/usr/bin/python3", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert r.returncode == 0, r
    return r.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_a_user_other_than_root_is_refused(tmp_path, pki):
    unix = _root_dir(tmp_path)
    servers = _servers(tmp_path, pki, unix, 1)
    try:
        assert stat.S_IMODE(os.stat(unix).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(unix)).st_mode) == 0o700
        assert _as_nobody(unix).startswith("refused:")  # the mode and the directory
        # the second wall: with the socket opened up by mistake (mode 0666, reachable from
        # a world-readable directory: a hard link to it), the kernel lets the connection
        # through but the server hangs up (SO_PEERCRED)
        opened = tempfile.mkdtemp(prefix="cargohold-open-", dir="/tmp")
        try:
            os.chmod(opened, 0o755)
            os.link(unix, os.path.join(opened, "rs.sock"))
            os.chmod(unix, 0o666)
            assert _as_nobody(os.path.join(opened, "rs.sock")) == "closed"
        finally:
            shutil.rmtree(opened, ignore_errors=True)
        counters = _counters(servers[0], pki, "n0")
        assert counters["unix_refused"] == 1
        assert "runs as uid 65534" in servers[0].output()

        async def root_still_served() -> None:
            c = await ReplicaClient.connect(unix=unix)
            assert [x["id"] for x in await c.list()] == ["lv-r0"]
            await c.close()

        asyncio.run(root_still_served())
    finally:
        for s in servers:
            s.stop()


@pytest.mark.parametrize("workers", [1, 2])
async def test_an_engine_on_the_socket_is_held_to_its_volume(tmp_path, pki, workers):
    """With worker processes too: the parent hands an engine's HELLO on, unread, to the
    worker that owns the replica it names (replicas here are on worker 1, not the one a
    connection without a replica goes to first)."""
    (tmp_path / "d").mkdir()
    unix = _root_dir(tmp_path)
    s = ServerProc(
        [str(tmp_path / "d")],
        unix=unix,
        workers=workers,
        tls_dir=pki.dir("replica", "n0"),
        log_dir=str(tmp_path),
    ).start()
    mine, theirs = (
        next(f"{v}-r{i:x}" for i in range(64) if owner(f"{v}-r{i:x}", 2) == workers - 1)
        for v in ("va", "vb")
    )
    try:
        for rid, volume in ((mine, "va"), (theirs, "vb")):
            agent = await ReplicaClient.connect(unix=unix)  # declares nothing: the agent's
            await agent.create(rid, SIZE, volume=volume)
            await agent.close()
        c = await ReplicaClient.connect(unix=unix)
        await c.negotiate(engine="va", replica=mine)
        assert [x["id"] for x in await c.list()] == [mine]
        with pytest.raises(PermissionDenied):
            await c.open(theirs, 5)  # another volume's replica: not fenced by it
        with pytest.raises(PermissionDenied):
            await c.create("va-r2", SIZE, volume="va")
        with pytest.raises(PermissionDenied):
            await c.delete(theirs)
        with pytest.raises(PermissionDenied):
            await c.hello(2, engine="vb")  # a scope never widens
        info = await c.open(mine, 1)
        assert info["epoch"] == 1 and (workers == 1 or info["pid"] != s.proc.pid)
        await c.close()
        bad = await ReplicaClient.connect(unix=unix)
        with pytest.raises(InvalidArgument):
            await bad.hello(2, engine="../x", replica=mine)
        await bad.close()
        # vb's replica was never opened at epoch 5: its epoch is still 0
        agent = await ReplicaClient.connect(unix=unix, replica=theirs)
        await agent.open(theirs, 0)
        assert (await agent.info())["epoch"] == 0
        await agent.close()
    finally:
        s.stop()
    assert "Traceback" not in s.output(), s.output()
