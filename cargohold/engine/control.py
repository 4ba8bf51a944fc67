"""The engine's control API: JSON lines on a local unix socket.

Each request is one JSON object on one line, each answer too: ``{"ok": true, ...}`` or
``{"ok": false, "error": "...", "type": "..."}``. For the node agent and operators on the
engine's node (``cargohold engine --control PATH``); ``socat - UNIX:PATH`` works by hand.

Ops: ``status`` (replicas with mode RW/WO/ERR, generation, rebuild progress, counters,
latency histograms), ``snapshot`` (``name``, ``labels``), ``add-replica`` (``replica``:
``ID@HOST:PORT``; joins WO and is rebuilt), ``remove-replica`` (``id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from cargohold.engine.replica_link import ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.errors import CargoholdError, InvalidArgument

log = logging.getLogger("cargohold.engine")
MAX_LINE = 64 * 1024


async def handle(vol: Volume, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "status":
        return vol.status()
    if op == "snapshot":
        name = request.get("name")
        labels = request.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidArgument("labels must be an object")
        return {"snapshot": await vol.snapshot_create(name, labels)}  # type: ignore[arg-type]
    if op == "add-replica":
        spec = ReplicaSpec.parse(str(request.get("replica", "")))
        await vol.add_replica(spec)
        return vol.status()
    if op == "remove-replica":
        vol.remove_replica(str(request.get("id", "")))
        return vol.status()
    raise InvalidArgument(f"unknown op {op!r} (status, snapshot, add-replica, remove-replica)")


async def serve_control(vol: Volume, path: str) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if len(line) > MAX_LINE:
                    break
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise InvalidArgument("a request is a JSON object")
                    out = {"ok": True, **await handle(vol, req)}
                except CargoholdError as e:
                    out = {"ok": False, "error": str(e), "type": type(e).__name__}
                except ValueError as e:
                    out = {"ok": False, "error": f"not JSON: {e}", "type": "InvalidArgument"}
                writer.write(json.dumps(out).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    if os.path.exists(path):
        os.unlink(path)
    return await asyncio.start_unix_server(client, path, limit=MAX_LINE)
