"""The cluster's identity, checked when a manager starts (``cargohold manager [--init]``).

A cluster id (``c-<32 hex>``) is created with the state store and kept in it as the
record ``/cluster``. Agents stamp their disks with it and act only for a manager whose
cluster id is their disks' (docs/operations.md, "Cluster identity, orphans and the
trash"), so a manager started on the wrong store can never make them delete anything.

At start the manager insists on a store that is plainly its own:

- a store with a cluster record: that cluster (a broken record refuses);
- a store with records but no cluster record (made by a version before cluster ids):
  it gets a cluster id now (a migration, logged and recorded as an event);
- an empty store (SQLite with no records, etcd with nothing under its prefix): refused,
  unless ``--init`` asks for a new cluster;
- ``--init`` on a store that has a cluster record or any records: refused.

(A missing SQLite file, or one that is not a cargohold database, is refused by the store
itself when opened without ``create``: control/state/sqlite.py.)
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from cargohold.errors import ConfigError

if TYPE_CHECKING:
    from cargohold.control.model import Cluster
    from cargohold.control.repository import Repository
    from cargohold.control.state import StateStore

# The manager's checks below import the models and the store when they run: the launcher
# imports this module for new_cluster_id alone, and every ``cargohold up``, ``status`` and
# ``down`` would otherwise load pydantic and the models (docs/benchmarks.md, CLI start-up).

log = logging.getLogger("cargohold.manager")


def new_cluster_id() -> str:
    return f"c-{secrets.token_hex(16)}"


def describe(store: StateStore) -> str:
    """The store in words, for errors: which file, or which endpoints and prefix."""
    from cargohold.control.state import EtcdStateStore, SQLiteStateStore

    if isinstance(store, SQLiteStateStore):
        return f"SQLite state store {store.path!r}"
    if isinstance(store, EtcdStateStore):
        return f"etcd state store {','.join(store.endpoints)} (key prefix {store.namespace!r})"
    return f"{type(store).__name__}"


async def open_cluster(
    repo: Repository, init: bool, *, allow_empty: bool = False, cluster_id: str | None = None
) -> Cluster:
    """The store's cluster, checked (and created with ``init``, or migrated); sets
    ``repo.cluster_id``. ConfigError naming the store and what is wrong otherwise.
    ``allow_empty``: an empty store gets a new cluster without ``init`` (the in-memory
    store, which is always empty at start). ``cluster_id`` (with ``init``): the new store
    takes a lost cluster's id instead of a new one, so its agents act for it again and its
    replicas can be adopted (recovery from a lost state store)."""
    from pydantic import ValidationError

    from cargohold.control.model import Cluster, EventKind, keys
    from cargohold.control.repository import now

    if cluster_id is not None:
        try:
            Cluster(id=cluster_id)
        except ValidationError as e:
            raise ConfigError(f"--cluster-id: {e.errors()[0]['msg']}") from None
    store = repo.store
    where = describe(store)
    entry = await store.get(keys.CLUSTER)
    records = [e for e in await store.range("/") if not e.key.startswith("/leader/")]
    if entry is not None:
        try:
            cluster = Cluster.model_validate_json(entry.value)
        except ValidationError as e:
            raise ConfigError(
                f"{where}: the cluster record {keys.CLUSTER} is broken "
                f"({e.errors()[0]['msg']}); restore the store from a backup"
            ) from None
        if init:
            raise ConfigError(
                f"{where} already holds cluster {cluster.id} (created "
                f"{_when(cluster.created_at)}); --init makes a new cluster only in an empty "
                "store: start without --init"
            )
        repo.cluster_id = cluster.id
        return cluster
    if records:
        if init:
            raise ConfigError(
                f"{where} already holds {len(records)} record(s) (e.g. {records[0].key}); "
                "--init makes a new cluster only in an empty store: start without --init"
            )
        cluster = Cluster(id=new_cluster_id(), created_at=now())
        await _create(repo, cluster, where)
        log.warning(
            "%s holds %d record(s) but no cluster record (made by an older cargohold): "
            "it is cluster %s from now on",
            where,
            len(records),
            cluster.id,
        )
        await repo.add_event(
            EventKind.CLUSTER_ID_ASSIGNED,
            f"a store of an older version got cluster id {cluster.id}",
        )
        return cluster
    if not (init or allow_empty):
        raise ConfigError(
            f"{where} is empty (no cluster record, no records): it is not this cluster's "
            "state. Give the right store (a wrong path, a new volume mounted over the old "
            "one, a failed restore?), or --init to create a new cluster"
        )
    cluster = Cluster(id=cluster_id or new_cluster_id(), created_at=now())
    await _create(repo, cluster, where)
    if cluster_id:
        log.warning(  # the id of a lost store's cluster, or of the CA made for a new one
            "%s: created cluster %s under the id given (--cluster-id); if it replaces a "
            "lost state store, its nodes' replicas show up as orphans: adopt them with "
            "`cargohold volume adopt`",
            where,
            cluster.id,
        )
    else:
        log.info("%s: created cluster %s", where, cluster.id)
    await repo.add_event(
        EventKind.CLUSTER_CREATED,
        f"cluster {cluster.id} created"
        + (" under the id given (--cluster-id)" if cluster_id else ""),
    )
    return cluster


async def _create(repo: Repository, cluster: Cluster, where: str) -> None:
    from cargohold.control.model import keys
    from cargohold.control.state.base import Compare, Put

    body = cluster.model_dump_json().encode()
    if not await repo.store.txn([Compare(keys.CLUSTER, 0)], [Put(keys.CLUSTER, body)]):
        # another manager made it meanwhile (several managers of one etcd started at once)
        got = await repo.cluster()
        if got is None:
            raise ConfigError(f"{where}: cannot create the cluster record {keys.CLUSTER}")
        cluster.id, cluster.created_at = got.id, got.created_at
    repo.cluster_id = cluster.id


def _when(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
