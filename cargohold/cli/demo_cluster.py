"""The main job on the embedded default, as ``cargohold demo`` runs it.

A 3-node local cluster (``cargohold up``: a manager on SQLite, three node agents, each with
its replica server); a 3-replica volume created and attached through the manager's API;
the engine's NBD export made a block device (nbdfuse + loop), an ext4 filesystem and files
on it; a node killed with SIGKILL (agent, replica server: everything of that node, as a
crash) while files are written; the volume degraded; the node started again and its replica
brought back with an online delta rebuild, all by the control plane; then every file's
SHA-256, e2fsck, and the replicas' generations checked. Then the backup story
(docs/backups.md): a file target in the demo's directory (standing for an NFS mount) with a
generated repository key; a full backup before the node is killed and an incremental one
after the rebuild, with what each read and stored; the whole cluster stopped and its
directory deleted; a NEW cluster (new CA, new manager) given the same target and the saved
key, which imports the backups from the repository's catalog; the last backup restored into
a new volume, attached, mounted read-only, every file's SHA-256 and e2fsck checked again.
Called by ``demo_cmd``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from typing import Any

from cargohold.cli.backup_credentials import generate_key, read_key
from cargohold.cli.demo_steps import BlockDevice, can_mount, note, run, say, write_files
from cargohold.cli.output import human_size
from cargohold.constants import MIB
from cargohold.control.client import (
    ManagerClient,
    volume_attached,
    volume_detached,
    volume_healthy,
)
from cargohold.launcher.cluster import LocalCluster

SIZE = 512 * MIB


def _replicas(v: dict[str, Any]) -> str:
    return ", ".join(f"{r['node']} {r['mode'] or '-'} ({r['state']})" for r in v["replicas"])


def _wait(
    api: ManagerClient, name: str, pred: Any, what: str, timeout: float = 120
) -> dict[str, Any]:
    shown = [""]

    def show(v: dict[str, Any]) -> None:
        line = f"{v['state']}, {v['robustness']}: {_replicas(v)}"
        if line != shown[0]:
            note(f"  … {line}")
            shown[0] = line

    try:
        return api.wait_volume(name, pred, timeout, on_progress=show)
    except Exception as e:
        raise RuntimeError(f"waiting for {what}: {e}") from None


def _backup(api: ManagerClient, volume: str, target: str) -> dict[str, Any]:
    """Back ``volume`` up to ``target`` (a snapshot taken now) and wait: the backup's record."""
    op = api.create_backup(volume, target)
    try:
        api.wait_operation(op["id"], 300)
    except Exception as e:
        raise RuntimeError(f"backing {volume} up: {e}") from None
    b = api.backup(op["args"]["backup"])
    if b.get("state") != "succeeded":
        raise RuntimeError(f"backup {b['id']} of {volume}: {b.get('state')}: {b.get('error')}")
    info = b.get("info") or {}
    why = f" ({info['reason']})" if info.get("reason") else ""
    note(
        f"backup {b['id']}: {info.get('mode')}{why}, read {human_size(info.get('bytes_read'))}"
        f" of the volume, stored {human_size(info.get('bytes_new'))} new"
    )
    return b


def _check_files(dev: BlockDevice, sums: dict[str, str]) -> None:
    """Every file's SHA-256 through a fresh read-only mount, then e2fsck (read-only)."""
    dev.umount()
    run("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches", check=False)
    dev.mount(ro=True)
    bad = []
    for name, digest in sums.items():
        try:
            with open(os.path.join(dev.mnt, name), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    bad.append(name)
        except FileNotFoundError:
            bad.append(name)
    dev.umount()
    if bad:
        raise RuntimeError(f"{len(bad)} files differ: {bad[:5]}")
    fsck = run("e2fsck", "-fn", dev.loop, check=False)
    if fsck.returncode != 0:
        raise RuntimeError(f"e2fsck found problems:\n{fsck.stdout}{fsck.stderr}")


def _rebuilt_bytes(cluster: LocalCluster, node: str, volume: str, rid: str) -> int | None:
    """What the last rebuild of replica ``rid`` copied, as ``volume``'s engine on ``node``
    measured it (its control socket's ``status``: the replica's ``rebuild.copied_bytes``);
    None when the engine does not say."""
    from cargohold.agent.node_state import control_path

    path = control_path(cluster.nodes[node].dir, volume)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b'{"op": "status"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        st = json.loads(data)
        link = next(x for x in st.get("replicas", []) if x.get("id") == rid)
        return int(link["rebuild"]["copied_bytes"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


def cluster_job(root: str) -> None:
    if not can_mount():
        raise RuntimeError(
            "the cluster demo needs root, /dev/fuse and loop devices (nbdfuse + losetup); "
            "run `cargohold demo --engine-only` for the data plane alone"
        )
    t0 = time.monotonic()
    say("1/14", "Starting a local cluster: a manager (state in SQLite) and three node agents.")
    cluster = LocalCluster.create(os.path.join(root, "cluster"), nodes=3).up(timeout=90)
    clusters = [cluster]
    api = ManagerClient(cluster.api)
    dev: BlockDevice | None = None
    try:
        for n in api.nodes():
            note(f"{n['name']}: {n['state']}, replica server at {n['address']}:{n['replica_port']}")
        note(f"the manager's API: {cluster.api}")

        say("2/14", "Creating volume 'demo': 512 MiB, 3 replicas, one per node.")
        v = api.create_volume("demo", SIZE, replicas=3, stale_replica_timeout=600)
        note(f"placed by the scheduler: {', '.join(r['node'] for r in v['replicas'])}")
        _wait(
            api,
            "demo",
            lambda v: all(r["state"] == "stopped" for r in v["replicas"]),
            "the replicas to be created",
        )

        say("3/14", "Attaching it to node-1: the node agent starts the volume's engine.")
        api.attach("demo", "node-1")
        v = _wait(
            api,
            "demo",
            lambda v: volume_attached(v) and volume_healthy(v),
            "the engine to start",
        )
        note(f"engine epoch {v['epoch']}; NBD endpoint {v['endpoint']}")

        say("4/14", "Making it a block device (nbdfuse + loop), with ext4 and files on it.")
        dev = BlockDevice(v["endpoint"], os.path.join(root, "work"))
        loop = dev.attach()
        run("mkfs.ext4", "-q", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
        dev.mount()
        sums = write_files(dev.mnt, seed=1, count=40)
        run("sync", "-f", dev.mnt)
        note(f"{len(sums)} files written through {loop} and synced")

        repo = os.path.join(root, "backups")
        key_file = os.path.join(root, "backup.key")
        say("5/14", f"Backing it up, in use, to a file target ({repo}, standing for an NFS mount).")
        key = generate_key(key_file)
        api.create_backup_target("nfs", f"file://{repo}", base64.b64encode(key).decode())
        note(f"a new repository there, encrypted with a new key kept in {key_file}")
        _backup(api, "demo", "nfs")

        victim = "node-3"
        say("6/14", f"Killing {victim} with SIGKILL: its agent and replica server die at once.")
        cluster.kill_node(victim)
        more = write_files(dev.mnt, seed=2, count=20)
        run("sync", "-f", dev.mnt)
        sums.update(more)
        note(f"{len(more)} more files written while {victim} is gone: the volume goes on")
        v = _wait(
            api,
            "demo",
            lambda v: (
                v["robustness"] == "degraded"
                and any(r["node"] == victim and r["state"] == "failed" for r in v["replicas"])
            ),
            "the manager to see the volume degraded",
        )
        note(f"the manager says: {v['robustness']} — {_replicas(v)}")

        say("7/14", f"Starting {victim} again: the control plane brings its replica back.")
        cluster.start_node(victim)
        v = _wait(
            api,
            "demo",
            lambda v: (
                v["robustness"] == "healthy" and all(r["mode"] == "RW" for r in v["replicas"])
            ),
            "the replica to be rebuilt",
            timeout=180,
        )
        rid = next(r["id"] for r in v["replicas"] if r["node"] == victim)
        copied = _rebuilt_bytes(cluster, "node-1", "demo", rid)
        note(
            f"healthy again: {_replicas(v)}; the delta rebuild of {rid} copied "
            + (
                f"{human_size(copied)} of the {human_size(SIZE)} volume"
                if copied is not None
                else "(not reported by the engine)"
            )
        )

        say("8/14", "Checking every file's SHA-256 through a fresh mount, then e2fsck.")
        _check_files(dev, sums)
        note(f"all {len(sums)} files intact; e2fsck: clean")

        say("9/14", "Backing it up again: only what changed since the first backup is read.")
        last = _backup(api, "demo", "nfs")

        say("10/14", "Detaching; every replica ends at the same generation.")
        dev.detach()
        dev = None
        api.detach("demo")
        v = _wait(api, "demo", volume_detached, "the engine to stop")

        def agree(v: dict[str, Any]) -> bool:
            return v["state"] == "detached" and len({r["generation"] for r in v["replicas"]}) == 1

        # each node reports its replica's final generation (persisted when the engine
        # closed it) with its next heartbeat: within a heartbeat interval
        try:
            v = api.wait_volume("demo", agree, 15)
        except Exception:
            v = api.volume("demo")
        gens = {r["node"]: r["generation"] for r in v["replicas"]}
        note(f"generations: {gens}")
        if len(set(gens.values())) != 1:
            raise RuntimeError(f"replicas disagree after the rebuild: {gens}")

        say("11/14", "Losing the whole cluster: every process stopped, its directory deleted.")
        api.close()
        cluster.down(purge=True)
        clusters.remove(cluster)
        note(f"{cluster.dir} is gone: its CA, its manager's state, every replica of 'demo'")

        say("12/14", "A NEW cluster (new CA, new manager) is given the target and the saved key.")
        cluster = LocalCluster.create(os.path.join(root, "cluster-2"), nodes=3).up(timeout=90)
        clusters.append(cluster)
        api = ManagerClient(cluster.api)
        api.create_backup_target(
            "nfs", f"file://{repo}", base64.b64encode(read_key(key_file)).decode()
        )
        found = [b["id"] for b in api.backups(target="nfs")]
        note(f"the repository's catalog lists {len(found)} backups: {', '.join(found)}")
        if last["id"] not in found:
            raise RuntimeError(f"the new cluster does not see backup {last['id']}: {found}")

        say(
            "13/14", f"Restoring {last['id']} into a new volume 'restored', replicas built from it."
        )
        api.create_volume(
            "restored", int(last["size_bytes"]), replicas=3, source={"backup": last["id"]}
        )
        op = api.find_operation("restored", "restore")
        if op is not None:
            try:
                api.wait_operation(op["id"], 300)
            except Exception as e:
                raise RuntimeError(f"restoring {last['id']}: {e}") from None
        v = _wait(
            api,
            "restored",
            lambda v: v["state"] in ("detached", "failed"),
            "the restore",
            timeout=300,
        )
        if v["state"] == "failed":
            raise RuntimeError(f"restore of {last['id']} failed: {v.get('error')}")
        note(f"restored: {v['state']}, {_replicas(v)}")

        say("14/14", "Attaching it and checking every file's SHA-256 and e2fsck once more.")
        api.attach("restored", "node-1")
        v = _wait(
            api,
            "restored",
            lambda v: volume_attached(v) and volume_healthy(v),
            "the restored volume's engine to start",
        )
        dev = BlockDevice(v["endpoint"], os.path.join(root, "work-restored"))
        dev.attach()
        _check_files(dev, sums)
        note(f"all {len(sums)} files of the lost cluster intact in 'restored'; e2fsck: clean")
        dev.detach()
        dev = None
        note(f"done in {time.monotonic() - t0:.0f} s; stopping the new cluster")
    finally:
        if dev is not None:
            dev.detach()
        api.close()
        for c in clusters:
            c.down()
