"""The verify checker's decision (cargohold.verify.checker) on synthetic histories: every
allowed and every violating case — flush ordering, FUA, failed and lost writes, writers
racing on one block, multi-conn or not — plus the payload codec, the history file, and
the speed of judging a 1 GiB volume."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import FormatError
from cargohold.verify import payload as P
from cargohold.verify.checker import RULE_ACKED, RULE_FLUSHED, Checker
from cargohold.verify.history import ACKED, FAILED, INFLIGHT, LOST, History
from cargohold.verify.report import SoakSummary, check_json, render_check

RUN = 0x5EED
ZERO = bytes(BLOCK_SIZE)


class Log:
    """A hand-written history: times are whatever the test says."""

    def __init__(self, nblocks: int = 16, multi_conn: bool = True) -> None:
        self.h = History(run=RUN, first_block=0, nblocks=nblocks, multi_conn=multi_conn)

    def write(
        self,
        block: int,
        t0: float,
        t1: float | None,
        status: int = ACKED,
        n: int = 1,
        writer: int = 0,
        fua: bool = False,
    ) -> int:
        seq = self.h.write_invoked(writer, block, n, fua, t0)
        if status != INFLIGHT:
            self.h.write_done(seq, status, t1 if t1 is not None else 0.0, "boom")
        return seq

    def flush(self, t0: float, t1: float, status: int = ACKED, writer: int = 0) -> int:
        fid = self.h.flush_invoked(writer, t0)
        if status != INFLIGHT:
            self.h.flush_done(fid, status, t1)
        return fid

    def content(self, seq: int, block: int) -> bytes:
        h = self.h
        data = P.encode(h.run, h.w_writer[seq], seq, h.w_block[seq], h.w_n[seq])
        k = block - h.w_block[seq]
        assert 0 <= k < h.w_n[seq]
        return bytes(data[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE])

    def verdict(self, volume: dict[int, bytes | int], rule: str = RULE_FLUSHED) -> dict[int, str]:
        """Judge a volume: block -> content (bytes) or a write id (its payload there);
        unlisted blocks are zeros. Returns the violations: block -> reason."""
        img = bytearray(self.h.nblocks * BLOCK_SIZE)
        for b, c in volume.items():
            img[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE] = (
                self.content(c, b) if isinstance(c, int) else c
            )
        checker = Checker(self.h, rule)
        checker.check_chunk(P.decode(img, 0, RUN))
        return {v.block: v.reason for v in checker.result.violations}


# --- the payload codec ----------------------------------------------------------------------


def test_payload_header_offsets_and_crc():
    data = P.encode(RUN, 3, 42, 100, 2)
    assert len(data) == 2 * BLOCK_SIZE
    assert data[:8] == b"CHVERIFY"
    assert int.from_bytes(data[8:10], "big") == 1  # version
    assert int.from_bytes(data[10:12], "big") == 3  # writer
    assert int.from_bytes(data[12:16], "big") == BLOCK_SIZE
    assert int.from_bytes(data[16:24], "big") == 100
    assert int.from_bytes(data[4096 + 16 : 4096 + 24], "big") == 101
    assert int.from_bytes(data[24:32], "big") == 42
    assert int.from_bytes(data[32:40], "big") == RUN
    import crc32c

    assert int.from_bytes(data[4092:4096], "big") == crc32c.crc32c(bytes(data[:4092]))
    assert data == P.encode(RUN, 3, 42, 100, 2)  # deterministic
    assert data[40:4092] != P.encode(RUN, 3, 43, 100, 1)[40:4092]  # another write differs


def test_decode_classifies_every_kind():
    good = P.encode(RUN, 1, 7, 0, 1)
    corrupt = bytearray(good)
    corrupt[2000] ^= 0x10
    foreign = P.encode(RUN + 1, 1, 7, 3, 1)
    garbage = b"\x01" + bytes(BLOCK_SIZE - 1)
    obs = P.decode(bytes(good) + ZERO + bytes(corrupt) + bytes(foreign) + garbage, 0, RUN)
    assert obs.kind.tolist() == [P.PAYLOAD, P.ZEROS, P.CORRUPT, P.FOREIGN, P.GARBAGE]
    assert obs.describe(0) == {"kind": "payload", "block": 0, "write": 7, "writer": 1, "run": RUN}
    assert obs.describe(1) == {"kind": "zeros"}


# --- allowed cases ----------------------------------------------------------------------------


def test_never_written_blocks_must_be_zeros():
    log = Log()
    w = log.write(0, 1, 2)
    assert log.verdict({}) == {}
    assert log.verdict({5: log.content(w, 0)}) == {5: "misplaced"}  # block 0's, in block 5
    stray = P.encode(RUN, 0, 99, 6, 1)  # a write never issued at all
    assert log.verdict({6: bytes(stray)}) == {6: "never-issued"}


def test_the_last_flushed_write_or_any_later_one():
    log = Log()
    w1 = log.write(1, 1, 2)
    w2 = log.write(1, 3, 4)
    log.flush(5, 6)
    w3 = log.write(1, 7, 8)  # acknowledged after the flush: not durable
    w4 = log.write(1, 9, None, INFLIGHT)
    assert log.verdict({1: w2}) == {}
    assert log.verdict({1: w3}) == {}
    assert log.verdict({1: w4}) == {}
    assert log.verdict({1: w1}) == {1: "stale"}
    assert log.verdict({}) == {1: "lost"}
    # without a crash only the newest acknowledged write (or a later one) may be read
    assert log.verdict({1: w2}, RULE_ACKED) == {1: "stale"}
    assert log.verdict({1: w3}, RULE_ACKED) == {}
    assert log.verdict({1: w4}, RULE_ACKED) == {}


def test_nothing_flushed_allows_zeros_and_every_write():
    log = Log()
    w1 = log.write(2, 1, 2)
    w2 = log.write(2, 3, 4)
    log.flush(1.5, 5)  # sent before w1 was acknowledged: covers nothing
    log.flush(6, 7, FAILED)  # failed: covers nothing
    log.flush(8, 0, INFLIGHT)  # never answered: covers nothing
    for volume in ({}, {2: w1}, {2: w2}):
        assert log.verdict(volume) == {}
    assert log.verdict({}, RULE_ACKED) == {2: "lost"}


def test_an_acknowledged_fua_write_is_durable_without_a_flush():
    log = Log()
    w1 = log.write(3, 1, 2)
    w2 = log.write(3, 3, 4, fua=True)
    w3 = log.write(3, 5, 6)
    assert log.verdict({3: w2}) == {}
    assert log.verdict({3: w3}) == {}
    assert log.verdict({3: w1}) == {3: "stale"}
    assert log.verdict({}) == {3: "lost"}
    log.write(4, 1, 0, FAILED, fua=True)  # a failed FUA write guarantees nothing
    assert log.verdict({3: w2}) == {}


def test_failed_and_lost_writes_may_or_may_not_have_landed():
    log = Log()
    w1 = log.write(5, 1, 2)
    log.flush(3, 4)
    failed = log.write(5, 5, 6, FAILED)
    lost = log.write(5, 7, None, LOST)
    for volume in ({5: w1}, {5: failed}, {5: lost}):
        assert log.verdict(volume) == {}
    # a durable write that began after the failed one's error reply replaces it for good;
    # a lost write never ended: it may still land
    w2 = log.write(5, 8, 9)
    log.flush(10, 11)
    assert log.verdict({5: failed}) == {5: "stale"}
    assert log.verdict({5: lost}) == {}
    assert log.verdict({5: w2}) == {}
    assert log.verdict({5: w1}) == {5: "stale"}


def test_writers_racing_on_one_block():
    log = Log()
    a = log.write(7, 1, 5, writer=0)  # overlaps b in time
    b = log.write(7, 2, 4, writer=1)
    log.flush(6, 7, writer=1)
    assert log.verdict({7: a}) == {}
    assert log.verdict({7: b}) == {}  # either may have been applied last
    c = log.write(7, 8, 9, writer=2)  # strictly after both
    log.flush(10, 11, writer=0)
    assert log.verdict({7: c}) == {}
    assert log.verdict({7: a}) == {7: "stale"}
    assert log.verdict({7: b}) == {7: "stale"}
    # a write with its header's writer changed was never issued
    forged = bytearray(log.content(c, 7))
    forged[10:12] = (5).to_bytes(2, "big")
    import crc32c

    forged[4092:] = crc32c.crc32c(bytes(forged[:4092])).to_bytes(4, "big")
    assert log.verdict({7: bytes(forged)}) == {7: "never-issued"}


def test_multi_block_writes_tear_per_block():
    log = Log()
    w1 = log.write(8, 1, 2, n=4)
    log.flush(3, 4)
    w2 = log.write(9, 5, None, LOST, n=2)
    # blocks 9 and 10 may hold either write, independently
    assert log.verdict({8: w1, 9: w2, 10: w1, 11: w1}) == {}
    assert log.verdict({8: w1, 9: w1, 10: w2, 11: w1}) == {}
    assert log.verdict({8: w1, 9: w1, 10: w1}) == {11: "lost"}


def test_without_multi_conn_a_flush_covers_only_its_own_connection():
    log = Log(multi_conn=False)
    log.write(12, 1, 2, writer=0)
    log.flush(3, 4, writer=1)
    assert log.verdict({}) == {}  # writer 0's write was never flushed
    log.flush(5, 6, writer=0)
    assert log.verdict({}) == {12: "lost"}
    multi = Log(multi_conn=True)
    multi.write(12, 1, 2, writer=0)
    multi.flush(3, 4, writer=1)
    assert multi.verdict({}) == {12: "lost"}


def test_garbage_corruption_and_other_runs_are_violations_anywhere():
    log = Log()
    w = log.write(0, 1, 2)
    bad = bytearray(log.content(w, 0))
    bad[100] ^= 1
    other = P.encode(RUN + 1, 0, w, 0, 1)
    assert log.verdict({0: bytes(bad)}) == {0: "corrupt"}
    assert log.verdict({0: bytes(other)}) == {0: "foreign"}
    assert log.verdict({0: b"\xff" * BLOCK_SIZE}) == {0: "garbage"}
    assert log.verdict({15: b"\xff" * BLOCK_SIZE}) == {15: "garbage"}


def test_violation_details_name_expected_and_observed():
    log = Log()
    w1 = log.write(1, 1, 2)
    w2 = log.write(1, 3, 4)
    log.flush(5, 6)
    w3 = log.write(1, 7, None, LOST)
    img = bytearray(log.h.nblocks * BLOCK_SIZE)
    img[BLOCK_SIZE : 2 * BLOCK_SIZE] = log.content(w1, 1)
    checker = Checker(log.h)
    checker.check_chunk(P.decode(img, 0, RUN))
    r = checker.result
    assert not r.ok and r.violations_total == 1 and r.by_reason == {"stale": 1}
    (v,) = r.violations
    j = v.to_json()
    assert j["block"] == 1 and j["reason"] == "stale"
    assert j["observed"]["write"] == w1 and j["observed"]["history"]["status"] == "acknowledged"
    assert [e["write"] for e in j["expected"]] == [w3, w2] and j["expected_count"] == 2
    assert j["superseded_by"]["write"] == w2
    out = json.loads(check_json(r))
    assert out["violations"][0]["block"] == 1 and out["ok"] is False
    render_check(r)  # prints without error


def test_history_round_trips_through_json_lines(tmp_path):
    log = Log()
    w1 = log.write(1, 1, 2)
    log.write(2, 1.5, 2.5, FAILED)
    log.write(3, 1.6, None, LOST)
    log.write(4, 1.7, None, INFLIGHT)
    log.flush(3, 4)
    log.h.finish("duration")
    path = tmp_path / "h.jsonl"
    log.h.save(str(path))
    back = History.load(str(path))
    assert back.counts() == log.h.counts()
    assert back.w_t1[3] == float("inf") and back.w_error[2] == "boom"
    t1, t2 = log.h.table(), back.table()
    for f in ("block", "n", "writer", "fua", "t0", "t1", "status"):
        assert np.array_equal(getattr(t1, f), getattr(t2, f))
    # streamed, and cut short by a crash mid-line
    stream = tmp_path / "s.jsonl"
    with open(stream, "w") as f:
        h = History(run=RUN, first_block=0, nblocks=16)
        h.stream(f)
        s = h.write_invoked(0, 1, 1, False, 1.0)
        h.write_done(s, ACKED, 2.0)
        h.flush_done(h.flush_invoked(0, 3.0), ACKED, 4.0)
        f.write('{"e": "w", "id": 2, "c"')
    back = History.load(str(stream))
    assert back.writes == 1 and back.flushes == 1 and back.w_status[1] == ACKED
    log2 = Log()
    log2.h = back
    assert log2.verdict({}) == {1: "lost"} and log2.verdict({1: w1}) == {}


@pytest.mark.parametrize(
    "text",
    ["", "not json\n", '{"type": "other"}\n', '{"type": "cargohold-verify-history", "version": 9}'],
)
def test_bad_history_files(tmp_path, text):
    p = tmp_path / "h.jsonl"
    p.write_text(text)
    with pytest.raises(FormatError):
        History.load(str(p))


def test_soak_summary_totals():
    log = Log()
    log.write(1, 1, 2)
    checker = Checker(log.h)
    checker.check_chunk(P.decode(bytearray(16 * BLOCK_SIZE), 0, RUN))
    s = SoakSummary()
    s.add("kill engine", checker.result, 1.5)
    s.add("partition", checker.result, 3.5)
    t = s.totals()
    assert t["scenarios"] == 2 and t["writes_checked"] == 2 and t["violations"] == 0
    assert t["converge_mean_seconds"] == 2.5 and t["converge_worst_seconds"] == 3.5
    s.render()


def test_judging_a_gibibyte_is_fast():
    """262144 blocks, 100k writes: the decision is vectorised (no loop per block)."""
    nblocks = (1 << 30) // BLOCK_SIZE
    rng = np.random.default_rng(1)
    h = History(run=RUN, first_block=0, nblocks=nblocks)
    starts = rng.integers(0, nblocks - 8, 100_000).tolist()
    ns = rng.integers(1, 9, 100_000).tolist()
    for i, (b, n) in enumerate(zip(starts, ns, strict=True)):
        seq = h.write_invoked(i % 4, b, n, False, float(i))
        h.write_done(seq, ACKED, i + 0.5)
    h.flush_done(h.flush_invoked(0, 1e9), ACKED, 1e9 + 1)
    t = time.perf_counter()
    checker = Checker(h)
    chunk = 2048  # 8 MiB chunks of zeros: every written block is "lost"
    zeros = bytearray(chunk * BLOCK_SIZE)
    for first in range(0, nblocks, chunk):
        checker.check_chunk(P.decode(zeros, first, RUN))
    elapsed = time.perf_counter() - t
    r = checker.result
    assert r.blocks_checked == nblocks and r.violations_total == r.blocks_written > 200_000
    assert elapsed < 10, elapsed
