"""The trash of a disk: DELETE moves a replica there (one rename); the agent's sweep
empties what is older than its grace; until then it can be moved back."""

from __future__ import annotations

import os
from pathlib import Path

from cargohold.replica import trash
from cargohold.replica.registry import Registry

CID = "c-" + "0" * 32


def test_delete_moves_a_replica_to_the_trash_and_it_can_come_back(tmp_path: Path) -> None:
    reg = Registry([str(tmp_path)])
    rep = reg.create("vol-r1", 1 << 20, cluster_id=CID)
    rep.store.write(0, b"\x5a" * 4096)
    rep.store.flush()
    reg.delete("vol-r1")
    assert reg.list() == []
    ((rid, path, at),) = trash.entries(str(tmp_path))
    assert rid == "vol-r1" and os.path.isdir(path) and abs(at - __import__("time").time()) < 5
    assert trash.trash_bytes(str(tmp_path)) > 0
    # undo: move it back; it is listed again, with its cluster id and data
    os.rename(path, tmp_path / "replicas" / "vol-r1")
    reg2 = Registry([str(tmp_path)])
    (item,) = reg2.list()
    assert (item["id"], item["cluster_id"], item["size"]) == ("vol-r1", CID, 1 << 20)
    assert reg2.get("vol-r1").store.read(0, 4096) == b"\x5a" * 4096


def test_deleting_twice_in_one_second_keeps_both(tmp_path: Path) -> None:
    reg = Registry([str(tmp_path)])
    for _ in range(2):
        reg.create("vol-r1", 1 << 20)
        reg.delete("vol-r1")
    assert [e[0] for e in trash.entries(str(tmp_path))] == ["vol-r1", "vol-r1"]


def test_the_sweep_empties_only_what_is_older_than_the_grace(tmp_path: Path) -> None:
    disks = [tmp_path / "d0", tmp_path / "d1"]
    for d in disks:
        (d / "replicas").mkdir(parents=True)
    now = 1_000_000.0
    old = disks[0] / "replicas" / "old-r1"
    new = disks[1] / "replicas" / "new-r2"
    for p in (old, new):
        p.mkdir()
        (p / "replica.meta").write_bytes(b"x")
    trash.move_to_trash(str(disks[0]), str(old), "old-r1", at=now - 90_000)
    trash.move_to_trash(str(disks[1]), str(new), "new-r2", at=now - 100)
    (disks[0] / "trash" / "stray-file").write_text("not an entry")  # left alone
    gone = trash.sweep([str(d) for d in disks], grace=86_400, now=now)
    assert [os.path.basename(p) for p in gone] == [f"old-r1.{int(now - 90_000)}"]
    assert [e[0] for e in trash.entries(str(disks[1]))] == ["new-r2"]
    assert (disks[0] / "trash" / "stray-file").exists()
    assert trash.sweep([str(d) for d in disks], grace=86_400, now=now) == []
    assert trash.sweep([str(tmp_path / "no-such-disk")], grace=0) == []
