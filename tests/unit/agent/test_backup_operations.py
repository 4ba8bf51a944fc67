"""The agent's side of BACKUP and RESTORE: the operation's secrets go to the engine's
control socket with it and nowhere else; the job is followed through the engine's status
until it ends (a fake engine on a real unix socket)."""

from __future__ import annotations

import asyncio
import json

import pytest

from cargohold.agent.engine_link import EngineLink, EngineUnreachable, operation_request
from cargohold.control.model import OperationAssignment, OperationKind
from cargohold.errors import RequestError

SECRETS = {"url": "file:///b", "repository_key": "c2VjcmV0"}


def op(kind: OperationKind = OperationKind.BACKUP) -> OperationAssignment:
    return OperationAssignment(
        id="op-1", kind=kind, volume="vol", args={"backup": "bk-1"}, secrets=SECRETS
    )


def test_the_request_carries_id_args_and_secrets_and_repr_hides_them():
    assert operation_request(op()) == {
        "op": "backup",
        "id": "op-1",
        "args": {"backup": "bk-1"},
        "secrets": SECRETS,
    }
    assert operation_request(op(OperationKind.RESTORE))["op"] == "restore"
    assert "c2VjcmV0" not in repr(op())


async def _fake_engine(path: str, jobs: list[dict | None]) -> asyncio.AbstractServer:
    """Answers the op request, then one status per element of ``jobs``."""
    seen: list[dict] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = json.loads(await reader.readline())
        seen.append(req)
        if req["op"] == "status":
            job = jobs.pop(0) if len(jobs) > 1 else jobs[0]
            answer = {"ok": True, "jobs": {"op-1": job} if job else {}}
        else:
            answer = {"ok": True, "job": {"state": "running"}}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(client, path)
    server.seen = seen  # type: ignore[attr-defined]
    return server


def test_the_job_is_followed_to_its_result(tmp_path, monkeypatch):
    monkeypatch.setattr("cargohold.agent.engine_link.IMPORT_POLL", 0.01)
    path = str(tmp_path / "e.ctl")
    running = {"state": "running", "bytes_done": 5, "bytes_total": 10}
    done = {"state": "succeeded", "bytes_done": 10, "bytes_total": 10, "result": {"id": "x"}}
    failed = {"state": "failed", "error": "chunk abc of pack p is bad"}

    async def go(jobs: list) -> tuple[dict, list[float]]:
        server = await _fake_engine(path, jobs)
        got: list[float] = []
        try:
            return await EngineLink(path).run_operation(op(), got.append), got
        finally:
            server.close()

    result, progress = asyncio.run(go([running, done]))
    assert result == {"id": "x"} and progress == [0.5, 1.0]
    with pytest.raises(RequestError, match="chunk abc"):
        asyncio.run(go([running, failed]))
    with pytest.raises(EngineUnreachable, match="no job"):  # the engine restarted
        asyncio.run(go([None]))
