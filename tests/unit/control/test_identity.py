"""The manager's start on its state store (control/identity.py, the SQLite store opened
without ``create``): a missing, empty or broken store is refused unless ``--init``; a
store of an older version gets a cluster id; ``--init`` never overwrites a cluster.

Before cluster identity, every one of these started a manager on an empty state (and a
missing SQLite path was created): the wipe of issue 14."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cargohold.control.identity import open_cluster
from cargohold.control.model import CLUSTER_ID_RE, keys
from cargohold.control.repository import Repository
from cargohold.control.state import MemoryStateStore, SQLiteStateStore, open_store
from cargohold.errors import ConfigError


async def start(url: str, init: bool = False) -> Repository:
    """What ``cargohold manager --state URL [--init]`` does before it serves."""
    repo = Repository(open_store(url, create=init))
    try:
        await open_cluster(repo, init)
    finally:
        await repo.store.close()
    return repo


async def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with pytest.raises(ConfigError, match=f"{db}.*does not exist.*--init"):
        await start(f"sqlite:{db}")
    assert not db.exists()


async def test_an_empty_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"")
    with pytest.raises(ConfigError, match=f"{db}.*an empty file.*--init"):
        await start(f"sqlite:{db}")
    assert db.read_bytes() == b"" and not Path(f"{db}-wal").exists()


async def test_a_file_that_is_no_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not SQLite, it is someone's notes\n" * 200)
    with pytest.raises(ConfigError, match=f"{db}.*not a usable SQLite database"):
        await start(f"sqlite:{db}")


async def test_a_database_without_our_tables_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE kv (key TEXT)")
    with pytest.raises(ConfigError, match=r"no table.*revision, leader"):
        await start(f"sqlite:{db}")


async def test_an_initialised_store_with_no_records_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SQLiteStateStore(str(db))  # the schema, and nothing in it: a cluster never made
    with pytest.raises(ConfigError, match=r"is empty .*no cluster record.*--init"):
        await start(f"sqlite:{db}")


async def test_init_makes_a_cluster_and_then_refuses_to_make_another(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    repo = await start(f"sqlite:{db}", init=True)
    assert CLUSTER_ID_RE.match(repo.cluster_id)
    again = await start(f"sqlite:{db}")
    assert again.cluster_id == repo.cluster_id
    with pytest.raises(ConfigError, match=f"already holds cluster {repo.cluster_id}"):
        await start(f"sqlite:{db}", init=True)


async def test_init_on_a_store_with_records_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SQLiteStateStore(str(db))
    await store.put(keys.volume("data"), b"{}")
    await store.close()
    with pytest.raises(ConfigError, match=r"already holds 1 record\(s\)"):
        await start(f"sqlite:{db}", init=True)


async def test_a_store_of_an_older_version_gets_a_cluster_id() -> None:
    store = MemoryStateStore()
    await store.put(keys.node("node-1"), b"{}")
    repo = Repository(store)
    cluster = await open_cluster(repo, init=False)
    assert CLUSTER_ID_RE.match(cluster.id) and repo.cluster_id == cluster.id
    assert (await repo.cluster()) == cluster
    assert [e.kind for e in await repo.events()] == ["cluster-id-assigned"]
    # the next start finds the same one
    again = Repository(store)
    assert (await open_cluster(again, init=False)).id == cluster.id


@pytest.mark.parametrize("body", [b"{not json", b'{"id": "x"}', b'{"created_at": 1}'])
async def test_a_broken_cluster_record_is_refused(body: bytes) -> None:
    store = MemoryStateStore()
    await store.put(keys.CLUSTER, body)
    with pytest.raises(ConfigError, match="cluster record /cluster is broken"):
        await open_cluster(Repository(store), init=False)


async def test_the_memory_store_may_start_empty() -> None:
    repo = Repository(MemoryStateStore())
    with pytest.raises(ConfigError, match="MemoryStateStore is empty"):
        await open_cluster(repo, init=False)
    assert CLUSTER_ID_RE.match((await open_cluster(repo, False, allow_empty=True)).id)


async def test_deletions_leave_tombstones_in_the_same_transaction() -> None:
    from cargohold.control.model import Replica

    repo = Repository(MemoryStateStore())
    await open_cluster(repo, init=True)
    rep = Replica(id="data-r1", volume="data", node="n1", disk="d0")
    await repo.store.put(keys.replica("data", "data-r1"), rep.model_dump_json().encode())
    await repo.store.put(keys.volume("data"), b"{}")
    await repo.delete_replica_record("data", "data-r1", gone=True)
    (stone,) = await repo.tombstones()
    assert (stone.replica, stone.node, stone.cluster_id) == ("data-r1", "n1", repo.cluster_id)
    assert stone.done_at == stone.deleted_at
    rep2 = rep.model_copy(update={"id": "data-r2"})
    await repo.store.put(keys.replica("data", "data-r2"), rep2.model_dump_json().encode())
    await repo.delete_volume_records("data")
    assert sorted(s.replica for s in await repo.tombstones()) == ["data-r1", "data-r2"]
    assert await repo.replicas() == []
