"""The state store contract (cargohold/control/state/base.py), one suite over every backend:
the in-memory twin, SQLite in a temporary file, and etcd — a real etcd process
(tests/etcd_proc.py), one per session, each test in its own namespace — plain, and with
TLS and client-certificate authentication the way cargohold runs it ("etcd-tls").

"Another manager" is another store object over the same data: the same twin, another
connection to the same SQLite file, another client of the same etcd namespace.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cargohold.control.state import (
    Compare,
    Delete,
    Entry,
    EtcdStateStore,
    MemoryStateStore,
    Put,
    SQLiteStateStore,
    StateStore,
    open_store,
)
from cargohold.control.state.etcd import prefix_end
from cargohold.errors import ConfigError, InvalidArgument, ManagerUnavailable
from cargohold.security.tls import Credentials
from tests.etcd_proc import EtcdProcess, etcd_fixture

ROOT = Path(__file__).resolve().parents[3]

etcd = etcd_fixture()
etcd_tls = etcd_fixture(tls=True)


@dataclass
class Backend:
    name: str
    make: Callable[[], StateStore]  # one more store object over the same data
    ttl: float  # a leader ttl the backend honours (etcd's minimum lease is 1 s here)


@pytest.fixture(params=["memory", "sqlite", "etcd", "etcd-tls"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened: list[StateStore] = []
    make: Callable[[], StateStore]
    if request.param == "memory":
        shared = MemoryStateStore()
        make, ttl = (lambda: shared), 0.5
    elif request.param == "sqlite":
        path = str(tmp_path / "state.db")
        make, ttl = (lambda: SQLiteStateStore(path)), 0.5
    elif request.param == "etcd-tls":
        secure: EtcdProcess = request.getfixturevalue("etcd_tls")
        namespace = f"/test-{uuid.uuid4().hex[:12]}"
        creds = Credentials.load(secure.client_tls)
        make, ttl = (lambda: EtcdStateStore([secure.url], namespace=namespace, tls=creds)), 1.0
    else:
        proc: EtcdProcess = request.getfixturevalue("etcd")
        namespace = f"/test-{uuid.uuid4().hex[:12]}"
        make, ttl = (lambda: EtcdStateStore([proc.url], namespace=namespace)), 1.0

    def tracked() -> StateStore:
        s = make()
        opened.append(s)
        return s

    yield Backend(request.param, tracked, ttl)
    for s in opened:
        await s.close()


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.make()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Poll ``check`` until it holds; the seconds that took. Fails after ``timeout``."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, f"not within {timeout}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def increment(store: StateStore, key: str) -> int:
    """Compare-and-swap ``key`` (a decimal counter) one up; the number of retries it took."""
    retries = 0
    while True:
        e = await store.get(key)
        n = int(e.value) if e is not None else 0
        expected = Compare(key, e.mod_revision if e is not None else 0)
        if await store.txn([expected], [Put(key, str(n + 1).encode())]):
            return retries
        retries += 1


# --- records ------------------------------------------------------------------------------
async def test_get_put(store: StateStore) -> None:
    assert await store.get("/k") is None
    rev = await store.put("/k", b"v1")
    assert await store.get("/k") == Entry("/k", b"v1", rev)
    rev = await store.put("/bin", b"\x00\xff\n")
    assert await store.get("/bin") == Entry("/bin", b"\x00\xff\n", rev)
    rev = await store.put("/empty", b"")  # etcd leaves an empty value out of its answers
    assert await store.get("/empty") == Entry("/empty", b"", rev)
    assert await store.get("/other") is None


async def test_range_is_sorted_and_prefix_exact(store: StateStore) -> None:
    for key in ("/a/2", "/ab", "/a/1", "/a", "/b/x", "/a/10", "/a/"):
        await store.put(key, key.encode())
    entries = await store.range("/a/")
    assert [e.key for e in entries] == ["/a/", "/a/1", "/a/10", "/a/2"]
    assert [e.value for e in entries] == [b"/a/", b"/a/1", b"/a/10", b"/a/2"]
    assert [e.key for e in await store.range("/a")] == ["/a", "/a/", "/a/1", "/a/10", "/a/2", "/ab"]
    assert [e.key for e in await store.range("/b/")] == ["/b/x"]
    assert await store.range("/c/") == []
    assert [e.key for e in await store.range("/")] == [
        "/a",
        "/a/",
        "/a/1",
        "/a/10",
        "/a/2",
        "/ab",
        "/b/x",
    ]


async def test_delete(store: StateStore) -> None:
    await store.put("/d/1", b"x")
    await store.put("/d/2", b"y")
    assert await store.delete("/d/1") is True
    assert await store.get("/d/1") is None
    assert await store.delete("/d/1") is False
    assert await store.delete("/never") is False
    assert [e.key for e in await store.range("/d/")] == ["/d/2"]


async def test_revisions_increase_and_mod_revision_follows(store: StateStore) -> None:
    r1 = await store.put("/r/a", b"1")
    r2 = await store.put("/r/b", b"1")
    r3 = await store.put("/r/a", b"2")
    assert 0 < r1 < r2 < r3
    assert (await store.get("/r/a")) == Entry("/r/a", b"2", r3)
    assert (await store.get("/r/b")) == Entry("/r/b", b"1", r2)
    await store.delete("/r/b")
    r4 = await store.put("/r/c", b"1")
    assert r4 > r3 + 1  # the delete took a revision of its own
    assert [e.mod_revision for e in await store.range("/r/")] == [r3, r4]


# --- transactions -------------------------------------------------------------------------
async def test_txn_applies_when_compares_hold(store: StateStore) -> None:
    ra = await store.put("/t/a", b"1")
    rb = await store.put("/t/b", b"1")
    ok = await store.txn(
        [Compare("/t/a", ra), Compare("/t/b", rb)], [Put("/t/a", b"2"), Put("/t/c", b"new")]
    )
    assert ok is True
    a, b, c = await store.get("/t/a"), await store.get("/t/b"), await store.get("/t/c")
    assert a is not None and b is not None and c is not None
    assert (a.value, b.value, c.value) == (b"2", b"1", b"new")
    assert a.mod_revision == c.mod_revision > rb  # one revision for the whole transaction
    assert b.mod_revision == rb


async def test_txn_changes_nothing_when_a_compare_fails(store: StateStore) -> None:
    ra = await store.put("/t/a", b"1")
    rb = await store.put("/t/b", b"1")
    await store.put("/t/a", b"changed")  # somebody else wrote since we read ra
    before = await store.range("/t/")
    ok = await store.txn(
        [Compare("/t/b", rb), Compare("/t/a", ra)],
        [Put("/t/b", b"2"), Put("/t/new", b"x"), Delete("/t/a")],
    )
    assert ok is False
    assert await store.range("/t/") == before
    # a compare on a missing key with a nonzero revision fails too
    assert await store.txn([Compare("/t/missing", rb)], [Put("/t/new", b"x")]) is False
    assert await store.get("/t/new") is None


async def test_txn_put_if_absent(store: StateStore) -> None:
    assert await store.txn([Compare("/p/k", 0)], [Put("/p/k", b"first")]) is True
    assert await store.txn([Compare("/p/k", 0)], [Put("/p/k", b"second")]) is False
    e = await store.get("/p/k")
    assert e is not None and e.value == b"first"
    await store.delete("/p/k")
    assert await store.txn([Compare("/p/k", 0)], [Put("/p/k", b"third")]) is True


async def test_txn_with_deletes(store: StateStore) -> None:
    rv = await store.put("/v/vol", b"volume")
    await store.put("/v/vol/r1", b"replica")
    await store.put("/v/vol/r2", b"replica")
    ops: list[Put | Delete] = [
        Delete("/v/vol/r1"),
        Delete("/v/vol/r2"),
        Delete("/v/vol/absent"),
        Put("/v/vol", b"deleted"),
    ]
    assert await store.txn([Compare("/v/vol", rv)], ops) is True
    assert [(e.key, e.value) for e in await store.range("/v/")] == [("/v/vol", b"deleted")]
    # deletes alone, and no compares at all
    assert await store.txn([], [Delete("/v/vol")]) is True
    assert await store.range("/v/") == []
    assert await store.txn([], []) is True


async def test_txn_refuses_a_key_written_twice(store: StateStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.txn([], [Put("/x", b"1"), Put("/x", b"2")])
    with pytest.raises(InvalidArgument):
        await store.txn([], [Put("/x", b"1"), Delete("/x")])
    assert await store.get("/x") is None


async def test_concurrent_compare_and_swap_counts_exactly(backend: Backend) -> None:
    managers = [backend.make(), backend.make()]  # two connections / clients where it matters
    tasks, each = 8, 10

    async def worker(i: int) -> int:
        s = managers[i % 2]
        return sum([await increment(s, "/counter") for _ in range(each)])

    retries = await asyncio.gather(*(worker(i) for i in range(tasks)))
    e = await managers[0].get("/counter")
    assert e is not None and int(e.value) == tasks * each
    assert sum(retries) > 0  # the tasks really did race


# --- leadership ---------------------------------------------------------------------------
async def test_first_holder_leads_while_it_renews(backend: Backend) -> None:
    a, b = backend.make(), backend.make()
    ttl = backend.ttl
    assert await a.leader("manager") is None
    assert await a.campaign("manager", "a", ttl) is True
    end = time.monotonic() + 2 * ttl  # past one ttl: renewals really extend it
    while time.monotonic() < end:
        assert await b.campaign("manager", "b", ttl) is False
        assert await a.campaign("manager", "a", ttl) is True
        assert await b.leader("manager") == "a"
        await asyncio.sleep(ttl / 5)
    # roles are independent
    assert await b.campaign("other", "b", ttl) is True
    assert await a.leader("other") == "b"


async def test_standby_takes_over_after_ttl(backend: Backend) -> None:
    a, b = backend.make(), backend.make()
    ttl = backend.ttl
    start = time.monotonic()
    assert await a.campaign("manager", "a", ttl) is True
    # "a" stops renewing; "b" campaigns until it wins
    waited = await eventually(lambda: b.campaign("manager", "b", ttl), timeout=ttl + 5)
    assert time.monotonic() - start >= ttl * 0.9, f"took over after {waited:.2f}s"
    assert await a.leader("manager") == "b"
    # "b" renews for longer than any step here takes, even on a loaded machine: with the
    # short ttl its term could legitimately end before "a" looks (a flake at load 13)
    assert await b.campaign("manager", "b", 20 * ttl) is True
    # "a" comes back (etcd: its lease expired, it gets a new one) and stands by
    assert await a.campaign("manager", "a", ttl) is False
    assert await b.campaign("manager", "b", 20 * ttl) is True
    await b.resign("manager", "b")
    assert await a.campaign("manager", "a", ttl) is True
    assert await b.leader("manager") == "a"


async def test_resign_hands_over_at_once(backend: Backend) -> None:
    a, b = backend.make(), backend.make()
    # a ttl no step here outlasts, even on a loaded machine: only resign may end a term
    ttl = 20 * backend.ttl
    assert await a.campaign("manager", "a", ttl) is True
    await b.resign("manager", "b")  # not the holder: changes nothing
    assert await a.leader("manager") == "a"
    assert await b.campaign("manager", "b", ttl) is False
    await a.resign("manager", "a")
    assert await b.leader("manager") is None
    assert await b.campaign("manager", "b", ttl) is True
    assert await a.leader("manager") == "b"
    await b.resign("manager", "b")
    await b.resign("manager", "b")  # twice is fine
    assert await a.leader("manager") is None


# --- SQLite: several processes on one file --------------------------------------------------
INCREMENTER = """
import asyncio, sys
from cargohold.control.state.base import Compare, Put
from cargohold.control.state.sqlite import SQLiteStateStore

async def main(path: str, n: int) -> None:
    s = SQLiteStateStore(path)
    for _ in range(n):
        while True:
            e = await s.get("/counter")
            v = int(e.value) if e else 0
            if await s.txn([Compare("/counter", e.mod_revision if e else 0)],
                           [Put("/counter", str(v + 1).encode())]):
                break
    await s.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_sqlite_two_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = SQLiteStateStore(path)
    n = 100
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    other = subprocess.Popen([sys.executable, "-c", INCREMENTER, path, str(n)], env=env)
    try:
        for _ in range(n):
            await increment(store, "/counter")
        rc = await asyncio.to_thread(other.wait, 60)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert rc == 0
    e = await store.get("/counter")
    assert e is not None and int(e.value) == 2 * n
    await store.close()


async def test_sqlite_keeps_state_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = SQLiteStateStore(path)
    rev = await first.put("/k", b"v")
    assert await first.campaign("manager", "a", 30) is True
    await first.close()
    second = open_store(f"sqlite:{path}")
    assert await second.get("/k") == Entry("/k", b"v", rev)
    assert await second.put("/k2", b"v") > rev
    assert await second.leader("manager") == "a"
    await second.close()


def test_sqlite_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        SQLiteStateStore(str(tmp_path / "no" / "such" / "dir" / "state.db"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match=r"junk\.db"):
        SQLiteStateStore(str(junk))


# --- etcd: namespaces and endpoints -------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_etcd_namespaces_keep_clusters_apart(etcd: EtcdProcess) -> None:
    ns = f"/test-{uuid.uuid4().hex[:12]}"
    one = EtcdStateStore([etcd.url], namespace=ns + "/one")
    two = EtcdStateStore([etcd.url], namespace=ns + "/one2")  # a prefix of the other's keys
    raw = EtcdStateStore([etcd.url], namespace="")
    try:
        await one.put("/volumes/a", b"1")
        await two.put("/volumes/b", b"2")
        assert [e.key for e in await one.range("/")] == ["/volumes/a"]
        assert [e.key for e in await one.range("")] == ["/volumes/a"]
        assert [e.key for e in await two.range("/volumes/")] == ["/volumes/b"]
        assert [e.key for e in await raw.range(ns + "/")] == [
            ns + "/one/volumes/a",
            ns + "/one2/volumes/b",
        ]
        with pytest.raises(InvalidArgument, match="must start with '/'"):
            await one.get("volumes/a")
    finally:
        for s in (one, two, raw):
            await s.close()


async def test_etcd_tries_the_next_endpoint(etcd: EtcdProcess) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    ns = f"/test-{uuid.uuid4().hex[:12]}"
    s = open_store(f"etcd:{dead},{etcd.url}")
    assert isinstance(s, EtcdStateStore)
    s.namespace = ns
    try:
        rev = await s.put("/k", b"v")
        assert await s.get("/k") == Entry("/k", b"v", rev)
        assert await s.campaign("manager", "a", 1) is True
    finally:
        await s.resign("manager", "a")
        await s.close()


async def test_etcd_unreachable(etcd: EtcdProcess) -> None:
    s = EtcdStateStore([f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"])
    try:
        with pytest.raises(ManagerUnavailable, match="etcd unreachable"):
            await s.get("/k")
        with pytest.raises(ManagerUnavailable, match="etcd unreachable"):
            await s.campaign("manager", "a", 1)
    finally:
        await s.close()


async def test_etcd_holder_restarted_under_the_same_name(etcd: EtcdProcess) -> None:
    ns = f"/test-{uuid.uuid4().hex[:12]}"
    before = EtcdStateStore([etcd.url], namespace=ns)
    after = EtcdStateStore([etcd.url], namespace=ns)  # the same manager id, a new process
    other = EtcdStateStore([etcd.url], namespace=ns)
    try:
        assert await before.campaign("manager", "m1", 1) is True
        assert await after.campaign("manager", "m1", 1) is True  # moves the key to its lease
        await before.close()  # the old process is gone; its lease is not renewed
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert await after.campaign("manager", "m1", 1) is True
            assert await other.campaign("manager", "m2", 1) is False
            await asyncio.sleep(0.2)
        await after.resign("manager", "m1")
        assert await other.campaign("manager", "m2", 1) is True
    finally:
        for s in (after, other):
            await s.close()


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


# --- open_store ---------------------------------------------------------------------------
async def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStateStore)
    s = open_store(f"sqlite:{tmp_path}/a.db")
    assert isinstance(s, SQLiteStateStore)
    await s.close()
    e = open_store("etcd:http://127.0.0.1:2379, https://[::1]:2379,http://etcd-2")
    assert isinstance(e, EtcdStateStore)
    assert e.endpoints == ["http://127.0.0.1:2379", "https://[::1]:2379", "http://etcd-2"]
    assert e.namespace == "/cargohold"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "memory",
        "memory:x",
        "sqlite:",
        "etcd:",
        "etcd:127.0.0.1:2379",
        "etcd:ftp://127.0.0.1:2379",
        "etcd:http://",
        "etcd:http://h:port",
        "etcd:http://h:2379/v3",
        "etcd:http://h:2379,",
        "postgres://db/state",
    ],
)
def test_open_store_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="state store"):
        open_store(url)
