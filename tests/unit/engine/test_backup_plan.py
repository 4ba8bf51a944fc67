"""The rule that decides between an incremental backup (a delta since the parent's
generation) and reading everything: a delta only when it is provably complete."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.engine.backup import HISTORY_LABEL, decode_history, encode_history, plan

HISTORY = [[1, 1], [3, 40]]


def parent(**kw: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "id": "p",
        "volume_id": "uid-1",
        "size": 1 << 30,
        "generation": 50,
        "labels": {HISTORY_LABEL: encode_history(HISTORY, 50)},
    }
    p.update(kw)
    return p


def decide(**kw: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {
        "parent_id": "p",
        "parent": parent(),
        "parent_generation": 50,
        "volume_id": "uid-1",
        "size": 1 << 30,
        "snapshot_generation": 80,
        "history": HISTORY,
    }
    args.update(kw)
    return plan(**args)


def test_a_parent_of_the_same_line_gives_a_delta_since_its_generation():
    p = decide()
    assert (p.since, p.parent, p.mode) == (50, "p", "incremental")
    assert "changed since parent p" in p.reason
    # later epochs after the parent are fine: the line up to the parent is the same
    p = decide(history=[*HISTORY, [4, 60]])
    assert p.mode == "incremental"
    # the manager may leave parent_generation out: the repository's record decides
    assert decide(parent_generation=None).mode == "incremental"
    # nothing changed since the parent: an empty delta
    assert decide(snapshot_generation=50).since == 50


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"parent_id": None}, "no parent"),
        ({"parent": None}, "not in the repository"),
        ({"parent": parent(volume_id="uid-0")}, "another volume"),
        ({"size": 2 << 30}, "size changed"),
        ({"parent": parent(generation=0)}, "nothing to start from"),
        ({"parent_generation": 49}, "disagrees"),
        ({"snapshot_generation": 49}, "newer than the snapshot"),
        ({"parent": parent(labels={})}, "no replica history"),
        # an engine of epoch 2 took over from a replica that had not seen generations
        # 30..50 of epoch 1's line, and numbered its own mutations from 30 again
        ({"history": [[1, 1], [2, 30]]}, "diverged"),
        # the parent's line had epoch 3 from 40; this replica's epoch 3 started later
        ({"history": [[1, 1], [3, 45]]}, "diverged"),
        # the replica's line ended epoch 3 before the parent's generation
        ({"history": [[1, 1], [3, 40], [5, 45]]}, "diverged"),
    ],
)
def test_anything_unproven_reads_everything(change, why):
    p = decide(**change)
    assert (p.since, p.parent, p.mode) == (0, None, "full")
    assert why in p.reason, p.reason


def test_history_labels_round_trip_and_stop_at_the_generation():
    text = encode_history([[1, 1], [3, 40], [7, 90]], 50)
    assert text == "1:1,3:40"
    assert decode_history(text) == [[1, 1], [3, 40]]
    assert decode_history("") == []
    assert decode_history("x:1") is None
