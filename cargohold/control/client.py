# size: one thin method per REST route (the whole API in one place), no logic to split
"""The manager's API client: one method per REST route of docs/control-plane.md.

Called by the ``cargohold`` commands (cli/*_cmd.py), the launcher, the CSI driver and the
benchmarks. It is synchronous (httpx.Client) and returns the API's JSON as plain dicts and
lists. URLs (``http://HOST:PORT`` or ``unix:/PATH``), the httpx client and the mapping of
error answers to the one exception tree are ``control/transport.py``'s, shared with the
node agents' client (e.g. a 409 of type ``WrongState`` is ``WrongState``; no answer is
``ManagerUnavailable("no manager at URL: ...")``).

The manager is found by ``ManagerClient.discover``: an explicit API URL, else the local
cluster's ``DIR/cluster.json`` (written by ``cargohold up``).

Waiting helpers poll with a deadline and raise ``WaitTimeout`` with the last state seen
(``wait_placed``, ``wait_attached``, ``wait_detached``, ``wait_healthy``,
``wait_operation``, ``wait_gone``; ``wait_volume`` for any other condition); while waiting,
a manager that does not answer for a moment (a restart, a leader change) is retried until
the deadline. What "placed", "attached", "detached" and "healthy" mean in a volume's JSON
is said once, here: ``volume_placed``, ``volume_attached``, ``volume_detached``,
``volume_healthy``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from cargohold.control.settings import ClientSettings
from cargohold.control.transport import UNIX_BASE as UNIX_BASE  # re-exported
from cargohold.control.transport import (
    ClientCredentials,
    parse_url,
    sync_client,
    unreachable,
)
from cargohold.control.transport import error_from_response as error_from_response
from cargohold.errors import Busy, CargoholdError, ManagerUnavailable, NotFound, WrongState

JSON = dict[str, Any]
T = TypeVar("T")  # what ManagerClient.poll fetches

DETACH_SETTLE = 6.0  # seconds a refused detach is retried (two heartbeats and a margin)
DEFAULT_DIR = "~/.cargohold"
CLUSTER_FILE = "cluster.json"


class WaitTimeout(CargoholdError):
    """A wait reached its deadline; the message says what was awaited and the last state."""

    exit_code = 7


class OperationFailed(CargoholdError):
    """An operation (snapshot, revert, expand, clone) ended in state ``failed``."""

    exit_code = 1


# --- the facts of a volume's JSON (the API's ``Volume``) --------------------------------
def volume_attached(v: JSON, node: str | None = None) -> bool:
    """Attached (on ``node``, if given) and serving: state ``attached`` with an NBD endpoint.

    The manager's state ``attached`` is ``Volume.attached`` (control/model.py): the attach
    engine runs on the attach node at the wanted epoch, so the answer's ``engine`` is
    ``running`` on that node whenever the state says ``attached``; it is not checked again."""
    return (
        v.get("state") == "attached"
        and bool(v.get("endpoint"))
        and (node is None or v.get("attached_node") == node)
    )


def volume_detached(v: JSON) -> bool:
    """Detached, and no attach engine still running: nothing is to be attached (no
    ``attached_node``), the state is past ``detaching``, and the API shows no attach engine
    as running (right after a detach the state can read ``detached`` before the engine
    has stopped)."""
    engine = v.get("engine") or {}
    still_running = engine.get("purpose", "attach") == "attach" and bool(engine.get("running"))
    return (
        not v.get("attached_node")
        and v.get("state") not in ("attached", "attaching", "detaching")
        and not still_running
    )


def volume_placed(v: JSON) -> bool:
    """Created: past ``creating``, and every wanted replica is placed and on its disk (none
    ``pending``)."""
    reps = v.get("replicas", ())
    return (
        v.get("state") != "creating"
        and len(reps) >= (v.get("replicas_wanted") or 0)
        and all(r.get("state") != "pending" for r in reps)
    )


def volume_healthy(v: JSON) -> bool:
    """Every wanted replica is current (robustness ``healthy``)."""
    return v.get("robustness") == "healthy"


def cluster_dir(dir: str | os.PathLike[str] | None = None) -> Path:
    """The local cluster's directory: ``dir``, else $CARGOHOLD_DIR, else ~/.cargohold."""
    return Path(dir or ClientSettings().dir or DEFAULT_DIR).expanduser()


def _seg(name: str) -> str:
    """One path segment: names are DNS labels, but a bad one must not reach another route."""
    return quote(str(name), safe="")


class ManagerClient:
    """A connection to one manager. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        poll_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self.url = url
        self.poll_interval = poll_interval
        self._clock = clock
        self._sleep = sleep
        self._http = sync_client(parse_url(url), timeout, transport, credentials)

    # --- finding the manager ---------------------------------------------------------------
    @classmethod
    def discover(
        cls, api: str | None = None, dir: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> ManagerClient:
        """The manager to talk to. In order: ``api``; ``dir``'s cluster.json; $CARGOHOLD_API;
        $CARGOHOLD_DIR's cluster.json; ~/.cargohold/cluster.json.

        (The CLI fills ``api`` and ``dir`` from the environment itself, so there an API URL
        from --api or $CARGOHOLD_API wins over a directory.) The credentials are the
        directory's (``transport.ClientCredentials.find``) unless given."""
        kwargs.setdefault("credentials", ClientCredentials.find(dir))
        if api:
            return cls(api, **kwargs)
        if dir is None and (env_api := ClientSettings().api):
            return cls(env_api, **kwargs)
        return cls(local_api(dir), **kwargs)

    # --- plumbing --------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ManagerClient({self.url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One call; the answer's JSON, or the error it stands for."""
        try:
            resp = self._http.request(method, path, json=body, params=params)
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from e
        if resp.status_code >= 400:
            raise error_from_response(resp, self.url)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise CargoholdError(
                f"manager at {self.url} sent no JSON for {method} {path}: {resp.text[:200]!r}"
            ) from None

    # The answer's shape is the route's (docs/api/openapi.json): an object, or a list of them.
    def _get(self, path: str, **params: Any) -> JSON:
        out: JSON = self._get_any(path, params)
        return out

    def _list(self, path: str, **params: Any) -> list[JSON]:
        out: list[JSON] = self._get_any(path, params)
        return out

    def _get_any(self, path: str, params: dict[str, Any]) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _post(self, path: str, body: Any = None) -> JSON:
        out: JSON = self.request("POST", path, body=body)
        return out

    def _delete(self, path: str, params: dict[str, Any] | None = None) -> JSON:
        out: JSON = self.request("DELETE", path, params=params)
        return out

    # --- the manager -----------------------------------------------------------------------
    def healthz(self) -> JSON:
        return self._get("/healthz")

    def status(self) -> JSON:
        return self._get("/api/v1/status")

    # --- bearer tokens (permission ``security``) ---------------------------------------------
    def create_token(
        self, role: str, name: str, tenant: str | None = None, ttl_seconds: float | None = None
    ) -> JSON:
        """A new token; the answer's ``token`` is shown once, never again."""
        body = {"role": role, "name": name, "tenant": tenant, "ttl_seconds": ttl_seconds}
        return self._post("/api/v1/tokens", {k: v for k, v in body.items() if v is not None})

    def tokens(self) -> list[JSON]:
        return self._list("/api/v1/tokens")

    def delete_token(self, token_id: str) -> JSON:
        return self._delete(f"/api/v1/tokens/{_seg(token_id)}")

    # --- nodes and disks -------------------------------------------------------------------
    def nodes(self) -> list[JSON]:
        return self._list("/api/v1/nodes")

    def node(self, name: str) -> JSON:
        return self._get(f"/api/v1/nodes/{_seg(name)}")

    def cordon(self, name: str) -> JSON:
        return self._post(f"/api/v1/nodes/{_seg(name)}/cordon")

    def uncordon(self, name: str) -> JSON:
        return self._post(f"/api/v1/nodes/{_seg(name)}/uncordon")

    def drain(self, name: str) -> JSON:
        return self._post(f"/api/v1/nodes/{_seg(name)}/drain")

    def disks(self, node: str | None = None) -> list[JSON]:
        """Every disk, or those of one node (filtered here: the route has no filter)."""
        disks = self._list("/api/v1/disks")
        return disks if node is None else [d for d in disks if d.get("node") == node]

    def add_disk(
        self, node: str, name: str, path: str, capacity_bytes: int, tags: Iterable[str] = ()
    ) -> JSON:
        body = {"name": name, "path": path, "capacity_bytes": capacity_bytes, "tags": list(tags)}
        return self._post(f"/api/v1/nodes/{_seg(node)}/disks", body)

    def drain_disk(self, node: str, disk: str) -> JSON:
        return self._post(f"/api/v1/nodes/{_seg(node)}/disks/{_seg(disk)}/drain")

    def remove_disk(self, node: str, disk: str) -> JSON:
        return self._delete(f"/api/v1/nodes/{_seg(node)}/disks/{_seg(disk)}")

    def remove_node(self, name: str) -> JSON:
        return self._delete(f"/api/v1/nodes/{_seg(name)}")

    # --- joining ---------------------------------------------------------------------------
    def create_join_token(self, ttl_seconds: int, uses: int) -> JSON:
        return self._post("/api/v1/join-tokens", {"ttl_seconds": ttl_seconds, "uses": uses})

    def join_tokens(self) -> list[JSON]:
        return self._list("/api/v1/join-tokens")

    def delete_join_token(self, token_id: str) -> JSON:
        return self._delete(f"/api/v1/join-tokens/{_seg(token_id)}")

    # --- volumes ---------------------------------------------------------------------------
    def volumes(self) -> list[JSON]:
        return self._list("/api/v1/volumes")

    def volume(self, name: str) -> JSON:
        return self._get(f"/api/v1/volumes/{_seg(name)}")

    def create_volume(
        self,
        name: str,
        size_bytes: int,
        *,
        replicas: int | None = None,
        zone_spread: bool | None = None,
        node_tags: Iterable[str] | None = None,
        disk_tags: Iterable[str] | None = None,
        reclaim_policy: str | None = None,
        stale_replica_timeout: float | None = None,
        source: JSON | None = None,
        preferred_nodes: Iterable[str] | None = None,
        tenant: str | None = None,
        labels: dict[str, str] | None = None,
        qos: JSON | None = None,
        encrypted: bool | None = None,
        key: str | None = None,
        kms_key: str | None = None,
    ) -> JSON:
        """POST a ``VolumeCreate``; fields left None take the manager's defaults. ``source``
        is ``{"volume": ..., "snapshot": ...}`` to clone; ``qos`` the QoS limits;
        ``encrypted`` with ``key`` (a KEK name) or ``kms_key`` (docs/keys.md)."""
        body: JSON = {"name": name, "size_bytes": size_bytes}
        given: JSON = {
            "replicas": replicas,
            "zone_spread": zone_spread,
            "node_tags": list(node_tags) if node_tags is not None else None,
            "disk_tags": list(disk_tags) if disk_tags is not None else None,
            "reclaim_policy": reclaim_policy,
            "stale_replica_timeout": stale_replica_timeout,
            "source": source,
            "preferred_nodes": list(preferred_nodes) if preferred_nodes else None,
            "tenant": tenant,
            "labels": labels or None,
            "qos": qos or None,
            "encrypted": encrypted or None,
            "key": key,
            "kms_key": kms_key,
        }
        body.update({k: v for k, v in given.items() if v is not None})
        return self._post("/api/v1/volumes", body)

    def update_volume(self, name: str, qos: JSON) -> JSON:
        """PATCH a volume's QoS limits (a merge: a limit given as None is removed)."""
        out: JSON = self.request("PATCH", f"/api/v1/volumes/{_seg(name)}", body={"qos": qos})
        return out

    def delete_volume(self, name: str, purge: bool = False, shred: bool = False) -> JSON:
        """``shred``: destroy an encrypted volume's data key first (docs/keys.md)."""
        params = {"purge": "true"} if purge else {}
        if shred:
            params["shred"] = "true"
        return self._delete(f"/api/v1/volumes/{_seg(name)}", params or None)

    def rekey(
        self,
        name: str,
        key: str | None = None,
        kms_key: str | None = None,
        data_key: bool = False,
    ) -> JSON:
        """Rewrap the volume's data keys under another key-encryption key, and/or rotate
        the data key (``data_key``: a new one, every block rewritten in the background)."""
        body: JSON = {}
        if key is not None:
            body["key"] = key
        if kms_key is not None:
            body["kms_key"] = kms_key
        if data_key:
            body["data_key"] = True
        return self._post(f"/api/v1/volumes/{_seg(name)}/rekey", body)

    def attach(self, name: str, node: str, force: bool = False, read_only: bool = False) -> JSON:
        body: JSON = {"node": node}
        if force:
            body["force"] = True
        if read_only:  # NBD clients may only read (a standby before activation: only so)
            body["read_only"] = True
        return self._post(f"/api/v1/volumes/{_seg(name)}/attach", body)

    def detach(self, name: str, force: bool = False, settle: float = DETACH_SETTLE) -> JSON:
        """Busy (409) while NBD clients are connected, unless ``force``. The manager knows
        the clients from the engine's node's heartbeat, a few seconds behind: a refusal is
        asked again for up to ``settle`` seconds, so a detach right after the clients let
        go (an unmount, a finished fio) goes through, and a mounted volume is still refused."""
        params = {"force": "true"} if force else None
        deadline = time.monotonic() + settle
        while True:
            try:
                out: JSON = self.request(
                    "POST", f"/api/v1/volumes/{_seg(name)}/detach", params=params
                )
                return out
            except Busy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def create_standby(
        self,
        name: str,
        target: str,
        source_volume: str,
        *,
        source_volume_id: str | None = None,
        size_bytes: int | None = None,
        replicas: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> JSON:
        """A standby volume following ``source_volume``'s backups in ``target``
        (docs/disaster-recovery.md); returns its volume view."""
        body: dict[str, Any] = {"name": name, "target": target, "source_volume": source_volume}
        for k, v in (
            ("source_volume_id", source_volume_id),
            ("size_bytes", size_bytes),
            ("replicas", replicas),
            ("labels", labels),
        ):
            if v is not None:
                body[k] = v
        return self._post("/api/v1/standby-volumes", body)

    def activate(self, name: str) -> JSON:
        """Ask a standby to become a normal volume; returns its view (``standby.state``
        ``activating``, then ``active``: wait with ``wait_volume``)."""
        return self._post(f"/api/v1/volumes/{_seg(name)}/activate")

    def expand(self, name: str, size_bytes: int) -> JSON:
        """Returns the expand ``Operation``."""
        return self._post(f"/api/v1/volumes/{_seg(name)}/expand", {"size_bytes": size_bytes})

    def scrub(self, name: str) -> JSON:
        """Returns the scrub ``Operation`` (its result, once done, is the pass's report)."""
        return self._post(f"/api/v1/volumes/{_seg(name)}/scrub")

    def recover_epoch(self, name: str) -> JSON:
        """Raise a fenced volume's epoch above its replicas' (returns the volume)."""
        return self._post(f"/api/v1/volumes/{_seg(name)}/recover-epoch")

    def replicas(self, volume: str | None = None) -> list[JSON]:
        if volume is None:
            return self._list("/api/v1/replicas")
        return self._list(f"/api/v1/volumes/{_seg(volume)}/replicas")

    def attachments(self) -> list[JSON]:
        return self._list("/api/v1/attachments")

    def orphans(self, node: str | None = None) -> list[JSON]:
        return self._list("/api/v1/orphans", node=node)

    def delete_orphan(self, node: str, replica: str) -> JSON:
        return self._delete(f"/api/v1/orphans/{_seg(node)}/{_seg(replica)}")

    def adopt(
        self,
        volume: str,
        replicas: list[str] | None = None,
        accept_fork: bool = False,
        replicas_wanted: int | None = None,
        dry_run: bool = False,
        tenant: str | None = None,
    ) -> JSON:
        """Recreate ``volume``'s records from its orphans; -> the ``AdoptionPlan``."""
        body: JSON = {"volume": volume, "accept_fork": accept_fork, "dry_run": dry_run}
        if tenant:
            body["tenant"] = tenant
        if replicas:
            body["replicas"] = replicas
        if replicas_wanted:
            body["replicas_wanted"] = replicas_wanted
        return self._post("/api/v1/orphans/adopt", body)

    def events(
        self, volume: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[JSON]:
        """The event log, oldest first: of ``volume`` only, after ``since``, the newest
        ``limit`` (each None: no such filter)."""
        return self._list("/api/v1/events", volume=volume, since=since, limit=limit)

    # --- recurring jobs --------------------------------------------------------------------
    def jobs(self) -> list[JSON]:
        return self._list("/api/v1/jobs")

    def job(self, name: str) -> JSON:
        return self._get(f"/api/v1/jobs/{_seg(name)}")

    def create_job(self, spec: JSON) -> JSON:
        """POST a job spec (control/jobs.py ``JobSpec``)."""
        return self._post("/api/v1/jobs", spec)

    def delete_job(self, name: str) -> JSON:
        return self._delete(f"/api/v1/jobs/{_seg(name)}")

    def run_job(self, name: str) -> JSON:
        return self._post(f"/api/v1/jobs/{_seg(name)}/run")

    # --- snapshots -------------------------------------------------------------------------
    # --- tenants ---------------------------------------------------------------------------
    def tenants(self) -> list[JSON]:
        return self._list("/api/v1/tenants")

    def tenant(self, name: str) -> JSON:
        return self._get(f"/api/v1/tenants/{_seg(name)}")

    def create_tenant(self, name: str, quota_bytes: int | None = None) -> JSON:
        return self._post("/api/v1/tenants", {"name": name, "quota_bytes": quota_bytes})

    def set_tenant_quota(self, name: str, quota_bytes: int | None) -> JSON:
        out: JSON = self.request(
            "PUT", f"/api/v1/tenants/{_seg(name)}/quota", body={"quota_bytes": quota_bytes}
        )
        return out

    def delete_tenant(self, name: str) -> JSON:
        return self._delete(f"/api/v1/tenants/{_seg(name)}")

    def snapshots(self, volume: str) -> list[JSON]:
        return self._list(f"/api/v1/volumes/{_seg(volume)}/snapshots")

    def create_snapshot(self, volume: str, name: str, labels: dict[str, str] | None = None) -> JSON:
        """Returns the snapshot-create ``Operation``."""
        body = {"name": name, "labels": dict(labels or {})}
        return self._post(f"/api/v1/volumes/{_seg(volume)}/snapshots", body)

    def snapshot_metadata(
        self,
        volume: str,
        snapshot: str,
        base: str | None = None,
        offset: int = 0,
        max_results: int = 0,
        timeout: float | None = 60.0,
    ) -> JSON:
        """A page of ``snapshot``'s allocated blocks (or of those changed since ``base``):
        ``{"runs": [[offset, length], ...], "next_offset", "volume_capacity_bytes"}``."""
        body: JSON = {"offset": offset, "max_results": max_results}
        if base is not None:
            body["base"] = base
        op = self._post(f"/api/v1/volumes/{_seg(volume)}/snapshots/{_seg(snapshot)}/metadata", body)
        done = self.wait_operation(op["id"], timeout)
        result: JSON = done.get("result") or {}
        return result

    def delete_snapshot(self, volume: str, name: str) -> JSON:
        """Returns the snapshot-delete ``Operation``."""
        return self._delete(f"/api/v1/volumes/{_seg(volume)}/snapshots/{_seg(name)}")

    def revert(self, volume: str, name: str) -> JSON:
        """Returns the snapshot-revert ``Operation`` (the volume must be detached)."""
        return self._post(f"/api/v1/volumes/{_seg(volume)}/snapshots/{_seg(name)}/revert")

    # --- group snapshots (control/group_snapshots.py) --------------------------------------
    def group_snapshots(self) -> list[JSON]:
        return self._list("/api/v1/group-snapshots")

    def group_snapshot(self, name: str) -> JSON:
        return self._get(f"/api/v1/group-snapshots/{_seg(name)}")

    def create_group_snapshot(
        self, name: str, volumes: Iterable[str], hold_seconds: float | None = None
    ) -> JSON:
        """Returns the ``GroupSnapshot`` (``holding`` at first: ``wait_group_snapshot``)."""
        body: JSON = {"name": name, "volumes": list(volumes)}
        if hold_seconds is not None:
            body["hold_seconds"] = hold_seconds
        return self._post("/api/v1/group-snapshots", body)

    def delete_group_snapshot(self, name: str) -> JSON:
        return self._delete(f"/api/v1/group-snapshots/{_seg(name)}")

    def wait_group_snapshot(self, name: str, timeout: float = 120.0) -> JSON:
        """Poll until the group is ``ready`` (returned) or ``failed`` (WrongState with its
        error); TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            g = self.group_snapshot(name)
            if g["state"] == "ready":
                return g
            if g["state"] == "failed":
                raise WrongState(f"group snapshot {name} failed: {g.get('error')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"group snapshot {name} is still {g['state']} after {timeout} s")
            time.sleep(0.1)

    # --- backups (docs/backups.md) ----------------------------------------------------------
    def backup_targets(self) -> list[JSON]:
        return self._list("/api/v1/backup-targets")

    def backup_target(self, name: str) -> JSON:
        return self._get(f"/api/v1/backup-targets/{_seg(name)}")

    def create_backup_target(
        self,
        name: str,
        url: str,
        repository_key: str,
        *,
        endpoint: str = "",
        region: str = "",
        ca_bundle: str = "",
        access_key: str = "",
        secret_key: str = "",
    ) -> JSON:
        """``repository_key``: base64 of the 32-byte key. The secrets go in the body only."""
        body = {
            "name": name,
            "url": url,
            "endpoint": endpoint,
            "region": region,
            "ca_bundle": ca_bundle,
            "access_key": access_key,
            "secret_key": secret_key,
            "repository_key": repository_key,
        }
        return self._post("/api/v1/backup-targets", body)

    def delete_backup_target(self, name: str) -> JSON:
        return self._delete(f"/api/v1/backup-targets/{_seg(name)}")

    def sync_backup_target(self, name: str) -> JSON:
        return self._post(f"/api/v1/backup-targets/{_seg(name)}/sync")

    def gc_backup_target(self, name: str) -> JSON:
        return self._post(f"/api/v1/backup-targets/{_seg(name)}/gc")

    def export_backup_key(self, name: str) -> JSON:
        return self._post(f"/api/v1/backup-targets/{_seg(name)}/export-key")

    def backups(self, volume: str | None = None, target: str | None = None) -> list[JSON]:
        return self._list("/api/v1/backups", volume=volume, target=target)

    def backup(self, backup_id: str) -> JSON:
        return self._get(f"/api/v1/backups/{_seg(backup_id)}")

    def create_backup(
        self,
        volume: str,
        target: str,
        snapshot: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> JSON:
        """Returns the ``backup`` Operation (its ``args.backup`` is the backup's id)."""
        body: JSON = {"target": target, "labels": dict(labels or {})}
        if snapshot is not None:
            body["snapshot"] = snapshot
        return self._post(f"/api/v1/volumes/{_seg(volume)}/backups", body)

    def delete_backup(self, backup_id: str) -> JSON:
        return self._delete(f"/api/v1/backups/{_seg(backup_id)}")

    # --- operations ------------------------------------------------------------------------
    def operations(self, volume: str | None = None) -> list[JSON]:
        return self._list("/api/v1/operations", volume=volume)

    def operation(self, op_id: str) -> JSON:
        return self._get(f"/api/v1/operations/{_seg(op_id)}")

    def find_operation(self, volume: str, kind: str) -> JSON | None:
        """The newest operation of ``kind`` on ``volume`` (e.g. the clone of a new volume,
        whose id the create answer does not carry)."""
        ops = [o for o in self.operations(volume) if o.get("kind") == kind]
        return max(ops, key=lambda o: o.get("created_at") or 0.0) if ops else None

    # --- waiting ---------------------------------------------------------------------------
    def wait_operation(
        self,
        op_id: str,
        timeout: float | None,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Poll until the operation is done; its final JSON. Raises OperationFailed if it
        failed, WaitTimeout at the deadline."""

        def done(op: JSON) -> bool:
            return op.get("state") in ("succeeded", "failed")

        op = self.poll(
            lambda: self.operation(op_id), done, timeout, on_progress, f"operation {op_id}"
        )
        if op.get("state") == "failed":
            raise OperationFailed(
                f"operation {op_id} ({op.get('kind')} of {op.get('volume')}) failed: "
                f"{op.get('error') or 'no reason given'}",
                operation=op,
            )
        return op

    def wait_volume(
        self,
        name: str,
        predicate: Callable[[JSON], bool],
        timeout: float | None,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Poll the volume until ``predicate(volume)``; its JSON then. WaitTimeout at the
        deadline; NotFound if it disappears."""
        return self.poll(
            lambda: self.volume(name), predicate, timeout, on_progress, f"volume {name}"
        )

    def wait_attached(
        self,
        name: str,
        node: str | None,
        timeout: float | None,
        on_progress: Callable[[JSON], None] | None = None,
        *,
        healthy: bool = False,
    ) -> JSON:
        """Poll until the volume is attached (on ``node``, if given; see
        ``volume_attached``), and also ``healthy`` if asked; its JSON then."""

        def ready(v: JSON) -> bool:
            return volume_attached(v, node) and (not healthy or volume_healthy(v))

        return self.wait_volume(name, ready, timeout, on_progress)

    def wait_placed(
        self,
        name: str,
        timeout: float | None,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Poll until the new volume's replicas are on their disks (``volume_placed``)."""
        return self.wait_volume(name, volume_placed, timeout, on_progress)

    def wait_detached(
        self,
        name: str,
        timeout: float | None,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Poll until the volume is detached and its engine stopped (``volume_detached``)."""
        return self.wait_volume(name, volume_detached, timeout, on_progress)

    def wait_healthy(
        self,
        name: str,
        timeout: float | None,
        on_progress: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """Poll until every wanted replica of the volume is current (``volume_healthy``)."""
        return self.wait_volume(name, volume_healthy, timeout, on_progress)

    def wait_gone(self, name: str, timeout: float | None) -> None:
        """Poll until GET of the volume answers 404."""
        deadline = None if timeout is None else self._clock() + timeout
        last = "no answer yet"
        while True:
            try:
                vol = self.volume(name)
                last = f"state {vol.get('state')}"
                if vol.get("error"):
                    last += f", error: {vol['error']}"
            except NotFound:
                return
            except ManagerUnavailable as e:
                last = str(e)
            if deadline is not None and self._clock() >= deadline:
                raise WaitTimeout(
                    f"volume {name} still exists after {timeout:g}s (last seen: {last})"
                )
            self._sleep(self.poll_interval)

    def poll(
        self,
        fetch: Callable[[], T],
        predicate: Callable[[T], bool],
        timeout: float | None,
        on_progress: Callable[[T], None] | None,
        what: str,
    ) -> T:
        """Call ``fetch`` every ``poll_interval`` until ``predicate`` holds of its answer;
        that answer. ``what`` names the awaited thing in the WaitTimeout message."""
        deadline = None if timeout is None else self._clock() + timeout
        last: T | None = None
        unavailable: ManagerUnavailable | None = None
        while True:
            try:
                obj = fetch()
            except ManagerUnavailable as e:  # a manager restart or leader change: retry
                unavailable = e
            else:
                unavailable = None
                last = obj
                if on_progress is not None:
                    on_progress(obj)
                if predicate(obj):
                    return obj
            if deadline is not None and self._clock() >= deadline:
                raise WaitTimeout(
                    f"gave up waiting for {what} after {timeout:g}s "
                    f"(last seen: {_describe(last, unavailable)})",
                    last=last,
                )
            self._sleep(self.poll_interval)


def _describe(last: Any, unavailable: ManagerUnavailable | None) -> str:
    if unavailable is not None:
        return str(unavailable)
    if last is None:
        return "nothing"
    if isinstance(last, list):
        return f"{len(last)} left"
    if not isinstance(last, dict):
        return str(last)[:200]
    parts = [f"{k} {last[k]}" for k in ("state", "robustness", "progress") if k in last]
    if last.get("error"):
        parts.append(f"error: {last['error']}")
    return ", ".join(parts) or "no state"


def local_api(dir: str | os.PathLike[str] | None = None) -> str:
    """The API URL of the local cluster in ``dir`` (see ``cluster_dir``), from cluster.json:
    its ``api`` (a unix socket), or ``api_tcp`` when that socket is not there."""
    d = cluster_dir(dir)
    path = d / CLUSTER_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManagerUnavailable(
            f"no local cluster in {d} (start one with `cargohold up`) and no --api given"
        ) from None
    except (OSError, ValueError) as e:
        raise ManagerUnavailable(f"cannot read {path}: {e}") from None
    if not isinstance(info, dict):
        raise ManagerUnavailable(f"{path} is not a cluster description (expected an object)")
    api, tcp = info.get("api"), info.get("api_tcp")
    if isinstance(api, str) and api.startswith("unix:") and tcp:
        if not Path(api.removeprefix("unix:").removeprefix("//")).exists():
            api = tcp
    if not api or not isinstance(api, str):
        api = tcp
    if not api or not isinstance(api, str):
        raise ManagerUnavailable(f"{path} names no manager API (no 'api' field)")
    return api
