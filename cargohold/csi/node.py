"""The CSI Node service: stage (NBD export → block device → filesystem → mount at the
staging path), publish (bind mounts; raw block too), expand, stats, and clean teardown.

Runs on every node (``cargohold csi --node``), as root. The engine's NBD URI comes in the
publish context from ControllerPublish (``endpoint``). What was staged is recorded by
``mounter.Attachment`` in the state directory, so unstage works after a plugin restart.

- Reader-only access modes (ROX, SINGLE_NODE_READER_ONLY) attach read-only and mount
  ``ro,noload`` (ext4) or ``ro,norecovery`` (xfs): a reader never writes, not even a
  journal replay.
- A read-only raw block publish is a read-only loop device of its own; a read-only
  filesystem publish is a read-only bind mount.
- NodeExpandVolume grows the device in place (``Attachment.grow``) and then the mounted
  filesystem (resize2fs, xfs_growfs), while the volume is published and in use.
- VOLUME_MOUNT_GROUP: the pod's fsGroup is applied at publish (``mounter.apply_group``).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from cargohold.control.client import ManagerClient
from cargohold.csi import TOPOLOGY_NODE, TOPOLOGY_ZONE, stubs
from cargohold.csi import parameters as P
from cargohold.csi.adoption import adopt
from cargohold.csi.controller_base import condition, zone_of
from cargohold.csi.errors import Code, CsiError, invalid, not_found, rpc
from cargohold.csi.locks import VolumeLocks
from cargohold.csi.mounter import (
    Attachment,
    MountError,
    apply_group,
    device_size,
    ensure_dir,
    ensure_file,
    ext4_size,
    fs_type_of,
    grow_ext4_offline,
    grow_fs,
    is_mounted,
    mkfs,
    mount_options,
    run,
    umount,
)
from cargohold.csi.settings import CsiSettings
from cargohold.errors import CargoholdError, ConfigError
from cargohold.security.x509_dir import lay_out

pb, pb_grpc = stubs()
log = logging.getLogger("cargohold.csi.node")

NRPC = pb.NodeServiceCapability.RPC
NODE_CAPABILITIES = (
    NRPC.STAGE_UNSTAGE_VOLUME,
    NRPC.EXPAND_VOLUME,
    NRPC.GET_VOLUME_STATS,
    NRPC.VOLUME_CONDITION,
    NRPC.SINGLE_NODE_MULTI_WRITER,
    NRPC.VOLUME_MOUNT_GROUP,
)


def _mode(cap: Any) -> str:
    return "block" if cap.WhichOneof("access_type") == "block" else "mount"


def _mode_name(cap: Any) -> str:
    return str(pb.VolumeCapability.AccessMode.Mode.Name(cap.access_mode.mode))


def stage_options(fs: str, read_only: bool, flags: list[str] | None = None) -> list[str]:
    """The options a staged filesystem is mounted with (at NodeStage and at the remount
    after an offline grow). A reader never writes, not even a journal replay: ``ro,noload``
    (ext4), ``ro,norecovery`` (xfs). xfs always gets ``nouuid``: a clone or a restored
    snapshot carries its source's filesystem UUID, and xfs refuses to mount a second
    filesystem with a UUID already mounted ("Filesystem has duplicate UUID"), so without
    it a clone could not be staged on the node where its source is. Giving the clone a
    new UUID instead (xfs_admin -U generate) would write to it on its first stage and
    needs a clean log, which a crash-consistent snapshot of a mounted xfs has not."""
    out = list(flags or [])
    if read_only:
        out += ["ro", "noload"] if fs == "ext4" else ["ro", "norecovery"]
    if fs == "xfs" and "nouuid" not in out:
        out.append("nouuid")
    return out


class Node(pb_grpc.NodeServicer):  # type: ignore[name-defined]  # generated, loaded at run time (stubs())
    def __init__(
        self,
        client: ManagerClient,
        node_id: str,
        state_dir: str,
        locks: VolumeLocks | None = None,
        max_volumes: int = 0,
        zone: str | None = None,
        nbd_tls_dir: str = "",
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.state_dir = state_dir
        self.locks = locks or VolumeLocks()
        self.max_volumes = max_volumes
        self.zone = zone
        self.nbd_tls_dir = nbd_tls_dir  # credentials for nbds:// endpoints (NBD over TLS)
        os.makedirs(state_dir, exist_ok=True)
        self.adopted = self._adopt()

    def _adopt(self) -> dict[str, str]:
        """Take over the attachments a previous node plugin left (adoption.adopt): an
        upgrade or a crash of the plugin does not stop a volume's I/O on this node."""
        found = adopt(self.state_dir)
        for vid, problem in found.items():
            if problem:
                log.warning(
                    "volume %s: the attachment recorded here is broken (%s); it reports "
                    "abnormal until it is unstaged and staged again",
                    vid,
                    problem,
                )
            else:
                log.info("volume %s: adopted the attachment a previous plugin made", vid)
        return found

    # --- helpers ---------------------------------------------------------------------------
    def _x509_dir(self, volume: str, endpoint: str) -> str:
        """For an ``nbds://`` endpoint (NBD over TLS): the node's credentials laid out in
        the names nbdfuse and nbdinfo read (``security.x509_dir``); "" for a local one."""
        if not endpoint.startswith("nbds://"):
            return ""
        if not self.nbd_tls_dir:
            raise CsiError(
                Code.FAILED_PRECONDITION,
                f"volume {volume} is served over NBD with TLS ({endpoint}): give the node "
                f"plugin this node's credentials ({CsiSettings.variable('nbd_tls_dir')})",
            )
        try:
            return str(lay_out(self.nbd_tls_dir, os.path.join(self.state_dir, "x509")))
        except ConfigError as e:
            raise CsiError(Code.FAILED_PRECONDITION, str(e)) from None

    def _work(self, volume: str) -> str:
        return os.path.join(self.state_dir, volume)

    def _teardown(self, rec: Attachment) -> None:
        for t in list(rec.targets):
            umount(t)
            rec.drop_ro_loop(t)
        if rec.mode == "mount" and rec.staging_path:
            umount(rec.staging_path)
        rec.detach()
        rec.forget(self.state_dir)
        shutil.rmtree(rec.work, ignore_errors=True)

    def _mount(self, rec: Attachment, cap: Any, fs_default: str) -> None:
        dev = rec.device
        fs = fs_type_of(dev)
        want = (cap.mount.fs_type or fs_default or P.DEFAULT_FS).lower()
        if not fs:
            if rec.read_only:
                raise CsiError(
                    Code.FAILED_PRECONDITION,
                    f"volume {rec.volume} has no filesystem and is staged read-only "
                    f"({_mode_name(cap)}): make it from a snapshot or a volume with data",
                )
            log.info("making %s on %s (volume %s)", want, dev, rec.volume)
            mkfs(dev, want)
            fs = want
        elif fs not in P.FS_TYPES:
            raise CsiError(
                Code.FAILED_PRECONDITION,
                f"volume {rec.volume} holds a {fs} filesystem; cargohold mounts ext4 or xfs",
            )
        if fs == "ext4" and not rec.read_only:
            grow_ext4_offline(dev)  # a volume grown while it was not staged here
        ensure_dir(rec.staging_path)
        opts = ",".join(stage_options(fs, rec.read_only, list(cap.mount.mount_flags)))
        run("mount", "-t", fs, *(["-o", opts] if opts else []), dev, rec.staging_path)
        rec.fs_type = fs
        if fs == "xfs" and not rec.read_only:
            grow_fs(dev, rec.staging_path, fs)

    # --- stage -----------------------------------------------------------------------------
    @rpc
    def NodeStageVolume(self, req: Any, context: Any) -> Any:
        vid, staging = req.volume_id, req.staging_target_path
        if not vid:
            raise invalid("volume_id is required")
        if not staging:
            raise invalid("staging_target_path is required")
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        P.check_capabilities([req.volume_capability])
        endpoint = req.publish_context.get("endpoint", "")
        if not endpoint.startswith(("nbd://", "nbds://")):
            raise invalid(
                f"publish_context has no nbd:// endpoint for volume {vid} (got {endpoint!r}): "
                "ControllerPublishVolume must run first"
            )
        tls_dir = self._x509_dir(vid, endpoint)
        mode = _mode(req.volume_capability)
        with self.locks.hold(vid, "NodeStageVolume"):
            rec = Attachment.load(self.state_dir, vid)
            if rec is not None:
                if rec.staging_path == staging and rec.endpoint == endpoint and rec.alive():
                    if rec.mode != mode:
                        raise CsiError(
                            Code.ALREADY_EXISTS,
                            f"volume {vid} is staged at {staging} as {rec.mode}, not {mode}",
                        )
                    if mode == "block" or is_mounted(staging):
                        return pb.NodeStageVolumeResponse()
                    self._mount(rec, req.volume_capability, req.volume_context.get("fsType", ""))
                    rec.save(self.state_dir)
                    return pb.NodeStageVolumeResponse()
                if rec.staging_path != staging and rec.alive() and rec.endpoint == endpoint:
                    raise CsiError(
                        Code.FAILED_PRECONDITION,
                        f"volume {vid} is staged at {rec.staging_path} already",
                    )
                log.info("volume %s: replacing a stale attachment (%s)", vid, rec.endpoint)
                self._teardown(rec)
            rec = Attachment(
                volume=vid,
                endpoint=endpoint,
                work=self._work(vid),
                staging_path=staging,
                mode=mode,
                read_only=P.is_reader_only(req.volume_capability),
                tls_dir=tls_dir,
            )
            os.makedirs(rec.work, exist_ok=True)
            try:
                rec.save(self.state_dir)
                rec.attach()
                rec.save(self.state_dir)
                if mode == "mount":
                    self._mount(rec, req.volume_capability, req.volume_context.get("fsType", ""))
                else:
                    ensure_dir(staging)
                rec.save(self.state_dir)
            except BaseException:
                try:
                    self._teardown(rec)
                except CargoholdError as e:
                    log.error("volume %s: cleaning up after a failed stage: %s", vid, e)
                raise
            log.info("staged volume %s on %s at %s (%s)", vid, rec.device, staging, mode)
        return pb.NodeStageVolumeResponse()

    @rpc
    def NodeUnstageVolume(self, req: Any, context: Any) -> Any:
        vid, staging = req.volume_id, req.staging_target_path
        if not vid:
            raise invalid("volume_id is required")
        if not staging:
            raise invalid("staging_target_path is required")
        with self.locks.hold(vid, "NodeUnstageVolume"):
            rec = Attachment.load(self.state_dir, vid)
            if rec is None:
                umount(staging)  # not ours on record: leave nothing mounted there anyway
                return pb.NodeUnstageVolumeResponse()
            if rec.targets:
                raise CsiError(
                    Code.FAILED_PRECONDITION,
                    f"volume {vid} is still published at {', '.join(rec.targets)}",
                )
            self._teardown(rec)
            log.info("unstaged volume %s from %s", vid, staging)
        return pb.NodeUnstageVolumeResponse()

    # --- publish ---------------------------------------------------------------------------
    @rpc
    def NodePublishVolume(self, req: Any, context: Any) -> Any:
        vid, target, staging = req.volume_id, req.target_path, req.staging_target_path
        if not vid:
            raise invalid("volume_id is required")
        if not target:
            raise invalid("target_path is required")
        if not staging:
            raise invalid("staging_target_path is required (the driver stages volumes)")
        if not req.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        P.check_capabilities([req.volume_capability])
        mode = _mode(req.volume_capability)
        with self.locks.hold(vid, "NodePublishVolume"):
            rec = Attachment.load(self.state_dir, vid)
            if rec is None or rec.staging_path != staging:
                raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid} is not staged at {staging}")
            if rec.mode != mode:
                raise CsiError(
                    Code.ALREADY_EXISTS,
                    f"volume {vid} is staged as {rec.mode}; it cannot be published as {mode}",
                )
            if is_mounted(target):
                ro = "ro" in mount_options(target)
                if ro != (req.readonly or rec.read_only):
                    raise CsiError(
                        Code.ALREADY_EXISTS,
                        f"volume {vid} is published at {target} {'read-only' if ro else 'read-write'}",
                    )
                if target not in rec.targets:
                    rec.targets.append(target)
                    rec.save(self.state_dir)
                return pb.NodePublishVolumeResponse()
            readonly = req.readonly or rec.read_only
            if mode == "block":
                ensure_file(target)
                source = rec.device
                if readonly:  # a device of its own that refuses writes, not just a ro bind
                    source = rec.add_ro_loop(target)
                    rec.save(self.state_dir)
            else:
                ensure_dir(target)
                source = staging
                group = req.volume_capability.mount.volume_mount_group
                if group:
                    if not group.isdigit():
                        raise invalid(f"volume_mount_group {group!r} is not a numeric group id")
                    if not readonly:  # as kubelet: no ownership change on read-only volumes
                        apply_group(staging, int(group))
            try:
                run("mount", "--bind", source, target)
                if readonly:
                    run("mount", "-o", "remount,bind,ro", target)
            except BaseException:
                umount(target)
                rec.drop_ro_loop(target)
                rec.save(self.state_dir)
                raise
            rec.targets.append(target)
            rec.save(self.state_dir)
        return pb.NodePublishVolumeResponse()

    @rpc
    def NodeUnpublishVolume(self, req: Any, context: Any) -> Any:
        vid, target = req.volume_id, req.target_path
        if not vid:
            raise invalid("volume_id is required")
        if not target:
            raise invalid("target_path is required")
        with self.locks.hold(vid, "NodeUnpublishVolume"):
            umount(target)
            if os.path.isdir(target) and not os.path.islink(target):
                os.rmdir(target)
            elif os.path.lexists(target):
                os.unlink(target)
            rec = Attachment.load(self.state_dir, vid)
            if rec is not None and (target in rec.targets or target in rec.ro_loops):
                rec.drop_ro_loop(target)
                if target in rec.targets:
                    rec.targets.remove(target)
                rec.save(self.state_dir)
        return pb.NodeUnpublishVolumeResponse()

    # --- stats, expansion, info ------------------------------------------------------------
    @rpc
    def NodeGetVolumeStats(self, req: Any, context: Any) -> Any:
        vid, path = req.volume_id, req.volume_path
        if not vid:
            raise invalid("volume_id is required")
        if not path:
            raise invalid("volume_path is required")
        rec = Attachment.load(self.state_dir, vid)
        if rec is None or not os.path.exists(path):
            raise not_found(f"volume {vid} is not staged or published at {path} on this node")
        cond = self._condition(rec)
        U = pb.VolumeUsage
        if rec.mode == "block":
            size = device_size(path if not os.path.isdir(path) else rec.device)
            return pb.NodeGetVolumeStatsResponse(
                usage=[U(total=size, unit=U.BYTES)], volume_condition=cond
            )
        st = os.statvfs(path)
        usage = [
            U(
                total=st.f_blocks * st.f_frsize,
                available=st.f_bavail * st.f_frsize,
                used=(st.f_blocks - st.f_bfree) * st.f_frsize,
                unit=U.BYTES,
            ),
            U(
                total=st.f_files,
                available=st.f_favail,
                used=st.f_files - st.f_ffree,
                unit=U.INODES,
            ),
        ]
        return pb.NodeGetVolumeStatsResponse(usage=usage, volume_condition=cond)

    def _condition(self, rec: Attachment) -> Any:
        if not rec.alive():
            return pb.VolumeCondition(
                abnormal=True,
                message=f"the block device of volume {rec.volume} is gone "
                f"({rec.kind} to {rec.endpoint}); unstage and stage it again",
            )
        try:
            vol = self.client.volume(rec.volume)
        except CargoholdError as e:
            return pb.VolumeCondition(abnormal=False, message=f"device up; manager: {e}")
        return condition(vol)

    @rpc
    def NodeExpandVolume(self, req: Any, context: Any) -> Any:
        """Grow the device in place, then the filesystem, while the volume is published
        (kubelet passes the publish path) or only staged. Online on every attachment made
        by this version: kernel NBD (NBD_SET_SIZE) and nbdfuse + loop (the loop's size
        limit over the growable export). An attachment on a fixed-size export (made by an
        older plugin) grows only while unpublished, by reconnecting."""
        vid, path = req.volume_id, req.volume_path
        if not vid:
            raise invalid("volume_id is required")
        if not path:
            raise invalid("volume_path is required")
        with self.locks.hold(vid, "NodeExpandVolume"):
            rec = Attachment.load(self.state_dir, vid)
            if rec is None or not os.path.exists(path):
                raise not_found(f"volume {vid} is not staged on this node at {path}")
            want = req.capacity_range.required_bytes
            size = device_size(rec.device)
            if not want or size < want:
                if rec.can_grow_in_place():
                    size = rec.grow()
                elif rec.targets:
                    raise CsiError(
                        Code.FAILED_PRECONDITION,
                        f"volume {vid} was attached through nbdfuse on a fixed-size export "
                        f"({size} bytes, {want} wanted), which cannot grow in use: it grows "
                        "when it is next staged (restart the pod)",
                    )
                else:
                    self._reattach(rec)
                    size = device_size(rec.device)
            if want and size < want:
                raise CsiError(
                    Code.FAILED_PRECONDITION,
                    f"volume {vid} is {size} bytes on the wire, not {want}: "
                    "ControllerExpandVolume first",
                )
            if rec.mode == "mount" and not rec.read_only:
                self._grow_fs(rec, size)
        return pb.NodeExpandVolumeResponse(capacity_bytes=size)

    def _grow_fs(self, rec: Attachment, size: int) -> None:
        if rec.fs_type == "ext4" and ext4_size(rec.device) >= size:
            return
        try:
            grow_fs(rec.device, rec.staging_path, rec.fs_type)
        except MountError as e:
            if rec.fs_type == "ext4" and "Permission denied" in str(e):
                raise CsiError(
                    Code.FAILED_PRECONDITION,
                    f"the kernel refused to grow the mounted ext4 of volume {rec.volume} "
                    f"online ({e}): the node plugin needs CAP_SYS_RESOURCE (run it "
                    f"privileged). The device is {size} bytes already; the filesystem "
                    "grows when the volume is next staged",
                ) from None
            raise

    def _reattach(self, rec: Attachment) -> None:
        """Reconnect an unpublished, staged volume to get its new size."""
        if rec.mode == "mount":
            umount(rec.staging_path)
        rec.detach()
        rec.attach()
        rec.save(self.state_dir)
        if rec.mode == "mount":
            if rec.fs_type == "ext4" and not rec.read_only:
                grow_ext4_offline(rec.device)
            opts = ",".join(stage_options(rec.fs_type, rec.read_only))
            run("mount", "-t", rec.fs_type, *(["-o", opts] if opts else []), rec.device,
                rec.staging_path)  # fmt: skip

    @rpc
    def NodeGetCapabilities(self, req: Any, context: Any) -> Any:
        caps = [pb.NodeServiceCapability(rpc=NRPC(type=t)) for t in NODE_CAPABILITIES]
        return pb.NodeGetCapabilitiesResponse(capabilities=caps)

    @rpc
    def NodeGetInfo(self, req: Any, context: Any) -> Any:
        zone = self.zone
        if zone is None:
            try:
                zone = zone_of(self.client.node(self.node_id))
            except CargoholdError as e:
                raise CsiError(
                    Code.UNAVAILABLE,
                    f"cannot learn the zone of node {self.node_id} from the manager: {e}",
                ) from None
        topo = pb.Topology(segments={TOPOLOGY_NODE: self.node_id, TOPOLOGY_ZONE: zone})
        return pb.NodeGetInfoResponse(
            node_id=self.node_id, max_volumes_per_node=self.max_volumes, accessible_topology=topo
        )


__all__ = ["MountError", "Node"]
