"""Read grants on the replica wire, against a real replica server over mutual TLS: the
engine of a clone reads the granted snapshot of another volume's replica while that
volume's engine goes on writing (not fenced); the grant allows no write, no other
snapshot, no live data, no epoch change; an expired, forged, other-volume or other-engine
grant is refused, and the server goes on serving everyone."""

from __future__ import annotations

import os
import time

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import Fenced, InvalidArgument, PermissionDenied
from cargohold.protocol import extent_stream as xs
from cargohold.replica.client import ReplicaClient
from cargohold.security import grants
from cargohold.security.identity import Identity, Role
from tests.support.processes import ServerProc
from tests.support.tls import new_pki

SIZE = 4 * MIB
OLD, NEW = os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)


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


def grant(pki, engine="clone", volume="src", snapshot="s1", signer=("manager", "m1"), **kw):  # type: ignore[no-untyped-def]
    d = pki.dir(*signer)
    with open(os.path.join(d, "tls.key"), "rb") as k, open(os.path.join(d, "tls.crt"), "rb") as c:
        return grants.issue(k.read(), c.read(), pki.cluster, engine, volume, snapshot, **kw)


async def connect(server, creds, replica="src-r1"):  # type: ignore[no-untyped-def]
    return await ReplicaClient.connect("127.0.0.1", server.port, tls=creds, replica=replica)


async def source(server, pki):  # type: ignore[no-untyped-def]
    """src-r1 with OLD at block 1 in snapshot s1 and NEW there since; its engine (epoch 3)
    stays connected, as a running engine does."""
    agent = await connect(server, pki.creds("agent", "node-1"))
    await agent.create("src-r1", SIZE, volume="src")
    await agent.create("other-r1", SIZE, volume="other")
    await agent.close()
    owner = await connect(server, pki.creds("engine", "src"))
    await owner.open("src-r1", 3)
    await owner.write(BLOCK_SIZE, OLD, fua=True)
    await owner.snapshot_create("s1")
    await owner.write(BLOCK_SIZE, NEW, fua=True)
    return owner


async def test_a_grant_reads_its_snapshot_and_never_writes(tserver, pki):
    owner = await source(tserver, pki)
    c = await connect(tserver, pki.creds("engine", "clone"))
    token = grant(pki)
    assert [x["id"] for x in await c.list()] == []  # nothing of src without the grant
    assert [x["id"] for x in await c.list(token)] == ["src-r1"]  # not other-r1
    with pytest.raises(PermissionDenied):  # without the grant: the old refusal
        await c.open("src-r1", 3)
    with pytest.raises(Fenced) as e:  # an older epoch: told the replica's (as the importer expects)
        await c.open("src-r1", 1, grant=token)
    assert e.value.detail["epoch"] == 3
    with pytest.raises(PermissionDenied, match="never takes a replica over"):
        await c.open("src-r1", 4, grant=token)
    info = await c.open("src-r1", 3, grant=token)
    assert info["epoch"] == 3
    assert [s["name"] for s in await c.snapshot_list()] == ["s1"]
    assert bytes(await c.read(BLOCK_SIZE, BLOCK_SIZE, snapshot="s1")) == OLD
    _, extents = xs.decode(await c.export(0, SIZE, snapshot="s1"))
    data = [e for e in extents if e.kind == xs.KIND_DATA]
    assert [(e.lba * BLOCK_SIZE, bytes(e.data)) for e in data] == [(BLOCK_SIZE, OLD)]  # type: ignore[arg-type]
    assert await c.extents(0, SIZE, snapshot="s1")
    refused = [
        c.read(BLOCK_SIZE, BLOCK_SIZE),  # the live head
        c.export(0, SIZE),
        c.extents(0, SIZE),
        c.read(0, BLOCK_SIZE, snapshot="s0"),
        c.write(0, os.urandom(BLOCK_SIZE), fua=True, generation=1000),
        c.trim(0, BLOCK_SIZE, generation=1001),
        c.write_zeroes(0, BLOCK_SIZE, generation=1002),
        c.flush(),
        c.snapshot_create("mine"),
        c.snapshot_delete("s1"),
        c.snapshot_revert("s1", generation=1003),
        c.delete("src-r1"),
        c.expand(2 * SIZE),
        c.scrub(),
    ]
    for call in refused:
        with pytest.raises(PermissionDenied):
            await call
    # the source's engine was neither fenced nor changed: it still writes and reads NEW
    await owner.write(2 * BLOCK_SIZE, NEW, fua=True)
    assert bytes(await owner.read(BLOCK_SIZE, BLOCK_SIZE)) == NEW
    assert [s["name"] for s in await owner.snapshot_list()] == ["s1"]
    assert (await owner.info())["epoch"] == 3
    await c.close()
    await owner.close()
    assert tserver.alive()


async def test_bad_grants_are_refused_and_the_server_serves_on(tserver, pki):
    owner = await source(tserver, pki)
    clone = pki.creds("engine", "clone")
    foreign = new_pki(pki.cluster)  # the same cluster name, another CA
    bad = {
        "expired": (clone, grant(pki, ttl=60, now=time.time() - 600), PermissionDenied),
        "forged": (clone, grant(foreign, signer=("manager", "m1")), PermissionDenied),
        "engine-signed": (clone, grant(pki, signer=("engine", "clone")), PermissionDenied),
        "other-volume": (clone, grant(pki, volume="other"), PermissionDenied),
        "other-engine": (pki.creds("engine", "thief"), grant(pki), PermissionDenied),
        "garbage": (clone, "chg1.not.a.grant", InvalidArgument),
    }
    for what, (creds, token, error) in bad.items():
        c = await connect(tserver, creds)
        with pytest.raises(error):
            await c.open("src-r1", 3, grant=token)
        if what in ("other-volume", "other-engine"):  # a good grant, not for src or them
            assert "src-r1" not in [x["id"] for x in await c.list(token)]
        else:  # a bad grant is refused in LIST too
            with pytest.raises(error):
                await c.list(token)
        assert (await c.hello())["node"], what  # the connection goes on
        await c.close()
    # other-volume's grant opens other-r1 (it names "other"), never src-r1
    c = await connect(tserver, clone, "other-r1")
    await c.open("other-r1", 0, grant=grant(pki, volume="other", snapshot="none"))
    with pytest.raises(PermissionDenied):
        await c.read(0, BLOCK_SIZE, snapshot="s1")
    await c.close()
    assert bytes(await owner.read(BLOCK_SIZE, BLOCK_SIZE)) == NEW
    await owner.close()
    assert tserver.alive()


def test_the_grant_names_a_manager(pki):
    token = grant(pki)
    ca = os.path.join(pki.dir("replica", "node-1"), "ca.crt")
    with open(ca, "rb") as f:
        g = grants.verify(token, f.read(), None, pki.cluster)
    assert g.signer == Identity(pki.cluster, Role.MANAGER, "m1")
