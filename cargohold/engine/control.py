"""The engine's control API: JSON lines on a local unix socket.

Each request is one JSON object on one line, each answer too: ``{"ok": true, ...}`` or
``{"ok": false, "error": "...", "type": "..."}``. For the node agent and operators on the
engine's node (``cargohold engine --control PATH``); ``socat - UNIX:PATH`` works by hand.

Ops: ``status`` (endpoint, the NBD clients connected (``nbd_clients``), replicas with mode
RW/WO/ERR, generation, the current (epoch,
generation), rebuild and import progress, counters, latency histograms), ``snapshot``
(``name``, ``labels``), ``snapshots``, ``snapshot-delete`` and ``snapshot-revert``
(``name``), ``expand`` (``size`` in bytes), ``add-replica`` (``replica``: ``ID@HOST:PORT``;
joins WO and is rebuilt), ``remove-replica`` (``id``), ``import`` (``source``:
``ID@HOST:PORT`` of a replica of another volume, ``snapshot``: copies that snapshot into
this volume in the background; ``status`` shows how far it got), ``scrub`` (a scrub pass
of every replica, ``cargohold/engine/scrubber.py``: ``{"scrub": {"pass": N, ...}}`` at
once; with ``"wait": true`` when the pass ended, with its report; ``status`` shows the
pass running and the last report under ``scrub``), ``backup`` and ``restore`` (``id``: the
operation's id, ``args`` as the manager stored them, ``secrets``: the backup target and the
repository key, never logged; ``engine/backup.py``, ``engine/restore.py``: they run in the
background and ``status`` shows them under ``jobs`` by id), ``hold`` (``group``, ``seconds``)
and ``release`` (``group``): a group snapshot's hold of the volume's writes, released by
itself after ``seconds`` (``engine/holds.py``; ``snapshot`` with ``hold``: taken inside it;
``status`` shows it under ``hold``), ``snapshot-metadata`` (``snapshot``, optional
``base``, ``offset``, ``max_results``: a page of a snapshot's allocated blocks, or of the
blocks changed since ``base``; engine/snapshot_metadata.py), ``qos`` (``limits``: the
volume's QoS limits, all of them, ``{}`` for none (``cargohold.qos_limits``); they apply at
once; answers ``{"qos": ...}``, as ``status`` shows it: limits, queued, and the counters
``throttled_requests_total`` and ``throttled_seconds_total``), ``data-keys`` (``keys``: an
encrypted volume's data keys in base64, newest first: installed at once, and a sweep
rewrites the blocks still under an older key in the background, ``frontend/rekey_sweep.py``;
answers ``{"rekey": ...}`` as ``status`` shows it under ``rekey``). ``status`` also lists under ``busy`` the
control requests being carried out (op, name, since when): a test can kill the engine
while a snapshot is being taken (with ``cargohold.engine.faults`` holding it there).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import os
import time
from typing import Any

from cargohold.engine import holds, importer, snapshot_metadata, snapshots
from cargohold.engine.replica_link import ReplicaSpec
from cargohold.engine.scrubber import Scrubber
from cargohold.engine.volume import Volume
from cargohold.errors import CargoholdError, ConfigError, InvalidArgument

log = logging.getLogger("cargohold.engine")
MAX_LINE = 64 * 1024


async def handle(
    vol: Volume,
    request: dict[str, Any],
    scrubber: Scrubber | None = None,
    busy: dict[int, dict[str, Any]] | None = None,
    qos: Any = None,
    rekey: Any = None,
) -> dict[str, Any]:
    op = request.get("op")
    if op == "status":
        out = vol.status()
        # the NBD clients using the volume now ([{"peer", "export"}], from the daemon's NBD
        # server: Volume.nbd_clients): the manager refuses a detach while there are any
        out["nbd_clients"] = vol.nbd_clients()
        if scrubber is not None:
            out["scrub"] = scrubber.status()
        out["hold"] = holds.status(vol)
        if qos is not None:  # the NBD frontend's QoS gate (frontend/qos_gate.py)
            out["qos"] = qos.status()
        if busy is not None:  # control requests being carried out now (not status itself)
            now = time.time()
            out["busy"] = [dict(b, seconds=round(now - b["since"], 3)) for b in busy.values()]
        return out
    if op == "scrub":
        if scrubber is None:
            raise InvalidArgument("this engine runs no scrubber")
        vol.check_usable()
        number = scrubber.request()
        if request.get("wait"):
            return {"scrub": await scrubber.wait(number)}
        return {"scrub": {"pass": number, **scrubber.status()}}
    if op == "snapshot":
        labels = request.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidArgument("labels must be an object")
        group = request.get("hold")  # a group snapshot's hold to take it inside (holds.py)
        if group is not None:
            group = holds.check_group(group)
        return {"snapshot": await snapshots.create(vol, _name(request), labels, group)}
    if op == "snapshot-metadata":
        return await snapshot_metadata.page(
            vol,
            request.get("snapshot"),
            request.get("base"),
            request.get("offset", 0),
            request.get("max_results"),
            encrypted=rekey is not None,  # an encrypted volume: answered in logical offsets
        )
    if op == "hold":
        return {
            "hold": await holds.hold(
                vol, holds.check_group(request.get("group")), request.get("seconds")
            )
        }
    if op == "release":
        return {"hold": holds.release(vol, holds.check_group(request.get("group")))}
    if op == "snapshots":
        return {"snapshots": await snapshots.listing(vol)}
    if op == "snapshot-delete":
        await snapshots.delete(vol, _name(request))
        return {}
    if op == "snapshot-revert":
        await snapshots.revert(vol, _name(request))
        return {}
    if op == "expand":
        size: Any = request.get("size")  # any JSON value: Volume.expand checks it
        await vol.expand(size)
        return {"size_bytes": vol.size}
    if op == "add-replica":
        spec = ReplicaSpec.parse(str(request.get("replica", "")))
        await vol.add_replica(spec)
        return vol.status()
    if op == "remove-replica":
        vol.remove_replica(str(request.get("id", "")))
        return vol.status()
    if op == "import":
        source, snapshot = request.get("source"), request.get("snapshot")
        if not isinstance(source, str):
            raise InvalidArgument("source (ID@HOST:PORT of a replica to copy from) is required")
        if not isinstance(snapshot, str) or not snapshot:
            raise InvalidArgument("snapshot (the name of a snapshot of the source) is required")
        try:
            spec = ReplicaSpec.parse(source)
        except ConfigError as e:
            raise InvalidArgument(f"source: {e}") from None
        grant = request.get("grant")
        if grant is not None and not isinstance(grant, str):
            raise InvalidArgument("grant (a read grant from the manager) must be a string")
        return {"import": await importer.start_import(vol, spec, snapshot, grant)}
    if op == "qos":
        if qos is None:
            raise InvalidArgument("this engine has no QoS gate")
        qos.configure(request.get("limits") or {})  # InvalidArgument names a bad limit
        return {"qos": qos.status()}
    if op == "data-keys":
        if rekey is None:  # frontend/rekey_sweep.py's Rekey
            raise InvalidArgument("data-keys: this engine's volume is not encrypted")
        return {"rekey": rekey.install(_keys(request.get("keys")))}
    if op in ("backup", "restore"):
        op_id = request.get("id")
        if not isinstance(op_id, str) or not op_id:
            raise InvalidArgument(f"{op}: id (the operation's id) is required")
        # imported here: an engine that never backs up loads neither the repository library
        # nor numpy (tests/unit/test_settings.py keeps an engine process lean)
        from cargohold.engine import backup, restore

        start = backup.start_backup if op == "backup" else restore.start_restore
        job = await start(vol, op_id, request.get("args"), request.get("secrets") or {})
        return {"job": job}
    raise InvalidArgument(
        f"unknown op {op!r} (status, snapshot, snapshots, snapshot-delete, snapshot-revert, "
        "expand, add-replica, remove-replica, import, scrub, backup, restore, hold, release, snapshot-metadata, qos, data-keys)"
    )


def _keys(keys: Any) -> list[bytes]:
    """``data-keys``' list of base64 keys -> the keys (never in an error message)."""
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InvalidArgument(
            "data-keys: keys (a list of base64 strings, newest first) is required"
        )
    out = []
    for n, key in enumerate(keys):
        try:
            out.append(base64.b64decode(key, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"data-keys: key #{n} is not base64") from None
    return out


def _name(request: dict[str, Any]) -> str:
    name = request.get("name")
    if not isinstance(name, str):
        raise InvalidArgument("name (a string) is required")
    return name


async def serve_control(
    vol: Volume, path: str, scrubber: Scrubber | None = None, qos: Any = None, rekey: Any = None
) -> asyncio.AbstractServer:
    busy: dict[int, dict[str, Any]] = {}
    ids = itertools.count()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if len(line) > MAX_LINE:
                    break
                key = next(ids)
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise InvalidArgument("a request is a JSON object")
                    if req.get("op") != "status":
                        busy[key] = {"op": str(req.get("op")), "since": time.time()}
                        if isinstance(req.get("name"), str):
                            busy[key]["name"] = req["name"]
                    out = {"ok": True, **await handle(vol, req, scrubber, busy, qos, rekey)}
                except CargoholdError as e:
                    out = {"ok": False, "error": str(e), "type": type(e).__name__}
                except ValueError as e:
                    out = {"ok": False, "error": f"not JSON: {e}", "type": "InvalidArgument"}
                finally:
                    busy.pop(key, None)
                writer.write(json.dumps(out).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    if os.path.exists(path):
        os.unlink(path)
    return await asyncio.start_unix_server(client, path, limit=MAX_LINE)
