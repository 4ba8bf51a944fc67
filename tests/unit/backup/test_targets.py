"""The Target contract (backup/targets.py), run on every target this layer can build.

S3Target's tests (tests/integration/backup/) parametrize ``check_contract`` with a real S3
server; here it runs on MemoryTarget and on FileTarget over a real temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cargohold.backup.targets import FileTarget, MemoryTarget, Target, open_target
from cargohold.errors import InvalidArgument, NotFound


def check_contract(t: Target) -> None:
    """What every target must do; the counts in ``stats`` included."""
    before = dict(t.stats)
    assert not t.exists("a/b")
    with pytest.raises(NotFound):
        t.get("a/b")
    t.put("a/b", b"hello world")
    t.put("a/c", memoryview(b"x" * 10))
    t.put("d", b"")
    assert t.exists("a/b")
    assert t.get("a/b") == b"hello world"
    assert t.get("a/b", 6) == b"world"
    assert t.get("a/b", 6, 3) == b"wor"
    assert t.get("a/c") == b"x" * 10
    assert t.get("d") == b""
    t.put("a/b", b"replaced")  # a put replaces the object whole
    assert t.get("a/b") == b"replaced"
    assert t.list("a/") == ["a/b", "a/c"]
    assert t.list("") == ["a/b", "a/c", "d"]
    t.delete(["a/b", "missing/key"])  # absent keys are fine
    assert t.list("") == ["a/c", "d"]
    t.delete(["a/c", "d"])
    assert t.list("") == []
    for bad in ("", "/abs", "a//b", "../x", "a/./b", "a/../b", ".hidden"):
        with pytest.raises(InvalidArgument):
            t.put(bad, b"x")
    counted = {k: t.stats[k] - before.get(k, 0) for k in t.stats}
    assert counted["put"] >= 4 and counted["get"] >= 6 and counted["list"] == 4
    assert counted["head"] >= 2 and counted["delete"] >= 2
    assert "secret" not in repr(t) and t.describe()


def test_memory_target_contract() -> None:
    check_contract(MemoryTarget())


def test_file_target_contract(tmp_path: Path) -> None:
    t = FileTarget(tmp_path / "repo")
    check_contract(t)
    assert t.describe() == f"file://{tmp_path / 'repo'}"


def test_file_target_leaves_no_temporary_files_and_hides_them(tmp_path: Path) -> None:
    t = FileTarget(tmp_path)
    t.put("packs/ab/abcd", os.urandom(100_000))
    assert [p.name for p in (tmp_path / "packs" / "ab").iterdir()] == ["abcd"]
    (tmp_path / "packs" / "ab" / ".abcd.tmp-123").write_bytes(b"half")  # a put cut short
    assert t.list("packs/") == ["packs/ab/abcd"]


def test_file_target_needs_an_absolute_path() -> None:
    with pytest.raises(InvalidArgument):
        FileTarget("relative/dir")


def test_open_target(tmp_path: Path) -> None:
    t = open_target(f"file://{tmp_path}/r")
    assert isinstance(t, FileTarget) and t.root == tmp_path / "r"
    for bad in ("ftp://x/y", "file://host/x", "file:relative", "s3:///nobucket", "nonsense"):
        with pytest.raises(InvalidArgument):
            open_target(bad)
