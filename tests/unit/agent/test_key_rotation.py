"""The agent's side of a data-key rotation (agent/key_rotation.py) against a stand-in
engine control socket (a unix socket answering JSON lines like the engine's): a running
engine whose assignment names a newer data-key generation gets every key, newest first,
through the op ``data-keys``; its sweep's status is tagged with the generation it is
about; an engine that does not know the op ("unknown op") is asked again later with one
warning and nothing crashes."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from cargohold.agent import key_rotation
from cargohold.agent.engine_process import EngineProcess, EngineState
from cargohold.agent.key_rotation import FetchedKeys, parse_answer
from cargohold.control.model import EngineAssignment
from cargohold.errors import KeyRefused

EID = "ab" * 16
NEW, OLD = bytes([2]) * 32, bytes([1]) * 32


class StandInEngine:
    """Answers the control ops ``status`` and ``data-keys`` (or "unknown op")."""

    def __init__(self, knows_op: bool = True) -> None:
        self.knows_op = knows_op
        self.got: list[dict[str, Any]] = []
        self.rekey: dict[str, Any] = {"state": "idle", "keys": 1}

    async def serve(self, path: str) -> asyncio.AbstractServer:
        return await asyncio.start_unix_server(self._client, path)

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        req = json.loads(await r.readline())
        self.got.append(req)
        if req["op"] == "status":
            answer = {"ok": True, "volume": "v", "epoch": 3, "rekey": self.rekey}
        elif req["op"] == "data-keys" and self.knows_op:
            self.rekey = {"state": "running", "keys": len(req["keys"]), "groups_done": 0}
            answer = {"ok": True, "rekey": self.rekey}
        else:
            answer = {"ok": False, "type": "InvalidArgument", "error": f"unknown op {req['op']!r}"}
        w.write(json.dumps(answer).encode() + b"\n")
        await w.drain()
        w.close()


class Alive:
    alive = True
    pid = None


def running_engine(sock: str, generation: int, rekey: bool = True) -> EngineProcess:
    spec = EngineAssignment(
        volume="v",
        epoch=3,
        size_bytes=1 << 20,
        replicas=["v-r1@h:1"],
        encrypted=True,
        encryption_id=EID,
        data_key_generation=generation,
        rekey=rekey,
    )
    eng = EngineProcess(spec, "127.0.0.1", sock, "/dev/null")
    eng.child, eng.ready, eng.state = Alive(), True, EngineState.RUNNING  # type: ignore[assignment]
    eng.status = {"volume": "v", "rekey": {"state": "idle", "keys": 1}}
    eng.keys.started(1)  # it was started with generation 1
    fetched: list[tuple[str, int]] = []

    async def source(volume: str, epoch: int) -> FetchedKeys:
        fetched.append((volume, epoch))
        return FetchedKeys((NEW, OLD), EID, 2)

    eng.key_source = source
    eng.fetched = fetched  # type: ignore[attr-defined]
    return eng


async def test_a_running_engine_gets_the_new_keys_newest_first(tmp_path: Path) -> None:
    sock = str(tmp_path / "c.sock")
    engine = StandInEngine()
    server = await engine.serve(sock)
    try:
        eng = running_engine(sock, generation=2)
        # the status the agent reports before the op: about generation 1's keys
        assert eng._reported()["rekey"]["generation"] == 1
        assert key_rotation.push_due(eng)
        await key_rotation.push(eng)
        assert eng.fetched == [("v", 3)]  # type: ignore[attr-defined]
        ops = [g for g in engine.got if g["op"] == "data-keys"]
        assert len(ops) == 1
        assert [base64.b64decode(k) for k in ops[0]["keys"]] == [NEW, OLD]
        assert eng.keys.generation == 2 and eng.keys.swept == 2
        assert eng.status["rekey"]["state"] == "running"
        assert eng._reported()["rekey"]["generation"] == 2
        assert not key_rotation.push_due(eng)  # given: not again
        # a status asked before the op answered is about the old keys
        eng.status_at = eng.keys.given_at - 1
        assert eng._reported()["rekey"]["generation"] == 1
        await eng.refresh()
        assert eng._reported()["rekey"] == {**engine.rekey, "generation": 2}
        assert NEW.hex() not in repr(eng.keys) and NEW.hex() not in str(eng._reported())
    finally:
        server.close()
        await server.wait_closed()


async def test_an_engine_without_the_op_is_asked_again_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "cargohold.agent")
    sock = str(tmp_path / "c.sock")
    engine = StandInEngine(knows_op=False)
    server = await engine.serve(sock)
    try:
        eng = running_engine(sock, generation=2)
        await key_rotation.push(eng)
        await key_rotation.push(eng)
        assert eng.keys.generation == 1 and eng.keys.swept == 0  # nothing given
        assert not key_rotation.push_due(eng)  # not before RETRY_UNKNOWN_OP
        assert eng.keys.not_before > time.monotonic() + key_rotation.RETRY_UNKNOWN_OP - 5
        warned = [r for r in caplog.records if "does not take new data keys" in r.message]
        assert len(warned) == 1
        eng.keys.not_before = 0.0
        assert key_rotation.push_due(eng)  # later: asked again
        # nothing due for a plain, stopped or up-to-date engine
        eng.spec = eng.spec.model_copy(update={"data_key_generation": 1, "rekey": False})
        assert not key_rotation.push_due(eng)
    finally:
        server.close()
        await server.wait_closed()


async def test_an_engine_that_does_not_answer_costs_a_retry(tmp_path: Path) -> None:
    eng = running_engine(str(tmp_path / "nobody.sock"), generation=2)
    await key_rotation.push(eng)  # no socket: warned, not raised
    assert eng.keys.generation == 1 and eng.keys.not_before > time.monotonic()


def test_the_managers_answer_is_parsed_old_and_new() -> None:
    b64 = base64.b64encode
    old = {"encryption_id": EID, "data_key": b64(NEW).decode()}
    got = parse_answer("v", old)
    assert (got.keys, got.generation) == ((NEW,), 1)
    new = {
        **old,
        "generation": 2,
        "keys": [
            {"generation": 2, "data_key": b64(NEW).decode()},
            {"generation": 1, "data_key": b64(OLD).decode()},
        ],
    }
    got = parse_answer("v", new)
    assert (got.keys, got.generation, got.encryption_id) == ((NEW, OLD), 2, EID)
    for bad in (
        {"encryption_id": EID},
        {**old, "data_key": "!!"},
        {**old, "keys": [{"data_key": b64(b"x").decode(), "generation": 1}]},
    ):
        with pytest.raises(KeyRefused):
            parse_answer("v", bad)


def test_an_adopted_engine_is_not_swept_again_without_a_rotation(tmp_path: Path) -> None:
    eng = running_engine(str(tmp_path / "c.sock"), generation=2, rekey=False)
    eng.keys.started(eng.spec.data_key_generation)  # what adopt() does
    assert not key_rotation.push_due(eng)
    eng.spec = eng.spec.model_copy(update={"rekey": True})  # a rotation runs: swept again
    assert key_rotation.push_due(eng)


async def test_a_running_engine_is_given_the_shorter_list_once_its_sweep_is_done(
    tmp_path: Path,
) -> None:
    """After a rotation the manager drops the older generation (the assignment keeps
    ``data_keys`` = 1): the engine still holding 2 keys, its sweep done, gets the one key
    left; while its sweep runs, or while the rotation runs, it does not."""
    sock = str(tmp_path / "c.sock")
    engine = StandInEngine()
    server = await engine.serve(sock)
    try:
        eng = running_engine(sock, generation=2, rekey=False)
        eng.keys.started(2)  # it has generation 2 (and 1) and was asked to sweep under 2
        eng.keys.swept = 2
        eng.spec = eng.spec.model_copy(update={"data_keys": 1})
        eng.status = {"volume": "v", "rekey": {"state": "running", "keys": 2}}
        assert not key_rotation.push_due(eng)  # blocks may still be under generation 1
        eng.status = {"volume": "v", "rekey": {"state": "done", "keys": 2}}
        eng.spec = eng.spec.model_copy(update={"rekey": True})
        assert not key_rotation.push_due(eng)  # the manager still counts a rotation
        eng.spec = eng.spec.model_copy(update={"rekey": False, "data_keys": 2})
        assert not key_rotation.push_due(eng)  # both kept (e.g. a snapshot needs 1)
        eng.spec = eng.spec.model_copy(update={"data_keys": 1})
        assert key_rotation.push_due(eng)

        async def source(volume: str, epoch: int) -> FetchedKeys:
            return FetchedKeys((NEW,), EID, 2)

        eng.key_source = source
        await key_rotation.push(eng)
        ops = [g for g in engine.got if g["op"] == "data-keys"]
        assert [[base64.b64decode(k) for k in op["keys"]] for op in ops] == [[NEW]]
        assert eng.status["rekey"]["keys"] == 1 and eng.keys.generation == 2
        assert not key_rotation.push_due(eng)
    finally:
        server.close()
        await server.wait_closed()
