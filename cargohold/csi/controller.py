"""The CSI Controller service: CSI calls → manager API calls (docs/control-plane.md).

Mapping (documented for users in docs/kubernetes.md):
- volume id = the manager volume's name, derived from the CO's request name
  (``parameters.volume_name``); CreateVolume of an existing name with compatible
  parameters returns it, with incompatible ones ALREADY_EXISTS.
- ControllerPublish(volume, node) = attach on that node, waiting until its engine runs;
  the publish context carries the engine's NBD URI (``endpoint``). Attached to another
  node → FAILED_PRECONDITION (the manager refuses while that node is up; when it is down,
  the attach takes the volume over and fences the old engine). MULTI_NODE_READER_ONLY
  publishes on more nodes read through the same engine; the publications are recorded
  (``publications.Publications``) so that an incompatible repeat is ALREADY_EXISTS and
  the engine is detached only when the last node unpublishes.
- snapshot id = ``VOLUME/SNAPSHOT``; a clone of a volume is the manager's clone without
  a snapshot (it takes one on the source).
- Every manager write is asynchronous: the RPC waits for it (``wait_*``) with a deadline;
  when the deadline passes the answer is DEADLINE_EXCEEDED and the CO retries, which
  finds the work done or under way (every RPC is idempotent).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cargohold.control.client import JSON, ManagerClient, OperationFailed
from cargohold.csi import TOPOLOGY_NODE, TOPOLOGY_ZONE, stubs
from cargohold.csi import parameters as P
from cargohold.csi.capacity import node_free, replicated
from cargohold.csi.errors import Code, CsiError, invalid, not_found, rpc
from cargohold.csi.locks import VolumeLocks
from cargohold.csi.publications import Publication, Publications
from cargohold.errors import NotFound, WrongState

pb, pb_grpc = stubs()
log = logging.getLogger("cargohold.csi.controller")

NO_ZONE = "default"  # the zone segment of nodes the manager knows no zone for
RPC = pb.ControllerServiceCapability.RPC
CAPABILITIES = (
    RPC.CREATE_DELETE_VOLUME,
    RPC.PUBLISH_UNPUBLISH_VOLUME,
    RPC.LIST_VOLUMES,
    RPC.GET_CAPACITY,
    RPC.CREATE_DELETE_SNAPSHOT,
    RPC.LIST_SNAPSHOTS,
    RPC.CLONE_VOLUME,
    RPC.PUBLISH_READONLY,
    RPC.EXPAND_VOLUME,
    RPC.LIST_VOLUMES_PUBLISHED_NODES,
    RPC.VOLUME_CONDITION,
    RPC.GET_VOLUME,
    RPC.SINGLE_NODE_MULTI_WRITER,
)


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


class Controller(pb_grpc.ControllerServicer):  # type: ignore[name-defined]  # generated, loaded at run time (stubs())
    def __init__(
        self,
        client: ManagerClient,
        locks: VolumeLocks | None = None,
        timeout: float = 120.0,
        publications: Publications | None = None,
    ) -> None:
        self.client = client
        self.locks = locks or VolumeLocks()
        self.timeout = timeout
        self.pubs = publications or Publications()

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
        if src and src.get("volume"):
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

    # --- volumes ---------------------------------------------------------------------------
    @rpc
    def CreateVolume(self, req: Any, context: Any) -> Any:
        name = P.volume_name(req.name)
        P.check_capabilities(req.volume_capabilities)
        params = P.VolumeParameters.parse(dict(req.parameters))
        block = any(c.WhichOneof("access_type") == "block" for c in req.volume_capabilities)
        for c in req.volume_capabilities:
            if c.WhichOneof("access_type") == "mount" and c.mount.fs_type:
                if c.mount.fs_type.lower() != params.fs_type and "fsType" in params.given:
                    raise invalid(
                        f"fs_type {c.mount.fs_type!r} of the capability contradicts the "
                        f"StorageClass parameter fsType={params.fs_type!r}"
                    )
        fs_type = next(
            (
                c.mount.fs_type.lower()
                for c in req.volume_capabilities
                if c.WhichOneof("access_type") == "mount" and c.mount.fs_type
            ),
            params.fs_type,
        )
        source, minimum, src_desc = self._source(req)
        cr = req.capacity_range
        size = P.size_for(cr.required_bytes, cr.limit_bytes, minimum)
        topology = self._topology(req)
        ctx = {"fsType": fs_type} if not block else {}
        with self.locks.hold(name, "CreateVolume"):
            try:
                vol = self.client.volume(name)
            except NotFound:
                vol = None
            if vol is not None:
                self._check_same(vol, req, params, source, src_desc)
            else:
                vol = self.client.create_volume(
                    name,
                    size,
                    replicas=params.replicas,
                    zone_spread=params.zone_spread,
                    node_tags=params.node_tags,
                    disk_tags=params.disk_tags,
                    reclaim_policy="Delete",  # Kubernetes' reclaimPolicy decides on deletion
                    stale_replica_timeout=params.stale_replica_timeout,
                    source=source,
                    preferred_nodes=self._preferred_nodes(req),
                )
                log.info("created volume %s (%d bytes) for %r", name, size, req.name)
            if vol.get("state") == "creating":
                vol = self._wait_clone(name)
        return pb.CreateVolumeResponse(volume=self._volume_msg(vol, ctx, topology))

    def _source(self, req: Any) -> tuple[JSON | None, int, str]:
        if not req.HasField("volume_content_source"):
            return None, 0, ""
        src = req.volume_content_source
        kind = src.WhichOneof("type")
        if kind == "snapshot":
            sid = src.snapshot.snapshot_id
            parts = P.split_snapshot_id(sid)
            if parts is None:
                raise not_found(f"snapshot {sid!r} does not exist (not a cargohold snapshot id)")
            vname, sname = parts
            vol = self._volume(vname)
            snaps = {s["name"]: s for s in self.client.snapshots(vname)}
            if sname not in snaps or snaps[sname].get("state") == "deleting":
                raise not_found(f"snapshot {sid} does not exist")
            if snaps[sname].get("state") != "ready":
                raise CsiError(
                    Code.FAILED_PRECONDITION,
                    f"snapshot {sid} is {snaps[sname].get('state')}, not ready",
                )
            return {"volume": vname, "snapshot": sname}, int(vol["size_bytes"]), f"snapshot {sid}"
        if kind == "volume":
            vid = src.volume.volume_id
            try:
                vol = self._volume(vid)
            except CsiError:
                raise not_found(f"source volume {vid} does not exist") from None
            return {"volume": vid}, int(vol["size_bytes"]), f"volume {vid}"
        raise invalid("volume_content_source names neither a snapshot nor a volume")

    def _check_same(
        self, vol: JSON, req: Any, params: P.VolumeParameters, source: JSON | None, what: str
    ) -> None:
        name = vol["name"]
        if vol.get("state") in ("deleting", "released"):
            raise CsiError(
                Code.ALREADY_EXISTS, f"volume {name} exists and is {vol['state']}; try later"
            )
        cr = req.capacity_range
        diffs = []
        if not P.fits(int(vol["size_bytes"]), cr.required_bytes, cr.limit_bytes):
            diffs.append(
                f"its size is {vol['size_bytes']} bytes, outside "
                f"[{cr.required_bytes}, {cr.limit_bytes or 'unlimited'}]"
            )
        if params.replicas is not None and vol.get("replicas_wanted") != params.replicas:
            diffs.append(f"it has {vol.get('replicas_wanted')} replicas, not {params.replicas}")
        if bool(vol.get("zone_spread", True)) != params.zone_spread:
            diffs.append(f"zoneSpread is {vol.get('zone_spread')}")
        if sorted(vol.get("node_tags") or []) != list(params.node_tags):
            diffs.append(f"its node tags are {vol.get('node_tags')}")
        if sorted(vol.get("disk_tags") or []) != list(params.disk_tags):
            diffs.append(f"its disk tags are {vol.get('disk_tags')}")
        have = vol.get("source") or None
        if (have or {}).get("volume") != (source or {}).get("volume") or (
            source
            and source.get("snapshot")
            and (have or {}).get("snapshot") != source.get("snapshot")
        ):
            diffs.append(f"its content source is {have or 'none'}, not {what or 'none'}")
        if diffs:
            raise CsiError(
                Code.ALREADY_EXISTS,
                f"volume {name} (for {req.name!r}) exists with other parameters: "
                + "; ".join(diffs),
            )

    def _wait_clone(self, name: str) -> JSON:
        try:
            return self.client.wait_volume(
                name,
                lambda v: v.get("state") != "creating" or "clone failed" in (v.get("error") or ""),
                self.timeout,
            )
        finally:
            vol = self.client.volume(name)
            if "clone failed" in (vol.get("error") or ""):
                raise CsiError(Code.INTERNAL, f"volume {name}: {vol['error']}")

    @rpc
    def DeleteVolume(self, req: Any, context: Any) -> Any:
        vid = req.volume_id
        if not vid:
            raise invalid("volume_id is required")
        if not P.valid_name(vid):
            return pb.DeleteVolumeResponse()
        with self.locks.hold(vid, "DeleteVolume"):
            try:
                vol = self.client.volume(vid)
            except NotFound:
                return pb.DeleteVolumeResponse()
            if vol.get("attached_node"):
                raise CsiError(
                    Code.FAILED_PRECONDITION,
                    f"volume {vid} is in use: attached to {vol['attached_node']}; "
                    "ControllerUnpublish it first",
                )
            if vol.get("state") != "deleting":
                try:
                    self.client.delete_volume(vid)
                except NotFound:
                    return pb.DeleteVolumeResponse()
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid}: {e}") from None
            self.client.wait_gone(vid, self.timeout)
        return pb.DeleteVolumeResponse()

    @rpc
    def ControllerPublishVolume(self, req: Any, context: Any) -> Any:
        if not req.node_id:
            raise invalid("node_id is required")
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        P.check_capabilities([req.volume_capability])
        vol = self._volume(req.volume_id)
        node = req.node_id
        try:
            self.client.node(node)
        except NotFound:
            raise not_found(f"node {node} is not a cargohold node") from None
        vid = vol["name"]
        cap = req.volume_capability
        want = Publication(
            readonly=req.readonly,
            access_mode=int(cap.access_mode.mode),
            access_type=str(cap.WhichOneof("access_type")),
        )
        with self.locks.hold(vid, "ControllerPublishVolume"):
            vol = self.client.volume(vid)
            owner = vol.get("attached_node")
            if not owner:
                self.pubs.forget(vid)  # nothing is attached: no publication stands
            prev = self.pubs.get(vid).get(node)
            if prev is not None and prev != want:
                raise CsiError(
                    Code.ALREADY_EXISTS,
                    f"volume {vid} is published on node {node} already with "
                    f"{_describe(prev)}, not {_describe(want)}",
                )
            if owner and owner != node:
                if req.readonly and P.is_multi_reader(cap):
                    # another reader: the owner's engine serves it over the network
                    pubs = self.pubs.get(vid)
                    first = pubs.get(owner)
                    if first is not None and first.access_mode != P.MULTI_NODE_READER_ONLY:
                        raise CsiError(
                            Code.FAILED_PRECONDITION,
                            f"volume {vid} is published on node {owner} with "
                            f"{_describe(first)}: readers may join only readers",
                        )
                    vol = self._wait_attached(vid, owner)
                    if not pubs:  # record lost (or attached outside CSI): the owner reads too
                        self.pubs.add(vid, owner, want)
                    self.pubs.add(vid, node, want)
                    return self._published(vol)
                try:
                    owner_down = self.client.node(owner).get("state") == "down"
                except NotFound:
                    owner_down = True
                if not owner_down:
                    raise CsiError(
                        Code.FAILED_PRECONDITION,
                        f"volume {vid} is published on node {owner}; a cargohold volume has "
                        "one writer: ControllerUnpublish it there first",
                    )
                log.info("volume %s: node %s is down; taking the volume over", vid, owner)
            if owner != node:
                try:
                    self.client.attach(vid, node)
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid}: {e}") from None
            vol = self._wait_attached(vid, node)
            # a writer (or a takeover) is the only publication; readers add up
            self.pubs.add(vid, node, want, only=not P.is_multi_reader(cap) or owner != node)
        return self._published(vol)

    def _published(self, vol: JSON) -> Any:
        return pb.ControllerPublishVolumeResponse(
            publish_context={
                "endpoint": vol["endpoint"],
                "epoch": str(vol.get("epoch", 0)),
                "node": str(vol.get("attached_node") or ""),
            }
        )

    def _wait_attached(self, vid: str, node: str) -> JSON:
        # "attached" on node: the manager's state, which holds only while the attach
        # engine runs on that node at the volume's epoch (Volume.attached)
        return self.client.wait_attached(vid, node, self.timeout)

    @rpc
    def ControllerUnpublishVolume(self, req: Any, context: Any) -> Any:
        vid = req.volume_id
        if not vid:
            raise invalid("volume_id is required")
        if not P.valid_name(vid):
            return pb.ControllerUnpublishVolumeResponse()
        with self.locks.hold(vid, "ControllerUnpublishVolume"):
            try:
                vol = self.client.volume(vid)
            except NotFound:
                self.pubs.forget(vid)
                return pb.ControllerUnpublishVolumeResponse()
            owner = vol.get("attached_node")
            if req.node_id:
                was = self.pubs.remove(vid, req.node_id)
                if not owner or self.pubs.get(vid):
                    # not attached, or other nodes still read through the engine
                    return self._unpublished(vid, owner)
                if owner != req.node_id and not was:
                    return pb.ControllerUnpublishVolumeResponse()  # published elsewhere
            else:
                self.pubs.forget(vid)  # no node: unpublish from every node
            if owner:
                self.client.detach(vid)
            return self._unpublished(vid, "")

    def _unpublished(self, vid: str, keep: str | None) -> Any:
        """Wait until the volume is detached, unless ``keep`` says it stays attached."""
        if not keep:
            self.client.wait_detached(vid, self.timeout)
        return pb.ControllerUnpublishVolumeResponse()

    def _published_nodes(self, vol: JSON) -> list[str]:
        """Where the volume is published: the recorded publications while it is attached,
        else (nothing recorded, e.g. attached by the CLI) the engine's node."""
        owner = vol.get("attached_node")
        if not owner:
            return []
        return sorted(self.pubs.get(vol["name"])) or [owner]

    @rpc
    def ValidateVolumeCapabilities(self, req: Any, context: Any) -> Any:
        vol = self._volume(req.volume_id)
        if not req.volume_capabilities:
            raise invalid("volume_capabilities are required")
        P.VolumeParameters.parse(dict(req.parameters))
        for cap in req.volume_capabilities:
            why = P.capability_problem(cap)
            if why:
                return pb.ValidateVolumeCapabilitiesResponse(message=why)
        confirmed = pb.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=dict(req.volume_context),
            volume_capabilities=list(req.volume_capabilities),
            parameters=dict(req.parameters),
        )
        del vol
        return pb.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @rpc
    def ListVolumes(self, req: Any, context: Any) -> Any:
        vols = sorted(
            (v for v in self.client.volumes() if v.get("state") not in ("deleting", "released")),
            key=lambda v: v["name"],
        )
        page, token = _page(vols, req.max_entries, req.starting_token)
        entries = []
        for v in page:
            status = pb.ListVolumesResponse.VolumeStatus(
                published_node_ids=self._published_nodes(v),
                volume_condition=condition(v),
            )
            entries.append(pb.ListVolumesResponse.Entry(volume=self._volume_msg(v), status=status))
        return pb.ListVolumesResponse(entries=entries, next_token=token)

    @rpc
    def ControllerGetVolume(self, req: Any, context: Any) -> Any:
        vol = self._volume(req.volume_id)
        status = pb.ControllerGetVolumeResponse.VolumeStatus(
            published_node_ids=self._published_nodes(vol),
            volume_condition=condition(vol),
        )
        return pb.ControllerGetVolumeResponse(volume=self._volume_msg(vol), status=status)

    @rpc
    def GetCapacity(self, req: Any, context: Any) -> Any:
        """What volumes of the class (its parameters: replicas, selectors) can still take,
        ``capacity.py`` explains the arithmetic. Every topology segment that names an up
        node gets the same answer (volumes are reachable from every node); one that
        names none gets 0."""
        params = P.VolumeParameters.parse(dict(req.parameters))
        for cap in req.volume_capabilities:
            why = P.capability_problem(cap)
            if why:
                raise invalid(why)
        seg = dict(req.accessible_topology.segments) if req.HasField("accessible_topology") else {}
        unknown = set(seg) - {TOPOLOGY_NODE, TOPOLOGY_ZONE}
        if unknown:
            raise invalid(
                f"unknown topology keys {sorted(unknown)}: cargohold knows "
                f"{TOPOLOGY_NODE} and {TOPOLOGY_ZONE}"
            )
        from google.protobuf.wrappers_pb2 import Int64Value

        nodes = self.client.nodes()
        reachable = any(
            n.get("state") == "up"
            and seg.get(TOPOLOGY_NODE, n["name"]) == n["name"]
            and seg.get(TOPOLOGY_ZONE, zone_of(n)) == zone_of(n)
            for n in nodes
        )
        if not reachable:
            return pb.GetCapacityResponse(
                available_capacity=0,
                maximum_volume_size=Int64Value(value=0),
                minimum_volume_size=Int64Value(value=P.BLOCK),
            )
        sizes = {v["name"]: int(v["size_bytes"]) for v in self.client.volumes()}
        free = node_free(
            nodes,
            self.client.disks(),
            self.client.replicas(),
            sizes,
            node_tags=params.node_tags,
            disk_tags=params.disk_tags,
        )
        got = replicated(free, params.replicas or P.DEFAULT_REPLICAS)
        return pb.GetCapacityResponse(
            available_capacity=got.available,
            maximum_volume_size=Int64Value(value=got.maximum),
            minimum_volume_size=Int64Value(value=P.BLOCK),
        )

    @rpc
    def ControllerGetCapabilities(self, req: Any, context: Any) -> Any:
        caps = [pb.ControllerServiceCapability(rpc=RPC(type=t)) for t in CAPABILITIES]
        return pb.ControllerGetCapabilitiesResponse(capabilities=caps)

    @rpc
    def ControllerExpandVolume(self, req: Any, context: Any) -> Any:
        vol = self._volume(req.volume_id)
        cr = req.capacity_range
        if not cr.required_bytes and not cr.limit_bytes:
            raise invalid("capacity_range is required")
        size = P.size_for(cr.required_bytes, cr.limit_bytes)
        block = (
            req.HasField("volume_capability")
            and req.volume_capability.WhichOneof("access_type") == "block"
        )
        vid = vol["name"]
        with self.locks.hold(vid, "ControllerExpandVolume"):
            vol = self.client.volume(vid)
            if int(vol["size_bytes"]) < size:
                try:
                    op = self.client.expand(vid, size)
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid}: {e}") from None
                self._wait_op(op)
                vol = self.client.volume(vid)
            elif cr.limit_bytes and int(vol["size_bytes"]) > cr.limit_bytes:
                raise CsiError(
                    Code.OUT_OF_RANGE,
                    f"volume {vid} is {vol['size_bytes']} bytes already, more than "
                    f"limit_bytes {cr.limit_bytes} (volumes only grow)",
                )
        return pb.ControllerExpandVolumeResponse(
            capacity_bytes=int(vol["size_bytes"]), node_expansion_required=not block
        )

    def _wait_op(self, op: JSON) -> JSON:
        try:
            return self.client.wait_operation(op["id"], self.timeout)
        except OperationFailed as e:
            raise CsiError(Code.INTERNAL, str(e)) from None

    # --- snapshots -------------------------------------------------------------------------
    def _snapshot_msg(self, vol: JSON, snap: JSON) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = Timestamp()
        ts.FromNanoseconds(int(float(snap.get("created_at") or time.time()) * 1e9))
        return pb.Snapshot(
            size_bytes=int(vol["size_bytes"]),
            snapshot_id=P.snapshot_id(vol["name"], snap["name"]),
            source_volume_id=vol["name"],
            creation_time=ts,
            ready_to_use=snap.get("state") == "ready",
        )

    @rpc
    def CreateSnapshot(self, req: Any, context: Any) -> Any:
        if not req.source_volume_id:
            raise invalid("source_volume_id is required")
        sname = P.snapshot_name(req.name)
        if req.parameters:
            raise invalid(
                f"cargohold snapshots take no parameters (got {', '.join(sorted(req.parameters))})"
            )
        vol = self._volume(req.source_volume_id)
        vid = vol["name"]
        with self.locks.hold(vid, "CreateSnapshot"):
            for other in self.client.volumes():
                if other["name"] == vid:
                    continue
                if other.get("state") in ("deleting",):
                    continue
                try:
                    names = {s["name"] for s in self.client.snapshots(other["name"])}
                except NotFound:
                    continue
                if sname in names:
                    raise CsiError(
                        Code.ALREADY_EXISTS,
                        f"snapshot {req.name!r} exists already, of volume {other['name']}",
                    )
            snaps = {s["name"]: s for s in self.client.snapshots(vid)}
            snap = snaps.get(sname)
            if snap is None or snap.get("state") == "error":
                if snap is not None:
                    self._wait_op(self.client.delete_snapshot(vid, sname))
                try:
                    op = self.client.create_snapshot(vid, sname)
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid}: {e}") from None
                self._wait_op(op)
            elif snap.get("state") == "pending":
                self.client.wait_operation(
                    self._pending_op(vid, "snapshot-create", sname), self.timeout
                )
            snap = {s["name"]: s for s in self.client.snapshots(vid)}[sname]
            vol = self.client.volume(vid)
        return pb.CreateSnapshotResponse(snapshot=self._snapshot_msg(vol, snap))

    def _pending_op(self, vid: str, kind: str, sname: str) -> str:
        for op in self.client.operations(vid):
            if op.get("kind") == kind and (op.get("args") or {}).get("name") == sname:
                if op.get("state") in ("pending", "running"):
                    return str(op["id"])
        raise CsiError(Code.ABORTED, f"snapshot {vid}/{sname} is pending; try again")

    @rpc
    def DeleteSnapshot(self, req: Any, context: Any) -> Any:
        if not req.snapshot_id:
            raise invalid("snapshot_id is required")
        parts = P.split_snapshot_id(req.snapshot_id)
        if parts is None:
            return pb.DeleteSnapshotResponse()
        vid, sname = parts
        with self.locks.hold(vid, "DeleteSnapshot"):
            try:
                snaps = {s["name"]: s for s in self.client.snapshots(vid)}
            except NotFound:
                return pb.DeleteSnapshotResponse()
            snap = snaps.get(sname)
            if snap is None:
                return pb.DeleteSnapshotResponse()
            if snap.get("state") == "pending":
                raise CsiError(Code.ABORTED, f"snapshot {req.snapshot_id} is still being taken")
            if snap.get("state") == "deleting":
                self.client.wait_operation(
                    self._pending_op(vid, "snapshot-delete", sname), self.timeout
                )
            else:
                try:
                    self._wait_op(self.client.delete_snapshot(vid, sname))
                except NotFound:
                    pass
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"{req.snapshot_id}: {e}") from None
        return pb.DeleteSnapshotResponse()

    @rpc
    def ListSnapshots(self, req: Any, context: Any) -> Any:
        pairs: list[tuple[JSON, JSON]] = []
        if req.snapshot_id:
            parts = P.split_snapshot_id(req.snapshot_id)
            vols = [parts[0]] if parts else []
        elif req.source_volume_id:
            vols = [req.source_volume_id] if P.valid_name(req.source_volume_id) else []
        else:
            vols = [v["name"] for v in self.client.volumes()]
        for vid in sorted(vols):
            try:
                vol = self.client.volume(vid)
                snaps = self.client.snapshots(vid)
            except NotFound:
                continue
            for s in sorted(snaps, key=lambda s: s["name"]):
                if s.get("state") in ("deleting", "error"):
                    continue
                if req.snapshot_id and P.snapshot_id(vid, s["name"]) != req.snapshot_id:
                    continue
                pairs.append((vol, s))
        page, token = _page(pairs, req.max_entries, req.starting_token)
        entries = [
            pb.ListSnapshotsResponse.Entry(snapshot=self._snapshot_msg(v, s)) for v, s in page
        ]
        return pb.ListSnapshotsResponse(entries=entries, next_token=token)


def _describe(p: Publication) -> str:
    mode = pb.VolumeCapability.AccessMode.Mode.Name(p.access_mode)
    return f"{'readonly' if p.readonly else 'read-write'} {p.access_type} {mode}"


def _page(items: list[Any], max_entries: int, token: str) -> tuple[list[Any], str]:
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
