"""The CSI driver's settings (``cargohold csi``; env ``CARGOHOLD_CSI_*``), in the one settings
style of cargohold (``cargohold/settings.py``). ``cli/csi_cmd.py`` gives its flags as
arguments (they win over the environment); ``csi.server.build`` takes the result."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cargohold.settings import Settings, setting

DEFAULT_STATE_DIR = "/var/lib/cargohold/csi"


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class CsiSettings(Settings):
    """The CSI driver, controller and/or node plugin (``cargohold csi``)."""

    env_prefix: ClassVar[str] = "CARGOHOLD_CSI_"
    component: ClassVar[str] = "CSI driver"

    endpoint: str = setting("", "gRPC endpoint unix:///PATH the CSI sidecars talk to (--endpoint)")
    node_id: str = setting("", "this node's name, the agent's --node (--node-id)")
    controller: bool = setting(False, "serve the Controller service (--controller)")
    node: bool = setting(False, "serve the Node service; needs root (--node)")
    state_dir: str = setting(
        DEFAULT_STATE_DIR, "the node service's records of staged volumes (--state-dir)"
    )
    max_volumes: int = setting(
        0,
        "volumes per node: NodeGetInfo's max_volumes_per_node (node plugin) and the limit "
        "ControllerPublish enforces (controller); give both the same, 0: no limit "
        "(--max-volumes)",
        ge=0,
    )
    zone: str | None = setting(
        None, "this node's zone for topology (--zone; none: what the manager knows)"
    )
    timeout: float = setting(
        120.0, "seconds an RPC waits for the manager to carry out a request (--timeout)", gt=0
    )
    workers: int = setting(16, "threads serving RPCs", ge=1)
    nbd_tls_dir: str = setting(
        "",
        "the node's credentials (its agent's certificate) for volumes whose engine serves "
        "NBD over TLS (nbds:// endpoints); unused for local endpoints (--nbd-tls-dir)",
    )
    no_kernel_nbd: str = setting(
        "",
        "any non-empty value: never use the kernel NBD client, always nbdfuse + a loop "
        "device (read by the node plugin's mounter at each attach)",
    )
    pvc_events: bool = setting(
        True,
        "controller plugin: post the manager's events of each volume as Kubernetes Events on "
        "its PVC (needs the provisioner's --extra-create-metadata and Kubernetes credentials: "
        "in-cluster, or $KUBECONFIG); off with --no-pvc-events",
    )
    pvc_events_interval: float = setting(
        5.0, "seconds between two reads of the manager's events for PVC events", gt=0
    )
