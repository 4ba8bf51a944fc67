"""The gRPC server of ``cargohold csi``: Identity always, Controller and/or Node as asked,
on a unix socket (``unix:///PATH``). Synchronous gRPC on a thread pool: the manager client
is synchronous, and slow calls (waiting for an attach) block only their own thread.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from typing import Any

import grpc

from cargohold.control.client import ManagerClient
from cargohold.csi import stubs
from cargohold.csi.controller import Controller
from cargohold.csi.group_controller import GroupController
from cargohold.csi.identity import Identity
from cargohold.csi.locks import VolumeLocks
from cargohold.csi.node import Node
from cargohold.csi.publications import Publications
from cargohold.csi.pvc_events import PvcEvents
from cargohold.csi.settings import CsiSettings
from cargohold.csi.snapshot_metadata import SnapshotMetadata
from cargohold.errors import ConfigError

log = logging.getLogger("cargohold.csi")


DriverConfig = CsiSettings  # the name build()'s callers know


def socket_path(endpoint: str) -> str:
    """The file of a ``unix:///PATH`` (or ``unix:/PATH``) endpoint."""
    if not endpoint.startswith("unix:"):
        raise ConfigError(f"--endpoint {endpoint!r}: expected unix:///PATH")
    path = endpoint.removeprefix("unix:")
    if path.startswith("//"):
        path = path[2:]
    if not path.startswith("/"):
        raise ConfigError(f"--endpoint {endpoint!r}: the socket path must be absolute")
    return path


def build(config: CsiSettings, client: ManagerClient) -> grpc.Server:
    """A started server for ``config``; stop it with ``server.stop(grace)``."""
    _, pb_grpc = stubs()
    if not (config.controller or config.node):
        raise ConfigError("give --controller, --node or both")
    path = socket_path(config.endpoint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # a socket left by an earlier run
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers))
    locks = VolumeLocks()
    pb_grpc.add_IdentityServicer_to_server(Identity(client), server)
    if config.controller:
        pubs = Publications(os.path.join(config.state_dir, "controller"))
        ctl = Controller(
            client,
            locks,
            timeout=config.timeout,
            publications=pubs,
            max_volumes=config.max_volumes,
        )
        pb_grpc.add_ControllerServicer_to_server(ctl, server)
        pb_grpc.add_GroupControllerServicer_to_server(
            GroupController(client, config.timeout), server
        )
        pb_grpc.add_SnapshotMetadataServicer_to_server(
            SnapshotMetadata(client, config.timeout), server
        )
    if config.node:
        node = Node(
            client,
            config.node_id,
            config.state_dir,
            locks,
            max_volumes=config.max_volumes,
            zone=config.zone,
            nbd_tls_dir=config.nbd_tls_dir,
        )
        pb_grpc.add_NodeServicer_to_server(node, server)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    if config.controller and config.pvc_events:
        _start_pvc_events(config, client, server)
    services = ["identity"] + ["controller"] * config.controller + ["node"] * config.node
    log.info("csi driver serving %s on %s (node %s)", "+".join(services), path, config.node_id)
    return server


def _start_pvc_events(config: CsiSettings, client: ManagerClient, server: grpc.Server) -> None:
    """The PVC events loop in a daemon thread, stopped with the server; without Kubernetes
    credentials it says so once and stays off (csi/pvc_events.py)."""
    try:
        from cargohold.csi.kube_events import KubeEventSink

        sink = KubeEventSink.connect()
    except ConfigError as e:
        log.info("PVC events off: %s", e)
        return
    loop = PvcEvents(client, sink, instance=config.node_id, interval=config.pvc_events_interval)
    stop = threading.Event()
    threading.Thread(target=loop.run, args=(stop,), name="pvc-events", daemon=True).start()
    stop_server = server.stop

    def stop_both(grace: float | None) -> Any:
        stop.set()
        return stop_server(grace)

    server.stop = stop_both  # type: ignore[method-assign]
    log.info("posting volume events on their PVCs every %.0f s", config.pvc_events_interval)
