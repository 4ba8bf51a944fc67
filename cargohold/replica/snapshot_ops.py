"""The replica server's snapshot requests (create, list, delete, revert), a part of
``Session``: each waits for the replica's pending flushes under the replica's lock, so a
snapshot never splits a flush (docs/formats/replica-store.md, "Layers, the head and
snapshots").
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from cargohold.errors import InvalidArgument
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Request

if TYPE_CHECKING:
    from cargohold.replica.registry import OpenReplica

Result = tuple[int, Any]  # (generation, payload bytes | list of buffers)


class SnapshotOps:
    if TYPE_CHECKING:

        def _replica(self) -> OpenReplica: ...
        def _mutation(self, req: Request) -> OpenReplica: ...
        async def _drain_flushes(self, rep: OpenReplica) -> None: ...

    async def op_snapshot_create(self, req: Request) -> Result:
        rep = self._replica()
        args = req.args()
        async with rep.lock:
            self._replica()
            await self._drain_flushes(rep)
            name: Any = args.get("name")  # any JSON value: the store checks it is a name
            info = rep.store.snapshot_create(name, _labels(args.get("labels")))
        return rep.store.generation, wire.dump_json(info.to_dict())

    def op_snapshot_list(self, req: Request) -> Result:
        rep = self._replica()
        return rep.store.generation, wire.dump_json(
            {"snapshots": [s.to_dict() for s in rep.store.snapshot_list()]}
        )

    async def op_snapshot_delete(self, req: Request) -> Result:
        rep = self._replica()
        name: Any = req.args().get("name")  # any JSON value: the store checks it is a name
        async with rep.lock:
            self._replica()
            await self._drain_flushes(rep)
            for _ in rep.store.snapshot_delete_steps(name):
                await asyncio.sleep(0)  # let I/O through between chunks: online deletion
        return rep.store.generation, b""

    async def op_snapshot_revert(self, req: Request) -> Result:
        rep = self._mutation(req)
        name: Any = req.args().get("name")  # any JSON value: the store checks it is a name
        async with rep.lock:
            self._replica()
            await self._drain_flushes(rep)
            rep.store.snapshot_revert(name, req.generation)
        return rep.store.generation, b""


def _labels(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise InvalidArgument("labels must be an object of string keys and string values")
    return v
