"""An encrypted volume's engine gets its data key through a pipe (agent/engine_process.py,
engines.py): the agent fetches it from the manager first, writes the 32 bytes into a pipe
whose read end the child inherits (``--data-key-fd N --encryption-key-id HEX``), and the
key never appears in argv, the environment or the agent's state; a refused or wrong key
starts nothing."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from cargohold.agent import engine_process
from cargohold.agent.engine_process import EngineProcess, EngineState
from cargohold.agent.engines import Engines
from cargohold.agent.key_rotation import FetchedKeys
from cargohold.control.model import EngineAssignment
from cargohold.errors import KeyRefused, PermissionDenied

EID = "ab" * 16
KEY = bytes(range(32))


def spec(epoch: int = 3) -> EngineAssignment:
    return EngineAssignment(
        volume="v",
        epoch=epoch,
        size_bytes=1 << 20,
        replicas=["v-r1@h:1"],
        encrypted=True,
        encryption_id=EID,
    )


def test_the_engine_command_line_names_the_fd_and_the_id_never_the_key() -> None:
    eng = EngineProcess(spec(), "127.0.0.1", "/nonexistent.sock", "/dev/null")
    argv = eng.argv(data_key_fd=7)
    i = argv.index("--data-key-fd")
    assert argv[i : i + 4] == ["--data-key-fd", "7", "--encryption-key-id", EID]
    plain = EngineProcess(spec().model_copy(update={"encrypted": False}), "h", "/s", "/dev/null")
    assert "--data-key-fd" not in plain.argv()


async def test_the_child_reads_the_key_from_the_pipe(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "seen"
    seen_argv: list[list[str]] = []

    def fake_argv(*a: Any, data_key_fd: int | None = None, encryption_key_id: str = "", **kw: Any):  # type: ignore[no-untyped-def]
        code = (
            "import os, sys; fd = int(sys.argv[2]); k = os.read(fd, 64); rest = os.read(fd, 8); "
            "open(sys.argv[1], 'w').write(f'{k.hex()} {len(rest)} {sys.argv[4]}')"
        )
        argv = [sys.executable, "-c", code, str(out), str(data_key_fd), "id", encryption_key_id]
        seen_argv.append(argv)
        return argv

    monkeypatch.setattr(engine_process, "engine_argv", fake_argv)
    monkeypatch.setenv("CARGOHOLD_SPAWN_PREFIX", "")

    async def source(volume: str, epoch: int) -> FetchedKeys:
        assert (volume, epoch) == ("v", 3)
        return FetchedKeys((KEY,), EID, 1)

    eng = EngineProcess(spec(), "127.0.0.1", "/nonexistent.sock", str(tmp_path / "e.log"))
    eng.key_source = source
    assert eng.needs_key
    await eng.fetch_key()
    fds_before = set(os.listdir("/proc/self/fd"))
    eng._start_child()
    assert not eng.needs_key or eng._data_key is None  # dropped once handed over
    assert eng.child is not None and eng.child.proc is not None
    assert eng.child.proc.wait(timeout=20) == 0
    assert out.read_text() == f"{KEY.hex()} 0 {EID}"  # 32 bytes, then end of file
    assert set(os.listdir("/proc/self/fd")) <= fds_before  # both pipe ends closed here
    assert KEY.hex() not in " ".join(seen_argv[0]) and KEY.hex() not in str(os.environ)
    assert KEY.hex() not in (tmp_path / "e.log").read_text()


async def test_every_generation_goes_through_the_pipe_newest_first(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "seen"

    def fake_argv(*a: Any, data_key_fd: int | None = None, **kw: Any):  # type: ignore[no-untyped-def]
        code = "import os, sys; open(sys.argv[1], 'w').write(os.read(int(sys.argv[2]), 512).hex())"
        return [sys.executable, "-c", code, str(out), str(data_key_fd)]

    monkeypatch.setattr(engine_process, "engine_argv", fake_argv)
    monkeypatch.setenv("CARGOHOLD_SPAWN_PREFIX", "")
    new, old = bytes([7]) * 32, bytes([9]) * 32

    async def source(volume: str, epoch: int) -> FetchedKeys:
        return FetchedKeys((new, old), EID, 2)

    eng = EngineProcess(spec(), "127.0.0.1", "/nonexistent.sock", str(tmp_path / "e.log"))
    eng.key_source = source
    await eng.fetch_key()
    eng._start_child()
    assert eng.child is not None and eng.child.proc is not None
    assert eng.child.proc.wait(timeout=20) == 0
    assert out.read_text() == (new + old).hex()
    assert eng.keys.generation == 2 and eng.keys.swept == 0  # a sweep: asked for by op


async def test_a_wrong_or_refused_key_starts_nothing() -> None:
    async def wrong(volume: str, epoch: int) -> FetchedKeys:
        return FetchedKeys((KEY,), "cd" * 16, 1)

    async def refused(volume: str, epoch: int) -> FetchedKeys:
        raise PermissionDenied("agent/node-2 may not fetch data keys for node node-1")

    eng = EngineProcess(spec(), "127.0.0.1", "/nonexistent.sock", "/dev/null")
    eng.key_source = wrong
    with pytest.raises(KeyRefused, match="not for encryption id"):
        await eng.fetch_key()
    assert eng.needs_key

    engines = Engines(
        "127.0.0.1",
        "/nonexistent",
        dict,
        lambda: None,
        asyncio.Event(),
        lambda *a: None,
        lambda volume: f"/nonexistent/{volume}.sock",
    )
    engines.key_source = refused
    engines.converge([spec()])
    eng = engines.procs["v"]
    assert eng.key_fetch is not None
    await eng.key_fetch
    assert eng.state is EngineState.DOWN and eng.child is None
    assert "may not fetch data keys" in eng.error
