"""CHANGED with ``"generations": true``: the runs codec (``replica_wire.generation_runs``),
its checked-in sample (docs/formats/replica-wire.md, "CHANGED with generations"), and every
malformed answer refused with a RemoteProtocolError that says what is wrong."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from cargohold.errors import RemoteProtocolError, Unsupported
from cargohold.protocol import replica_wire as wire

SAMPLE = pathlib.Path(__file__).parents[2] / "data" / "replica-changed-generations-sample.bin"


def test_the_sample_reply_decodes_as_documented() -> None:
    """Request 5, the replica complete through generation 7: blocks 0-1 recorded at 12 by a
    write not completed (pending), block 2 at 12 completed, blocks 10-12 at 9."""
    (reply,) = wire.ReplyDecoder().feed(SAMPLE.read_bytes())
    assert (reply.id, reply.status, reply.generation) == (5, 0, 7)
    body = reply.result()
    assert body["since"] == 7
    assert wire.generation_runs(body["extents"]) == [
        (0, 8192, 12, 1),
        (8192, 4096, 12, 0),
        (40960, 12288, 9, 0),
    ]


@st.composite
def good_runs(draw: Any) -> list[wire.GenerationRun]:
    out: list[wire.GenerationRun] = []
    end = 0
    for _ in range(draw(st.integers(0, 12))):
        offset = end + 4096 * draw(st.integers(0, 3))
        length = 4096 * draw(st.integers(1, 5))
        gen = draw(st.integers(1, wire.MAX_GENERATION))
        pending = draw(st.integers(0, 1))
        if out and offset == end and out[-1][2:] == (gen, pending):
            pending ^= 1  # adjacent runs differ, as the store joins them
        out.append((offset, length, gen, pending))
        end = offset + length
    return out


@given(good_runs())
@settings(max_examples=300)
def test_round_trip(runs: list[wire.GenerationRun]) -> None:
    body = json.loads(wire.encode_generation_runs(3, runs))
    assert wire.generation_runs(body["extents"]) == runs


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=3),
        lambda c: st.lists(c, max_size=5),
        max_leaves=30,
    )
)
@settings(max_examples=500)
def test_anything_else_is_refused_cleanly(junk: Any) -> None:
    """Any JSON value either decodes to valid runs or raises one of the two errors."""
    try:
        got = wire.generation_runs(junk)
    except (RemoteProtocolError, Unsupported):
        return
    end = 0
    for offset, length, gen, pending in got:  # what was accepted keeps the rules
        assert offset % 4096 == 0 and length > 0 and length % 4096 == 0 and offset >= end
        assert 0 < gen <= wire.MAX_GENERATION and pending in (0, 1)
        end = offset + length


@pytest.mark.parametrize(
    ("extents", "why"),
    [
        ({"a": 1}, "a list expected"),
        ([[0, 4096, 1]], "four integers"),
        ([[0, 4096, 1, True]], "four integers"),
        ([[0, 4096, 1.0, 0]], "four integers"),
        ([[1, 4096, 1, 0]], "whole blocks"),
        ([[0, 0, 1, 0]], "whole blocks"),
        ([[8192, 4096, 1, 0], [0, 4096, 1, 0]], "in order"),
        ([[0, 8192, 1, 0], [4096, 4096, 2, 0]], "not overlapping"),
        ([[0, 4096, 0, 0]], "bad generation"),
        ([[0, 4096, 1 << 62, 0]], "bad generation"),
        ([[0, 4096, 1, 2]], "bad generation or pending"),
        ([[0, 4096, 1, 0], [4096, 4096, 1, 0]], "not joined"),
    ],
)
def test_malformed_runs_say_what_is_wrong(extents: Any, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        wire.generation_runs(extents)


def test_an_older_server_s_pairs_are_unsupported() -> None:
    with pytest.raises(Unsupported, match="does not report generations"):
        wire.generation_runs([[0, 4096], [8192, 4096]])
