"""Publishing of the CSI Controller service: ControllerPublish = attach the volume on the
node and wait until its engine runs there; ControllerUnpublish = detach (docs/kubernetes.md).

A volume has one writer: published elsewhere → FAILED_PRECONDITION while that node is up,
a takeover (new epoch, the old engine fenced) when it is down. MULTI_NODE_READER_ONLY
readers join the owner's engine; the publications are recorded (``publications.py``) so
an incompatible repeat is ALREADY_EXISTS and the engine is detached with the last reader.

The attach limit (``--max-volumes``, what NodeGetInfo reports as max_volumes_per_node):
a publish that would put one volume more on a node that has that many already is
RESOURCE_EXHAUSTED, naming the limit. What a node has is the manager's view (the volumes
attached there: their engines run there) with the readers published there and the
publishes under way, so two concurrent publishes cannot both take the last place.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from cargohold.control.client import JSON
from cargohold.csi import parameters as P
from cargohold.csi import stubs
from cargohold.csi.controller_base import ControllerBase
from cargohold.csi.errors import Code, CsiError, invalid, not_found, rpc
from cargohold.csi.publications import Publication
from cargohold.errors import NotFound, WrongState

pb, pb_grpc = stubs()
log = logging.getLogger("cargohold.csi.controller")


class PublishRpcs(ControllerBase):
    """ControllerPublishVolume and ControllerUnpublishVolume (a part of ``Controller``)."""

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
                    with self._node_slot(vid, node):
                        vol = self._wait_attached(vid, owner)
                        if not pubs:  # record lost (or attached outside CSI): the owner reads
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
            with self._node_slot(vid, node) if owner != node else contextlib.nullcontext():
                if owner != node:
                    try:
                        self.client.attach(vid, node)
                    except WrongState as e:
                        raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid}: {e}") from None
                vol = self._wait_attached(vid, node)
                # a writer (or a takeover) is the only publication; readers add up
                self.pubs.add(vid, node, want, only=not P.is_multi_reader(cap) or owner != node)
        return self._published(vol)

    @contextlib.contextmanager
    def _node_slot(self, vid: str, node: str) -> Iterator[None]:
        """A place for ``vid`` on ``node`` within the attach limit, held while it is
        published there; RESOURCE_EXHAUSTED when the node is full."""
        if not self.max_volumes:
            yield
            return
        with self._slots_mu:
            there = {a["volume"] for a in self.client.attachments() if a.get("node") == node}
            there |= self.pubs.volumes_on(node) | self._pending.get(node, set())
            there.discard(vid)
            if len(there) >= self.max_volumes:
                raise CsiError(
                    Code.RESOURCE_EXHAUSTED,
                    f"node {node} has {len(there)} volumes published, its limit "
                    f"(max_volumes_per_node, the driver's --max-volumes) is {self.max_volumes}: "
                    f"volume {vid} cannot be published there until one is unpublished",
                )
            self._pending.setdefault(node, set()).add(vid)
        try:
            yield
        finally:
            with self._slots_mu:
                self._pending.get(node, set()).discard(vid)

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
                # forced: the CO calls this only after NodeUnstageVolume succeeded (the node
                # let go of the device), while the manager's view of the NBD clients lags
                # by up to a heartbeat; refusing on that stale report would only delay the
                # pod's move by the CO's back-off (docs/kubernetes.md)
                self.client.detach(vid, force=True)
            return self._unpublished(vid, "")

    def _unpublished(self, vid: str, keep: str | None) -> Any:
        """Wait until the volume is detached, unless ``keep`` says it stays attached."""
        if not keep:
            self.client.wait_detached(vid, self.timeout)
        return pb.ControllerUnpublishVolumeResponse()


def _describe(p: Publication) -> str:
    mode = pb.VolumeCapability.AccessMode.Mode.Name(p.access_mode)
    return f"{'readonly' if p.readonly else 'read-write'} {p.access_type} {mode}"
