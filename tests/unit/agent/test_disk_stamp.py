"""The disk stamp codec (docs/formats/disk-stamp.md) and its checked-in sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cargohold.agent import disk_stamp
from cargohold.agent.disk_stamp import DiskStamp, decode, encode
from cargohold.errors import FormatError

SAMPLE = Path(__file__).parents[2] / "data" / "disk-stamp-v1.json"
CID = "c-5f1c0d9e8b7a46e3a2c1f0e9d8c7b6a5"


def test_the_checked_in_sample_decodes() -> None:
    st = decode(SAMPLE.read_bytes())
    assert st == DiskStamp(cluster_id=CID, node="node-1", created_at=1764979200.0)
    assert encode(st) == SAMPLE.read_bytes()  # the sample is what the encoder writes


def test_the_documented_example_is_the_sample() -> None:
    doc = (Path(__file__).parents[3] / "docs/formats/disk-stamp.md").read_text()
    block = doc.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == json.loads(SAMPLE.read_text())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"magic": "nope"}, "magic"),
        ({"version": 2}, "version 2"),
        ({"cluster_id": "c-XYZ"}, "cluster id"),
        ({"cluster_id": None}, "cluster id"),
        ({"node": 7}, "node"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": True}, "created_at"),
    ],
)
def test_a_bad_stamp_says_what_is_wrong(change, why) -> None:  # type: ignore[no-untyped-def]
    body = {**json.loads(SAMPLE.read_text()), **change}
    with pytest.raises(FormatError, match=why):
        decode(json.dumps(body).encode())


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b"x" * 5000])
def test_garbage_is_a_format_error(raw: bytes) -> None:
    with pytest.raises(FormatError):
        decode(raw)


def test_write_then_read(tmp_path: Path) -> None:
    assert disk_stamp.read(str(tmp_path)) is None
    written = disk_stamp.write(str(tmp_path), CID, "node-7")
    assert disk_stamp.read(str(tmp_path)) == written
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / disk_stamp.STAMP_FILE).write_text("{broken")
    with pytest.raises(FormatError, match=r"cargohold-disk\.json"):
        disk_stamp.read(str(tmp_path))
