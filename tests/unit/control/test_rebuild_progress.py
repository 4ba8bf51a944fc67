"""The manager reads a rebuild's progress from the keys the engine reports (engine/rebuild.py
sets ``done_bytes`` and ``total_bytes``): it once read other keys and showed none."""

from __future__ import annotations

from cargohold.control.engine_reports import rebuild_progress


def test_progress_from_what_the_engine_reports() -> None:
    assert rebuild_progress({"done_bytes": 256, "total_bytes": 1024, "copied_bytes": 9}) == 0.25
    assert rebuild_progress({"done_bytes": 2048, "total_bytes": 1024}) == 1.0
    assert rebuild_progress({"done_bytes": 0, "total_bytes": 1024}) == 0.0


def test_no_progress_without_a_rebuild_or_from_a_malformed_one() -> None:
    assert rebuild_progress(None) is None
    assert rebuild_progress({"done_bytes": 5, "total_bytes": 0}) is None
    assert rebuild_progress({"done_bytes": "x", "total_bytes": 10}) is None
    assert rebuild_progress(["done_bytes"]) is None
