"""The node agent's client for one engine's control socket.

The engine answers JSON lines on a unix socket (see cargohold/engine/control.py): one
request object per line, one answer per line, ``{"ok": true, ...}`` or ``{"ok": false,
"error": ..., "type": ...}``. The agent asks for ``status`` every heartbeat, changes the
replica set (``add-replica``, ``remove-replica``) and runs operations (snapshots, expand,
import, scrub). Each call uses its own short-lived connection, so a slow operation never holds up
a status call, and a restarted engine needs no reconnect logic.

Operations the manager asks for (``OperationAssignment``) map to control requests here
(``operation_request``); a clone is an ``import``, a scrub a ``scrub`` pass, a backup or a
restore a ``backup`` or ``restore`` job (with the operation's ``secrets``): they run on in
the engine and are followed through its status until they end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from cargohold import errors
from cargohold.control.model import OperationAssignment, OperationKind
from cargohold.errors import CargoholdError, InvalidArgument, RequestError

MAX_LINE = 16 << 20  # a status with latency histograms of many replicas stays far below
OP_TIMEOUT = 600.0  # seconds an operation's control call may take
IMPORT_POLL = 0.5  # seconds between looks at a running import (clone)
IMPORT_LOST_AFTER = 30.0  # seconds of an engine not answering before its import is failed


class EngineUnreachable(CargoholdError):
    """The engine's control socket did not answer (not started yet, gone, or too slow)."""


def _refusal(answer: dict[str, Any]) -> CargoholdError:
    """The engine's error, as the class of the one exception tree it names."""
    cls = getattr(errors, str(answer.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, CargoholdError)):
        cls = RequestError
    return cls(str(answer.get("error") or "the engine refused the request"))


class EngineLink:
    def __init__(self, path: str) -> None:
        self.path = path

    async def call(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send one request; -> the answer without ``ok``. Raises ``EngineUnreachable`` when
        the socket does not answer in time, or the error the engine reported."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)
                try:
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
        except TimeoutError:
            raise EngineUnreachable(
                f"engine control socket {self.path}: no answer to {request.get('op')!r} "
                f"within {timeout:g} s"
            ) from None
        except (OSError, ValueError) as e:  # ValueError: an over-long line
            raise EngineUnreachable(f"engine control socket {self.path}: {e}") from None
        if not line.endswith(b"\n"):
            raise EngineUnreachable(f"engine control socket {self.path}: closed without answer")
        try:
            answer = json.loads(line)
        except ValueError as e:
            raise EngineUnreachable(f"engine control socket {self.path}: bad JSON: {e}") from None
        if not isinstance(answer, dict):
            raise EngineUnreachable(f"engine control socket {self.path}: answer is no object")
        if not answer.pop("ok", False):
            raise _refusal(answer)
        return answer

    async def status(self, timeout: float = 2.0) -> dict[str, Any]:
        return await self.call({"op": "status"}, timeout)

    async def add_replica(self, spec: str, timeout: float = 30.0) -> dict[str, Any]:
        """``spec`` is ``ID@HOST:PORT``; the replica joins write-only and is rebuilt."""
        return await self.call({"op": "add-replica", "replica": spec}, timeout)

    async def remove_replica(self, replica_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.call({"op": "remove-replica", "id": replica_id}, timeout)

    async def run_operation(
        self, op: OperationAssignment, progress: Callable[[float], None]
    ) -> dict[str, Any]:
        """Carry out an operation; -> its result. ``progress`` hears 0..1 as a clone copies."""
        try:
            answer = await self.call(operation_request(op), OP_TIMEOUT)
        except errors.Busy:
            if op.kind not in (OperationKind.BACKUP, OperationKind.RESTORE):
                raise
            answer = {}  # running already (an earlier call of this agent): follow it
        if op.kind is OperationKind.CLONE:
            answer = await self._follow_import(progress)
        elif op.kind is OperationKind.SCRUB:
            answer = await self._follow_scrub(int(answer["scrub"]["pass"]), progress)
        elif op.kind in (OperationKind.BACKUP, OperationKind.RESTORE):
            answer = await self._follow_job(op.id, progress)
        return answer

    async def _follow_job(self, op_id: str, progress: Callable[[float], None]) -> dict[str, Any]:
        """Poll the engine's status until its job ``op_id`` (a backup or a restore) ends;
        -> its result. An engine that restarted has no such job: the run is lost (the
        operation runs again, ``operations.OP_TRIES``)."""
        async for st in self._statuses():
            job = (st.get("jobs") or {}).get(op_id)
            if not isinstance(job, dict):
                raise EngineUnreachable(f"the engine has no job {op_id} (it restarted)")
            total, done = job.get("bytes_total") or 0, job.get("bytes_done") or 0
            if isinstance(total, int | float) and isinstance(done, int | float) and total > 0:
                progress(min(1.0, float(done) / float(total)))
            if job.get("state") == "succeeded":
                result = job.get("result")
                return dict(result) if isinstance(result, dict) else {}
            if job.get("state") == "failed":
                raise RequestError(str(job.get("error") or f"the {job.get('kind')} failed"))
        raise AssertionError("unreachable")  # _statuses never ends on its own

    async def _follow_scrub(self, number: int, progress: Callable[[float], None]) -> dict[str, Any]:
        """Poll the engine's status until scrub pass ``number`` ended; -> its report."""
        async for status in self._statuses():
            st = status.get("scrub") or {}
            last, running = st.get("last") or {}, st.get("running") or {}
            if isinstance(last, dict) and int(last.get("pass", 0)) >= number:
                if last.get("state") != "succeeded":
                    raise RequestError(f"scrub failed: {last.get('error') or 'no reason given'}")
                return {"scrub": last}
            if isinstance(running, dict) and running.get("pass") == number and running.get("size"):
                progress(min(1.0, float(running.get("offset", 0)) / float(running["size"])))
        raise AssertionError("unreachable")  # _statuses never ends on its own

    async def _follow_import(self, progress: Callable[[float], None]) -> dict[str, Any]:
        """Poll the engine's status until its import (a clone's copy) ends."""
        async for st in self._statuses():
            imp = st.get("import")
            if isinstance(imp, dict):
                total, copied = imp.get("bytes_total") or 0, imp.get("bytes_copied") or 0
                if isinstance(total, int | float) and isinstance(copied, int | float) and total > 0:
                    progress(min(1.0, float(copied) / float(total)))
                if imp.get("state") == "succeeded":
                    return dict(imp)
                if imp.get("state") == "failed":
                    raise RequestError(str(imp.get("error") or "the import failed"))
        raise AssertionError("unreachable")  # _statuses never ends on its own

    async def _statuses(self) -> AsyncIterator[dict[str, Any]]:
        """The engine's status every IMPORT_POLL seconds, for following an operation; an
        engine out of reach for longer than IMPORT_LOST_AFTER raises EngineUnreachable."""
        lost_since: float | None = None
        first = True
        while True:
            if not first:
                await asyncio.sleep(IMPORT_POLL)
            first = False
            try:
                st = await self.status(5.0)
            except EngineUnreachable:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > IMPORT_LOST_AFTER:
                    raise
                continue
            lost_since = None
            yield st


def operation_request(op: OperationAssignment) -> dict[str, Any]:
    """The control-socket request that carries out an operation."""

    def arg(name: str, kind: type) -> Any:
        value = op.args.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidArgument(
                f"operation {op.id} ({op.kind.value}): argument {name!r} must be a "
                f"{kind.__name__}, got {value!r}"
            )
        return value

    if op.kind is OperationKind.SNAPSHOT_CREATE:
        labels = op.args.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidArgument(f"operation {op.id}: labels must be an object")
        req = {"op": "snapshot", "name": arg("name", str), "labels": labels}
        if op.args.get("hold") is not None:  # a group snapshot's member: inside its hold
            req["hold"] = arg("hold", str)
        return req
    if op.kind is OperationKind.HOLD:
        return {"op": "hold", "group": arg("group", str), "seconds": arg("seconds", float)}
    if op.kind is OperationKind.RELEASE:
        return {"op": "release", "group": arg("group", str)}
    if op.kind is OperationKind.SNAPSHOT_METADATA:  # engine/snapshot_metadata.py checks them
        keys = ("snapshot", "base", "offset", "max_results")
        return {"op": "snapshot-metadata", **{k: op.args.get(k) for k in keys}}
    if op.kind is OperationKind.SNAPSHOT_DELETE:
        return {"op": "snapshot-delete", "name": arg("name", str)}
    if op.kind is OperationKind.SNAPSHOT_REVERT:
        return {"op": "snapshot-revert", "name": arg("name", str)}
    if op.kind is OperationKind.EXPAND:
        return {"op": "expand", "size": arg("size_bytes", int)}
    if op.kind is OperationKind.CLONE:
        req = {"op": "import", "source": arg("source", str), "snapshot": arg("snapshot", str)}
        if isinstance(op.args.get("grant"), str):  # the manager's read grant for the source
            req["grant"] = op.args["grant"]
        return req
    if op.kind is OperationKind.SCRUB:
        return {"op": "scrub"}
    if op.kind in (OperationKind.BACKUP, OperationKind.RESTORE):
        # the secrets (target credentials, repository key) go to the engine only, over its
        # local control socket; they are never logged nor stored
        return {"op": op.kind.value, "id": op.id, "args": op.args, "secrets": op.secrets}
    raise InvalidArgument(f"operation {op.id}: unknown kind {op.kind!r}")
