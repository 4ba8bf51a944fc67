"""``CARGOHOLD_SPAWN_PREFIX`` (docs/upgrades.md): the agent's long-lived children are started
through an exec'ing wrapper (in Kubernetes ``systemd-run --scope ...``, which moves them to a
host cgroup so they outlive the pod). The wrapper must keep the PID and leave exactly the
child's command line, or a restarted agent could not adopt it: checked here with ``env``,
an exec'ing wrapper every machine has."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cargohold.agent.processes import Child, runs_argv, spawn_prefix


def test_a_child_started_through_the_prefix_is_adoptable_by_its_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARGOHOLD_SPAWN_PREFIX", "env --")
    assert spawn_prefix() == ["env", "--"]
    argv = ["sleep", "30"]
    child = Child("a stand-in engine", argv, str(tmp_path / "logs" / "child.log"))
    child.start()
    try:
        assert child.proc is not None and child.pid is not None
        deadline = 500
        cmd = Path(f"/proc/{child.pid}/cmdline")
        while cmd.read_bytes().split(b"\0")[0] != b"sleep":  # env has not exec'd yet
            deadline -= 1
            assert deadline, cmd.read_bytes()
            time.sleep(0.01)
        assert runs_argv(child.pid, argv)  # the same PID, the child's own command line
        assert child.argv == argv  # what agent.json records: never the wrapper
    finally:
        child.proc.kill()
        child.proc.wait()


def test_no_prefix_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARGOHOLD_SPAWN_PREFIX", raising=False)
    assert spawn_prefix() == []
