"""The engine's helpers use the volume's small internal interface (``engine/interface.py``),
never another module's private names, and the engine's modules import one way (the
``engine-one-way`` contract in ``.importlinter`` checks the layers; this checks what it
cannot: reaches into private attributes, and imports hidden inside functions, the usual
way around a cycle). ``Volume.hold`` is checked with in-memory replicas."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from cargohold.engine.interface import VolumeCore
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.errors import Fenced
from cargohold.protocol.replica_wire import STATUS_OK, Reply
from cargohold.settings import EngineSettings
from tests.unit.engine.test_fanout import MemReplica

ENGINE = Path(__file__).resolve().parents[3] / "cargohold" / "engine"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_reaches(root: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``, and ``from cargohold... import _name``."""
    reaches = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue  # its own
                reaches.append(f"{path.name}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cargohold"):
                reaches += [
                    f"{path.name}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if _private(a.name)
                ]
    return reaches


# Imports inside functions that are not around a cycle: control.py loads backup and restore
# (and with them the repository library and numpy) only when an operation asks, so an engine
# that never backs up stays lean (tests/unit/test_settings.py).
LAZY = {("control.py", "cargohold.engine", ("backup", "restore"))}


def hidden_imports(root: Path) -> list[str]:
    """Imports of engine modules inside functions (the usual way around a cycle)."""
    hidden = []
    for path in sorted(root.glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "cargohold.engine"
                ):
                    names = tuple(a.name for a in node.names)
                    if (path.name, node.module, names) in LAZY:
                        continue
                    hidden.append(f"{path.name}:{node.lineno}: {node.module}")
    return hidden


def test_no_engine_module_reaches_into_private_names_of_another() -> None:
    assert private_reaches(ENGINE) == []


def test_no_engine_module_imports_another_inside_a_function() -> None:
    assert hidden_imports(ENGINE) == []


def volume(*replicas: MemReplica) -> Volume:
    specs = [ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i) for i in range(len(replicas))]
    vol = Volume("v", specs, epoch=1, settings=EngineSettings())
    for link, r in zip(vol.links, replicas, strict=True):
        link.client, link.mode = r, Mode.RW  # type: ignore[assignment]  # in-memory twin
    return vol


async def test_the_volume_is_what_its_helpers_type_against() -> None:
    vol = volume(MemReplica())
    assert isinstance(vol, VolumeCore)
    for name in ("hold", "window", "window_done", "readers", "check_usable", "spawn", "size"):
        assert hasattr(vol, name), name


async def _until(pred, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_hold_waits_for_writes_in_flight_and_holds_new_ones_until_it_ends() -> None:
    r = MemReplica(silent=True)
    vol = volume(r)
    loop = asyncio.get_running_loop()
    first = loop.create_task(vol.write(0, memoryview(b"a" * 4096), False))
    await _until(lambda: len(r.got) == 1)
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with vol.hold():
            inside.set()
            await leave.wait()

    held = loop.create_task(holder())
    await asyncio.sleep(0.05)
    assert not inside.is_set()  # the write in flight is not answered yet
    r.generation = 1
    r.pending[0].set_result(Reply(STATUS_OK, 1, 1, b""))
    await first
    await asyncio.wait_for(inside.wait(), 5)
    second = loop.create_task(vol.write(4096, memoryview(b"b" * 4096), False))
    await asyncio.sleep(0.05)
    assert len(r.got) == 1  # held: not sent
    leave.set()
    await held
    await _until(lambda: len(r.got) == 2)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)


async def test_a_hold_cancelled_while_it_waits_lets_mutations_go_on() -> None:
    r = MemReplica(silent=True)
    vol = volume(r)
    loop = asyncio.get_running_loop()
    first = loop.create_task(vol.write(0, memoryview(b"a" * 4096), False))
    await _until(lambda: len(r.got) == 1)

    async def holder() -> None:
        async with vol.hold():
            pytest.fail("entered a hold that was cancelled")

    held = loop.create_task(holder())
    await asyncio.sleep(0.05)  # it waits for the write in flight
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    second = loop.create_task(vol.write(4096, memoryview(b"b" * 4096), False))
    await _until(lambda: len(r.got) == 2)  # not held for ever
    for t in (first, second):
        t.cancel()
    await asyncio.gather(first, second, return_exceptions=True)


async def test_a_fenced_answer_fences_the_volume_even_when_others_stored_the_write() -> None:
    vol = volume(MemReplica(), MemReplica(status=Fenced.status))
    with pytest.raises(Fenced, match=r"a newer engine owns replica r1@127\.0\.0\.1:9001"):
        await vol.write(0, memoryview(b"a" * 4096), False)
    assert vol.fenced and vol.robustness() == "faulted"
    with pytest.raises(Fenced):  # and everything after it
        await vol.flush()
    assert vol.status()["counters"]["write"] == 1
