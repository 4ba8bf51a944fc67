"""The CSI driver: Kubernetes talks to cargohold through it (``cargohold csi``).

Identity, Controller and Node services of CSI v1.12.0 over gRPC on a unix socket. The
Controller turns CSI calls into manager API calls (``cargohold.control.client``); the Node
service turns an attached volume's NBD export into a block device, a filesystem and mounts
(``mounter``). The mapping between CSI and cargohold is documented in docs/kubernetes.md.

The gRPC stubs are generated from ``proto/csi.proto`` at set-up into ``cargohold/csi/_gen``
(``python -m cargohold.csi.gen``); ``stubs()`` imports them or says how to make them.
"""

from __future__ import annotations

from types import ModuleType

DRIVER_NAME = "csi.cargohold.io"
TOPOLOGY_NODE = "topology.cargohold.io/node"
TOPOLOGY_ZONE = "topology.cargohold.io/zone"


class StubsMissing(ImportError):
    """The generated CSI stubs are not there (set-up did not run)."""


def stubs() -> tuple[ModuleType, ModuleType]:
    """``(csi_pb2, csi_pb2_grpc)``; StubsMissing with the command to run if not generated."""
    try:
        from cargohold.csi._gen import csi_pb2, csi_pb2_grpc
    except ImportError as e:
        raise StubsMissing(
            "the CSI gRPC stubs are not generated (cargohold/csi/_gen is missing or stale): "
            "run `scripts/setup.sh` or `.venv/bin/python -m cargohold.csi.gen` "
            f"({type(e).__name__}: {e})"
        ) from None
    return csi_pb2, csi_pb2_grpc
