"""A restarted node plugin takes over the attachments its predecessor recorded
(csi/mounter.py ``adopt``, ``Attachment.adoption_problem``): each record is checked by PID,
command line, FUSE mount, loop device and a read, and a broken one is named with the reason,
never silently trusted. The whole path with real nbdfuse, loop devices and a kill -9 of the
plugin is tests/e2e/test_csi_restart.py."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from cargohold.csi.adoption import adopt
from cargohold.csi.mounter import Attachment

PY = "/usr/bin/python3"
SLEEP = "import time; time.sleep(60)"
REAL = ["nbdfuse", "-c", SLEEP, "-P", "/x/pid", "/x/fuse/disk", "nbd://h"]


@pytest.fixture
def fake_nbdfuse() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line says nbdfuse (a sleep under that name)."""
    p = subprocess.Popen(
        ["bash", "-c", f"exec -a nbdfuse {PY} -c '{SLEEP}' -P /x/pid /x/fuse/disk nbd://h"]
    )
    deadline = 200
    while Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[0] != b"nbdfuse":
        assert deadline and p.poll() is None, "the stand-in did not start"
        deadline -= 1
        subprocess.run(["sleep", "0.01"])
    yield p
    p.kill()
    p.wait()


def record(tmp: Path, volume: str, **kw: object) -> Attachment:
    rec = Attachment(volume=volume, endpoint="nbd://127.0.0.1:1/x", work=str(tmp / volume))
    for k, v in kw.items():
        setattr(rec, k, v)
    rec.save(str(tmp))
    return rec


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_every_record_gets_a_verdict_and_broken_ones_say_why(
    tmp_path: Path, fake_nbdfuse: subprocess.Popen[bytes]
) -> None:
    dev = tmp_path / "loop-stand-in"
    dev.write_bytes(bytes(4096))
    common = {"kind": "nbdfuse", "device": str(dev)}
    record(tmp_path, "unfinished", kind="nbdfuse")
    record(tmp_path, "no-device", kind="nbdfuse", device=str(tmp_path / "nope"))
    record(tmp_path, "dead", **common, fuse_pid=dead_pid())
    record(tmp_path, "reused-pid", **common, fuse_pid=os.getpid())
    real = REAL
    got = Path(f"/proc/{fake_nbdfuse.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in got] == real
    record(
        tmp_path,
        "other-nbdfuse",
        **common,
        fuse_pid=fake_nbdfuse.pid,
        fuse_argv=["nbdfuse", "-P", "/y"],
    )
    record(tmp_path, "no-mount", **common, fuse_pid=fake_nbdfuse.pid, fuse_argv=real)
    record(tmp_path, "kernel", kind="nbd", device=str(dev), nbd_device=str(dev))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "controller").mkdir()  # the controller's publications: not attachments
    (tmp_path / "controller" / "x.json").write_text("{}")
    found = adopt(str(tmp_path))
    assert set(found) == {
        "unfinished", "no-device", "dead", "reused-pid", "other-nbdfuse", "no-mount",
        "kernel", "bad",
    }  # fmt: skip
    assert "no block device was recorded" in found["unfinished"]
    assert found["no-device"] == f"{tmp_path / 'nope'} is gone"
    assert "is gone" in found["dead"] and "nbdfuse (pid" in found["dead"]
    assert f"pid {os.getpid()} is not nbdfuse now" in found["reused-pid"]
    assert "is another nbdfuse" in found["other-nbdfuse"]
    assert found["no-mount"] == f"the FUSE mount {tmp_path / 'no-mount' / 'fuse'} is gone"
    assert "is no longer connected" in found["kernel"]
    assert "record of volume bad" in found["bad"] and "is bad" in found["bad"]
    # nothing was changed: every record is still there for NodeUnstageVolume
    assert len(list(tmp_path.glob("*.json"))) == 8


def test_a_record_from_before_adoption_loads_and_is_checked_by_pid_and_name(
    tmp_path: Path, fake_nbdfuse: subprocess.Popen[bytes]
) -> None:
    rec = Attachment(volume="old", endpoint="nbd://127.0.0.1:1/old", work=str(tmp_path / "old"))
    old = asdict(rec)
    del old["fuse_argv"]  # written by a plugin that did not record nbdfuse's command line
    dev = tmp_path / "dev"
    dev.write_bytes(b"")
    old.update(kind="nbdfuse", device=str(dev), fuse_pid=fake_nbdfuse.pid)
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Attachment.load(str(tmp_path), "old")
    assert loaded is not None and loaded.fuse_argv == []
    # any nbdfuse at that pid passes the process check; the FUSE mount check comes next
    assert adopt(str(tmp_path)) == {"old": f"the FUSE mount {tmp_path / 'old' / 'fuse'} is gone"}


def test_the_command_line_is_recorded_with_the_attachment(tmp_path: Path) -> None:
    rec = record(tmp_path, "v", fuse_argv=["nbdfuse", "-P", "p", "f", "nbd://h:1/v+growable"])
    back = Attachment.load(str(tmp_path), "v")
    assert back is not None and back.fuse_argv == rec.fuse_argv
