"""What every RPC of the CSI Controller service shares (``controller.py`` composes them).

``ControllerBase`` holds the manager client, the per-volume locks, the deadline and the
recorded publications, and the lookups every RPC makes: a volume by its CSI id (NOT_FOUND
for what is not, or no longer, a cargohold volume), a manager volume as a CSI ``Volume``,
the topology of a new volume, where a volume is published, waiting for an operation.
``zone_of`` and ``condition`` turn manager JSON into CSI terms for the Node service too.
"""

from __future__ import annotations

import threading
from typing import Any

from cargohold.control.client import JSON, ManagerClient, OperationFailed
from cargohold.csi import TOPOLOGY_NODE, TOPOLOGY_ZONE, stubs
from cargohold.csi import parameters as P
from cargohold.csi.errors import Code, CsiError, invalid, not_found
from cargohold.csi.locks import VolumeLocks
from cargohold.csi.publications import Publications
from cargohold.errors import NotFound

pb, pb_grpc = stubs()

NO_ZONE = "default"  # the zone segment of nodes the manager knows no zone for


def zone_of(node: JSON) -> str:
    return str(node.get("zone") or NO_ZONE)


def condition(vol: JSON) -> Any:
    """VolumeCondition: abnormal while degraded or faulted, the message says why."""
    robustness = vol.get("robustness")
    reps = vol.get("replicas") or []
    ok = sum(1 for r in reps if r.get("state") == "running")
    wanted = vol.get("replicas_wanted", len(reps))
    parts = []
    if robustness in ("degraded", "faulted"):
        bad = [
            f"{r.get('id')} on {r.get('node')}: {r.get('state')}"
            + (f" ({r['error']})" if r.get("error") else "")
            for r in reps
            if r.get("state") != "running"
        ]
        parts.append(f"volume {robustness}: {ok} of {wanted} replicas current")
        if bad:
            parts.append("; ".join(bad))
    if vol.get("error"):
        parts.append(str(vol["error"]))
    abnormal = robustness in ("degraded", "faulted")
    message = ". ".join(parts) if parts else f"{robustness}, {len(reps)} replicas"
    return pb.VolumeCondition(abnormal=abnormal, message=message)


class ControllerBase:
    """The state and the lookups of the CSI Controller service's RPCs."""

    def __init__(
        self,
        client: ManagerClient,
        locks: VolumeLocks | None = None,
        timeout: float = 120.0,
        publications: Publications | None = None,
        max_volumes: int = 0,
    ) -> None:
        self.client = client
        self.locks = locks or VolumeLocks()
        self.timeout = timeout
        self.pubs = publications or Publications()
        self.max_volumes = max_volumes  # per node, 0: no limit (controller_publish.py)
        self._slots_mu = threading.Lock()
        self._pending: dict[str, set[str]] = {}  # node → volumes being published there

    # --- helpers ---------------------------------------------------------------------------
    def _volume(self, vid: str) -> JSON:
        if not vid:
            raise invalid("volume_id is required")
        if not P.valid_name(vid):
            raise not_found(f"volume {vid!r} does not exist (not a cargohold volume id)")
        try:
            vol = self.client.volume(vid)
        except NotFound:
            raise not_found(f"volume {vid} does not exist") from None
        if vol.get("state") in ("deleting", "released"):
            raise not_found(f"volume {vid} is {vol['state']}")
        return vol

    def _volume_msg(
        self, vol: JSON, context: dict[str, str] | None = None, topology: list[Any] | None = None
    ) -> Any:
        msg = pb.Volume(
            capacity_bytes=int(vol["size_bytes"]),
            volume_id=vol["name"],
            volume_context=context or {},
            accessible_topology=topology or [],
        )
        src = vol.get("source") or None
        if src and src.get("backup"):
            msg.content_source.snapshot.snapshot_id = P.backup_snapshot_id(
                str(src.get("target") or ""), src["backup"]
            )
        elif src and src.get("volume"):
            snap = str(src.get("snapshot") or "")
            if snap and not snap.startswith("clone-"):
                msg.content_source.snapshot.snapshot_id = P.snapshot_id(src["volume"], snap)
            else:
                msg.content_source.volume.volume_id = src["volume"]
        return msg

    def _topology(self, req: Any) -> list[Any]:
        """The topologies to report for a new volume: the requisite (else preferred) ones
        that name an up node or a zone with one. Volumes are reachable over the network
        from every node, so each of them can reach it. RESOURCE_EXHAUSTED when none
        exists. [] when the request has no requirement (accessible from everywhere)."""
        if not req.HasField("accessibility_requirements"):
            return []
        ar = req.accessibility_requirements
        wanted = list(ar.requisite) or list(ar.preferred)
        if not wanted:
            return []
        nodes = [n for n in self.client.nodes() if n.get("state") == "up"]
        out = []
        for topo in wanted:
            seg = dict(topo.segments)
            unknown = set(seg) - {TOPOLOGY_NODE, TOPOLOGY_ZONE}
            if unknown:
                raise invalid(
                    f"unknown topology keys {sorted(unknown)}: cargohold knows "
                    f"{TOPOLOGY_NODE} and {TOPOLOGY_ZONE}"
                )
            if any(
                seg.get(TOPOLOGY_NODE, n["name"]) == n["name"]
                and seg.get(TOPOLOGY_ZONE, zone_of(n)) == zone_of(n)
                for n in nodes
            ):
                out.append(pb.Topology(segments=seg))
        if not out:
            raise CsiError(
                Code.RESOURCE_EXHAUSTED,
                "no up node matches the accessibility requirements "
                f"({[dict(t.segments) for t in wanted]})",
            )
        return out

    def _preferred_nodes(self, req: Any) -> list[str]:
        """The nodes the CO prefers, in its order (with WaitForFirstConsumer the first is
        where the pod will run): the first replica goes there, so the engine reads locally."""
        if not req.HasField("accessibility_requirements"):
            return []
        ar = req.accessibility_requirements
        out = []
        for topo in [*ar.preferred, *ar.requisite]:
            node = dict(topo.segments).get(TOPOLOGY_NODE)
            if node and node not in out:
                out.append(node)
        return out

    def _published_nodes(self, vol: JSON) -> list[str]:
        """Where the volume is published: the recorded publications while it is attached,
        else (nothing recorded, e.g. attached by the CLI) the engine's node."""
        owner = vol.get("attached_node")
        if not owner:
            return []
        return sorted(self.pubs.get(vol["name"])) or [owner]

    def _wait_op(self, op: JSON) -> JSON:
        try:
            return self.client.wait_operation(op["id"], self.timeout)
        except OperationFailed as e:
            raise CsiError(Code.INTERNAL, str(e)) from None


def one_page(items: list[Any], max_entries: int, token: str) -> tuple[list[Any], str]:
    """One page: ``token`` is the index of its first item ("" = 0). ABORTED for a token
    that is not one we gave (the spec's code for an invalid starting_token)."""
    if max_entries < 0:
        raise invalid(f"max_entries must not be negative, got {max_entries}")
    start = 0
    if token:
        if not token.isdigit() or int(token) > len(items):
            raise CsiError(Code.ABORTED, f"starting_token {token!r} is not valid")
        start = int(token)
    end = len(items) if not max_entries else min(len(items), start + max_entries)
    return items[start:end], (str(end) if end < len(items) else "")
