"""The local cluster launcher: ``cargohold up`` / ``down`` / ``status`` and the node and
manager faults of ``cargohold node kill|start`` and the probe tests.

It starts the manager(s), etcd and node agents as processes (optionally each node in a
network namespace of its own) and records them in ``DIR/cluster.json``; it never imports
the data plane. ``LocalCluster`` is the whole public face.
"""

from __future__ import annotations

from cargohold.launcher.cluster import (
    ClusterRunning,
    LauncherError,
    LocalCluster,
    ManagerProc,
    NoCluster,
    NodeProc,
    default_dir,
    get_json,
    purge_dir,
)

__all__ = [
    "ClusterRunning",
    "LauncherError",
    "LocalCluster",
    "ManagerProc",
    "NoCluster",
    "NodeProc",
    "default_dir",
    "get_json",
    "purge_dir",
]
