"""The replica ops of rebuilds, scrubs and growth, apart from the data path's: what
changed since a generation, extents, export and import streams, marking a rebuilt replica
current, checksum maps, repair, scrub, stats, expand. A mixin of ``Session``
(``replica/session.py``), which dispatches to it and holds the connection's replica.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from cargohold.constants import BLOCK_SIZE, MAX_IO_BYTES
from cargohold.errors import InvalidArgument, ProtocolError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Request
from cargohold.store.base import window_digests

if TYPE_CHECKING:
    from cargohold.replica.registry import OpenReplica

Result = tuple[int, Any]  # (generation, payload bytes | list of buffers)


class MaintenanceOps:
    if TYPE_CHECKING:

        def _replica(self) -> OpenReplica: ...
        def _info(self, rep: OpenReplica) -> dict[str, Any]: ...
        async def _drain_flushes(self, rep: OpenReplica) -> None: ...

    def op_changed(self, req: Request) -> Result:
        rep = self._replica()
        since = int_arg(req.args(), "since", 0)
        length = req.length or rep.store.size - req.offset
        snapshot = str_arg(req.args(), "snapshot")  # None: the head
        if req.args().get("generations") is True:  # the merge of a start in doubt
            if snapshot is not None:
                raise InvalidArgument("generations: of the head only, not with a snapshot")
            runs = rep.store.changed_generations(since, req.offset, length)
            return rep.store.generation, wire.encode_generation_runs(since, runs)
        extents = rep.store.changed_since(since, req.offset, length, snapshot)
        return rep.store.generation, wire.dump_json({"since": since, "extents": extents})

    def op_extents(self, req: Request) -> Result:
        rep = self._replica()
        args = req.args()
        ext = rep.store.extents(req.offset, req.length, str_arg(args, "snapshot"))
        return rep.store.generation, wire.dump_json({"extents": ext})

    def op_export(self, req: Request) -> Result:
        rep = self._replica()
        args = req.args()
        bufs = rep.store.export(
            req.offset,
            req.length,
            since=int_arg(args, "since", 0),
            max_bytes=min(int_arg(args, "max_bytes", 8 << 20), MAX_IO_BYTES),
            snapshot=str_arg(args, "snapshot"),
        )
        return rep.store.generation, bufs

    def op_import(self, req: Request) -> Result:
        rep = self._replica()
        try:
            gen = rep.store.import_stream(req.payload, req.generation or None)
        except ProtocolError as e:  # a bad stream inside a good frame: a bad request
            raise InvalidArgument(str(e)) from None
        return gen, b""

    async def op_mark_current(self, req: Request) -> Result:
        rep = self._replica()
        args = req.args()
        generation = int_arg(args, "generation", 0) if "generation" in args else None
        history = args.get("history")
        reset = args.get("reset", False)
        if not isinstance(reset, bool):
            raise InvalidArgument(f"reset must be true or false, got {reset!r}")
        async with rep.lock:
            self._replica()
            await self._drain_flushes(rep)
            rep.store.mark_current(generation, history, reset)
        return rep.store.generation, wire.dump_json(self._info(rep))

    def op_checksums(self, req: Request) -> Result:
        """The checksum map of a range from the block maps (no data read): per block, or
        per window of ``digest_blocks`` blocks (docs/formats/replica-wire.md)."""
        rep = self._replica()
        args = req.args()
        window = int_arg(args, "digest_blocks", 0)
        if req.length == 0 or req.length > wire.MAX_CHECKSUM_BLOCKS * BLOCK_SIZE:
            raise InvalidArgument(
                f"checksum range of {req.length} bytes: 1 to {wire.MAX_CHECKSUM_BLOCKS} blocks"
            )
        crcs = rep.store.checksums(req.offset, req.length, str_arg(args, "snapshot"))
        values = crcs if not window else window_digests(crcs, window)
        parts = wire.encode_checksums(
            req.offset // BLOCK_SIZE, len(crcs), values.data.cast("B"), window
        )
        return rep.store.generation, parts

    def op_repair(self, req: Request) -> Result:
        rep = self._replica()
        fixed = rep.store.repair(req.offset, req.payload)
        return rep.store.generation, wire.dump_json({"repaired": fixed})

    async def op_scrub(self, req: Request) -> Result:
        rep = self._replica()
        async with rep.lock:
            self._replica()
            steps = rep.store.scrub_steps(req.offset, req.length)
            while True:
                try:
                    next(steps)
                except StopIteration as stop:
                    report = stop.value
                    break
                await asyncio.sleep(0)
        return rep.store.generation, wire.dump_json(report.to_dict())

    def op_stats(self, req: Request) -> Result:
        rep = self._replica()
        return rep.store.generation, wire.dump_json(rep.store.stats())

    async def op_expand(self, req: Request) -> Result:
        rep = self._replica()
        size = int_arg(req.args(), "size", -1)
        async with rep.lock:
            self._replica()
            rep.store.expand(size)
        return rep.store.generation, wire.dump_json({"size": rep.store.size})


def str_arg(args: dict[str, Any], key: str) -> str | None:
    v = args.get(key)
    if v is not None and not isinstance(v, str):
        raise InvalidArgument(f"{key} must be a string, got {v!r}")
    return v


def int_arg(args: dict[str, Any], key: str, default: int) -> int:
    v = args.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InvalidArgument(f"{key} must be a non-negative integer, got {v!r}")
    return v
