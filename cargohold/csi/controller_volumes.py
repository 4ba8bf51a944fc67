"""The volume RPCs of the CSI Controller service: create (empty, from a snapshot, as a
clone), delete, validate, list, get, capacity and expand (docs/kubernetes.md).

Each waits for the manager's asynchronous work with a deadline and is idempotent: a repeat
finds the work done or under way; a CreateVolume of an existing name with other
parameters is ALREADY_EXISTS.
"""

from __future__ import annotations

import logging
from typing import Any

from cargohold.control.client import JSON
from cargohold.csi import TOPOLOGY_NODE, TOPOLOGY_ZONE, stubs
from cargohold.csi import parameters as P
from cargohold.csi.capacity import node_free, replicated
from cargohold.csi.controller_backups import BackupSnapshots
from cargohold.csi.controller_base import condition, one_page, zone_of
from cargohold.csi.controller_modify import mutable_qos
from cargohold.csi.errors import Code, CsiError, invalid, not_found, rpc
from cargohold.errors import NotFound, WrongState

pb, pb_grpc = stubs()
log = logging.getLogger("cargohold.csi.controller")


class VolumeRpcs(BackupSnapshots):
    """CreateVolume … ControllerExpandVolume (a part of ``Controller``)."""

    @rpc
    def CreateVolume(self, req: Any, context: Any) -> Any:
        name = P.volume_name(req.name)
        P.check_capabilities(req.volume_capabilities)
        params = P.VolumeParameters.parse(dict(req.parameters))
        # QoS limits: the StorageClass's, and a VolumeAttributesClass's (mutable) over them
        qos = {**params.qos, **mutable_qos(req.mutable_parameters)}
        qos = {k: v for k, v in qos.items() if v is not None}
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
        fs_min = 0 if block else P.fs_minimum(fs_type, cr.limit_bytes)
        size = P.size_for(cr.required_bytes, cr.limit_bytes, max(minimum, fs_min))
        topology = self._topology(req)
        ctx = {"fsType": fs_type} if not block else {}
        with self.locks.hold(name, "CreateVolume"):
            try:
                vol = self.client.volume(name)
            except NotFound:
                vol = None
            if vol is not None:
                self._check_same(vol, req, params, source, src_desc)
            elif params.standby_target:  # a disaster-recovery standby: attachable once active
                if source is not None:
                    raise invalid("a standby volume takes no volume_content_source")
                vol = self.client.create_standby(
                    name,
                    params.standby_target,
                    params.standby_source,
                    size_bytes=size,
                    replicas=params.replicas,
                    labels=params.labels or None,
                )
                log.info("created standby %s of %s for %r", name, params.standby_source, req.name)
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
                    labels=params.labels or None,
                    qos=qos or None,
                    encrypted=params.encrypted or None,
                    key=params.key,
                    kms_key=params.kms_key,
                )
                log.info("created volume %s (%d bytes) for %r", name, size, req.name)
            if vol.get("state") == "creating":
                vol = self._wait_clone(name)
            elif vol.get("state") in ("restoring", "failed"):
                vol = self._wait_restore(name)
        return pb.CreateVolumeResponse(volume=self._volume_msg(vol, ctx, topology))

    def _source(self, req: Any) -> tuple[JSON | None, int, str]:
        if not req.HasField("volume_content_source"):
            return None, 0, ""
        src = req.volume_content_source
        kind = src.WhichOneof("type")
        if kind == "snapshot":
            sid = src.snapshot.snapshot_id
            backup = P.split_backup_snapshot_id(sid)
            if backup is not None:
                return self._backup_source(sid, backup[1])
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
        if params.encrypted and not vol.get("encryption"):
            diffs.append("it is not encrypted")
        have = vol.get("source") or None
        if (have or {}).get("backup") != (source or {}).get("backup"):
            diffs.append(f"its content source is {have or 'none'}, not {what or 'none'}")
        elif (have or {}).get("volume") != (source or {}).get("volume") or (
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

    def _wait_restore(self, name: str) -> JSON:
        """Wait until the restore into ``name`` is done; INTERNAL when it failed (the volume
        is never usable then: it is deleted, and the CO's retry restores again)."""
        vol = self.client.wait_volume(
            name, lambda v: v.get("state") not in ("restoring", "creating"), self.timeout
        )
        if vol.get("state") == "failed":
            why = vol.get("error") or "restore failed: no reason given"
            try:  # never handed to the CO: removed, so that its retry restores anew
                self.client.delete_volume(name)
            except (NotFound, WrongState):
                pass
            raise CsiError(
                Code.INTERNAL,
                f"volume {name}: {why} (the volume is being deleted; the next "
                "CreateVolume restores again)",
            )
        return vol

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
        page, token = one_page(vols, req.max_entries, req.starting_token)
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
