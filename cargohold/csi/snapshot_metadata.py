"""The CSI SnapshotMetadata service (CSI 1.12, alpha): changed-block metadata for backup
tools, through the Kubernetes external-snapshot-metadata sidecar.

GetMetadataAllocated streams the blocks a snapshot holds data in; GetMetadataDelta the
blocks that changed between two snapshots of one volume. Both come from the replicas' own
change tracking (engine/snapshot_metadata.py: the block maps, no data read), a page at a
time through the manager (``POST .../snapshots/{snapshot}/metadata``, an operation the
volume's engine runs). Ranges are VARIABLE_LENGTH, whole 4 KiB blocks, in order; each
response carries at most ``max_results`` of them (0: the driver's page, up to 4096), from
``starting_offset`` on (rounded down to a block).

Errors (the spec's): INVALID_ARGUMENT for a missing or malformed snapshot id, a negative
offset or max_results, or two snapshots of different volumes; NOT_FOUND for an unknown
volume or snapshot; OUT_OF_RANGE for a starting offset beyond the volume; FAILED_PRECONDITION
for a snapshot not ready yet or a base newer than the target. Registered by csi/server.py
with the Controller service.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from cargohold.control.client import ManagerClient, OperationFailed
from cargohold.csi import parameters as P
from cargohold.csi import stubs
from cargohold.csi.errors import Code, CsiError, code_for, invalid, not_found
from cargohold.errors import CargoholdError

pb, pb_grpc = stubs()
log = logging.getLogger("cargohold.csi")


def stream_rpc(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``rpc`` for a server-streaming method: errors become gRPC statuses mid-stream too."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: Any) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except CsiError as e:
            log.info("%s: %s: %s", fn.__name__, e.code.name, e.message)
            context.abort(e.code, e.message)
        except OperationFailed as e:
            code = Code.INTERNAL
            text = str(e)
            if "NotFound" in text or "no snapshot named" in text:
                code = Code.NOT_FOUND
            elif "newer than" in text:
                code = Code.FAILED_PRECONDITION
            elif "beyond the volume" in text:
                code = Code.OUT_OF_RANGE
            context.abort(code, text)
        except CargoholdError as e:
            context.abort(code_for(e), str(e))
        except Exception as e:
            log.exception("%s failed", fn.__name__)
            context.abort(Code.INTERNAL, f"{fn.__name__}: {type(e).__name__}: {e}")

    return wrapper


class SnapshotMetadata(pb_grpc.SnapshotMetadataServicer):  # type: ignore[name-defined]  # generated, loaded at run time (stubs())
    def __init__(self, client: ManagerClient, timeout: float = 120.0) -> None:
        self.client = client
        self.timeout = timeout

    @stream_rpc
    def GetMetadataAllocated(self, req: Any, context: Any) -> Iterator[Any]:
        vid, snap = self._snapshot(req.snapshot_id, "snapshot_id")
        for size, runs in self._pages(vid, snap, None, req.starting_offset, req.max_results):
            yield pb.GetMetadataAllocatedResponse(
                block_metadata_type=pb.VARIABLE_LENGTH,
                volume_capacity_bytes=size,
                block_metadata=runs,
            )

    @stream_rpc
    def GetMetadataDelta(self, req: Any, context: Any) -> Iterator[Any]:
        bvid, base = self._snapshot(req.base_snapshot_id, "base_snapshot_id")
        vid, snap = self._snapshot(req.target_snapshot_id, "target_snapshot_id")
        if bvid != vid:
            raise invalid(
                f"base_snapshot_id {req.base_snapshot_id} and target_snapshot_id "
                f"{req.target_snapshot_id} are snapshots of different volumes"
            )
        for size, runs in self._pages(vid, snap, base, req.starting_offset, req.max_results):
            yield pb.GetMetadataDeltaResponse(
                block_metadata_type=pb.VARIABLE_LENGTH,
                volume_capacity_bytes=size,
                block_metadata=runs,
            )

    # --- helpers ---------------------------------------------------------------------------
    def _snapshot(self, sid: str, field: str) -> tuple[str, str]:
        if not sid:
            raise invalid(f"{field} is required")
        parts = P.split_snapshot_id(sid)
        if parts is None:
            raise invalid(f"{field} {sid!r} is not a cargohold snapshot id (VOLUME/SNAPSHOT)")
        return parts

    def _pages(
        self, vid: str, snap: str, base: str | None, start: int, max_results: int
    ) -> Iterator[tuple[int, list[Any]]]:
        if start < 0:
            raise invalid("starting_offset must be >= 0")
        if max_results < 0:
            raise invalid("max_results must be >= 0")
        try:
            size = int(self.client.volume(vid)["size_bytes"])
        except CargoholdError as e:
            raise not_found(f"volume {vid}: {e}") from None
        if start >= size:
            raise CsiError(
                Code.OUT_OF_RANGE,
                f"starting_offset {start} is at or beyond the volume's {size} bytes",
            )
        offset, sent = start, False
        while True:
            page = self.client.snapshot_metadata(
                vid, snap, base, offset, min(max_results, 4096), self.timeout
            )
            runs = [pb.BlockMetadata(byte_offset=o, size_bytes=n) for o, n in page.get("runs", [])]
            nxt = int(page.get("next_offset", size))
            if runs or not sent:  # an empty answer is one message with no ranges
                yield int(page.get("volume_capacity_bytes", size)), runs
                sent = True
            if nxt >= size or nxt <= offset:
                return
            offset = nxt
