"""Decide, for every block, whether what the volume holds is allowed by the history.

The rule (docs/verify.md has the reasoning). A write is *durable* when:

- rule ``flushed`` (after a crash; ``cargohold verify check``'s default): it was
  acknowledged before a FLUSH that completed was invoked (on any connection when the
  server offers multi-conn, else on the same connection), or it was an acknowledged FUA
  write;
- rule ``acked`` (no crash happened; ``cargohold verify run``'s default): it was
  acknowledged.

A block may hold the payload of write ``w`` only if ``w`` was issued to that block (its
range covers the block, with the writer and run in the header matching the history) and
no durable write ``d`` on the block was invoked after ``w`` ended (``d.t0 > w.t1``): a
durable write that began after ``w`` finished replaces ``w`` for good. A write that
failed with an error reply ended at its reply (it may have landed before); one that was
lost with its connection, or never answered, never ends (it may land at any time). So
for a block whose newest durable write began at ``floor`` the allowed values are exactly
the writes on it with ``t1 >= floor`` — the last durable one, any concurrent with it, and
every later one whatever became of it. Zeros are allowed only where no write is durable
(the volume starts as zeros). Anything else is a violation: an older value (``stale``),
``zeros`` where a write is durable (``lost``), ``garbage``, a checksum failure
(``corrupt``), a payload of another block (``misplaced``), of a write never issued to this
block (``never-issued``) or of another run (``foreign``).

The decision is vectorised: ``Checker`` turns the history into sorted arrays (the floor
of every block a durable write touched) and judges a whole decoded chunk with numpy.
``check_volume`` reads the volume back in large chunks over several connections.
Reads while writing (``workload.py``) use ``judge`` with a floor taken when the read was
sent (writes acknowledged before it: the ``acked`` rule as of that moment).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cargohold.constants import BLOCK_SIZE
from cargohold.verify import payload as P
from cargohold.verify.history import ACKED, History

RULE_FLUSHED = "flushed"
RULE_ACKED = "acked"
RULES = (RULE_FLUSHED, RULE_ACKED)

# reasons (codes in the vectorised judgement; 0 = allowed)
OK = 0
GARBAGE = 1
CORRUPT = 2
FOREIGN = 3
LOST = 4
NEVER_ISSUED = 5
MISPLACED = 6
STALE = 7
REASONS = {
    GARBAGE: "garbage",
    CORRUPT: "corrupt",
    FOREIGN: "foreign",
    LOST: "lost",
    NEVER_ISSUED: "never-issued",
    MISPLACED: "misplaced",
    STALE: "stale",
}
EXPLAIN = {
    GARBAGE: "neither zeros nor a payload",
    CORRUPT: "a payload whose CRC32C does not match (torn or rotted)",
    FOREIGN: "a payload of another run",
    LOST: "zeros, but a durable write covers this block",
    NEVER_ISSUED: "a payload of a write never issued to this block",
    MISPLACED: "a payload addressed to another block",
    STALE: "an older value: a durable write began after this one ended",
}
MAX_EXPECTED = 16  # allowed writes listed per violation (the count is always given)


def judge(
    blocks: np.ndarray,
    obs: P.Observed,
    issued: np.ndarray,
    w_block: np.ndarray,
    w_n: np.ndarray,
    w_writer: np.ndarray,
    w_t1: np.ndarray,
    floor: np.ndarray,
) -> np.ndarray:
    """The reason code of every block (0: allowed).

    ``blocks``: block numbers read; ``obs``: what they hold; for each block, the history's
    facts about the write its header names (``issued``: that sequence id exists;
    ``w_*``: its range, writer and end time, arbitrary where not issued); ``floor``: the
    invocation time of the newest durable write on the block (-inf: none)."""
    kind = obs.kind
    reason = np.full(len(blocks), GARBAGE, np.int8)
    reason[kind == P.CORRUPT] = CORRUPT
    reason[kind == P.FOREIGN] = FOREIGN
    zeros = kind == P.ZEROS
    reason[zeros] = np.where(np.isneginf(floor[zeros]), OK, LOST)
    pay = kind == P.PAYLOAD
    hdr_block = obs.block.astype(np.int64)
    misplaced = hdr_block != blocks
    covers = issued & (w_block <= blocks) & (blocks < w_block + w_n)
    covers &= w_writer == obs.writer.astype(np.int64)
    fresh = w_t1 >= floor
    r = np.where(misplaced, MISPLACED, np.where(~covers, NEVER_ISSUED, np.where(fresh, OK, STALE)))
    reason[pay] = r[pay]
    return reason


@dataclass
class Violation:
    block: int
    reason: str
    observed: dict[str, Any]
    expected: list[Any]  # "zeros" and/or write descriptions
    expected_count: int
    superseded_by: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "block": self.block,
            "reason": self.reason,
            "observed": self.observed,
            "expected": self.expected,
            "expected_count": self.expected_count,
        }
        if self.superseded_by is not None:
            out["superseded_by"] = self.superseded_by
        return out


@dataclass
class CheckResult:
    rule: str
    first_block: int
    blocks_checked: int
    blocks_written: int  # distinct blocks the history wrote
    history: dict[str, int]
    violations_total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)  # the first ``max_details``
    read_violations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return self.violations_total == 0 and not self.read_violations

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rule": self.rule,
            "first_block": self.first_block,
            "blocks_checked": self.blocks_checked,
            "blocks_written": self.blocks_written,
            "history": self.history,
            "violations_total": self.violations_total,
            "by_reason": self.by_reason,
            "violations": [v.to_json() for v in self.violations],
            "read_violations": self.read_violations,
            "seconds": round(self.seconds, 3),
            "bytes_read": self.bytes_read,
        }


class Checker:
    """The history, prepared for judging chunks; ``check_chunk`` accumulates a result."""

    def __init__(self, history: History, rule: str = RULE_FLUSHED, max_details: int = 100):
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r} (expected one of {', '.join(RULES)})")
        self.history = history
        self.rule = rule
        self.max_details = max_details
        self.wt = wt = history.table()
        acked = wt.status == ACKED
        if rule == RULE_ACKED:
            durable = acked.copy()
        else:
            f_t0 = np.asarray(history.f_t0, np.float64)
            f_ok = np.asarray(history.f_status, np.int8) == ACKED
            f_writer = np.asarray(history.f_writer, np.int64)
            f_ok[0] = False
            if history.multi_conn:
                horizon = f_t0[f_ok].max() if f_ok.any() else -math.inf
                covered = wt.t1 < horizon
            else:  # a flush covers only the writes of its own connection
                writers = max(int(wt.writer.max(initial=0)), int(f_writer.max(initial=0))) + 1
                per = np.full(writers, -math.inf)
                np.maximum.at(per, f_writer[f_ok], f_t0[f_ok])
                covered = wt.t1 < per[wt.writer]
            durable = acked & (wt.fua | covered)
        durable[0] = False
        self.durable = durable
        # the floor of every block a durable write touched: the newest durable invocation
        seqs = np.flatnonzero(durable)
        self.floor_blocks, self.floor_t0, self.floor_seq = _newest_per_block(
            seqs, wt.block[seqs], wt.n[seqs], wt.t0[seqs]
        )
        all_seqs = np.arange(1, len(wt.block))
        written, _, _ = _newest_per_block(
            all_seqs, wt.block[all_seqs], wt.n[all_seqs], wt.t0[all_seqs]
        )
        self.result = CheckResult(
            rule,
            history.first_block,
            0,
            len(written),
            history.counts(),
            read_violations=list(history.read_violations),
        )

    def floor_of(self, blocks: np.ndarray) -> np.ndarray:
        floor = np.full(len(blocks), -math.inf)
        if len(self.floor_blocks):
            pos = np.searchsorted(self.floor_blocks, blocks)
            pos_c = np.minimum(pos, len(self.floor_blocks) - 1)
            hit = self.floor_blocks[pos_c] == blocks
            floor[hit] = self.floor_t0[pos_c[hit]]
        return floor

    def check_chunk(self, obs: P.Observed) -> np.ndarray:
        """Judge one decoded chunk; returns the reason codes and records violations."""
        n = len(obs)
        blocks = np.arange(obs.first_block, obs.first_block + n, dtype=np.int64)
        wt = self.wt
        seq = obs.seq.astype(np.int64, copy=False)
        issued = (obs.kind == P.PAYLOAD) & (seq >= 1) & (obs.seq < len(wt.block))
        s = np.where(issued, seq, 0)
        floor = self.floor_of(blocks)
        reason = judge(blocks, obs, issued, wt.block[s], wt.n[s], wt.writer[s], wt.t1[s], floor)
        self.result.blocks_checked += n
        bad = np.flatnonzero(reason)
        if len(bad):
            r = self.result
            r.violations_total += len(bad)
            codes, counts = np.unique(reason[bad], return_counts=True)
            for c, k in zip(codes.tolist(), counts.tolist(), strict=True):
                r.by_reason[REASONS[c]] = r.by_reason.get(REASONS[c], 0) + k
            for i in bad[: max(0, self.max_details - len(r.violations))].tolist():
                r.violations.append(self._violation(int(blocks[i]), int(reason[i]), obs, i))
        return reason

    def allowed(self, block: int) -> tuple[list[Any], int]:
        """What ``block`` may hold: ("zeros" and/or write descriptions, how many)."""
        wt = self.wt
        floor = self.floor_of(np.array([block], np.int64))[0]
        mask = (wt.block <= block) & (block < wt.block + wt.n) & (wt.t1 >= floor)
        mask[0] = False
        seqs = np.flatnonzero(mask)
        out: list[Any] = ["zeros"] if math.isinf(floor) else []
        count = len(out) + len(seqs)
        # the newest first: the most useful to read
        order = seqs[np.argsort(-wt.t0[seqs], kind="stable")]
        out += [self.history.describe_write(int(q)) for q in order[:MAX_EXPECTED]]
        return out, count

    def _violation(self, block: int, code: int, obs: P.Observed, i: int) -> Violation:
        observed = obs.describe(i)
        seq = observed.get("write")
        if obs.kind[i] == P.PAYLOAD and isinstance(seq, int) and 1 <= seq <= self.history.writes:
            observed["history"] = self.history.describe_write(seq)
        expected, count = self.allowed(block)
        superseded = None
        if code in (STALE, LOST):
            pos = int(np.searchsorted(self.floor_blocks, block))
            superseded = self.history.describe_write(int(self.floor_seq[pos]))
        observed["explain"] = EXPLAIN[code]
        return Violation(block, REASONS[code], observed, expected, count, superseded)


def _newest_per_block(
    seqs: np.ndarray, first: np.ndarray, n: np.ndarray, t0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expand writes to the blocks they cover: (sorted unique blocks, the newest
    invocation time on each, that write's id)."""
    if len(seqs) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64)
    total = int(n.sum())
    rep = np.repeat(np.arange(len(seqs)), n)
    starts = np.repeat(np.cumsum(n) - n, n)
    blocks = first[rep] + (np.arange(total) - starts)
    times = t0[rep]
    order = np.lexsort((times, blocks))
    blocks, times, owner = blocks[order], times[order], seqs[rep[order]]
    last = np.ones(len(blocks), bool)
    last[:-1] = blocks[1:] != blocks[:-1]
    return blocks[last], times[last], owner[last]


# --- reading a volume back ------------------------------------------------------------------


async def check_volume(
    reader: Any,
    history: History,
    rule: str = RULE_FLUSHED,
    chunk_bytes: int = 8 * 1024 * 1024,
    parallel: int = 8,
    max_details: int = 100,
) -> CheckResult:
    """Read the history's block range back through ``reader`` (a ``verify.client.Pool``
    or anything with ``async read(offset, length)``) and judge every block."""
    started = time.monotonic()
    checker = Checker(history, rule, max_details)
    bs = history.block_size
    if bs != BLOCK_SIZE:
        raise ValueError(f"history of {bs}-byte blocks; this checker reads {BLOCK_SIZE}")
    per = max(1, chunk_bytes // bs)
    first, end = history.first_block, history.first_block + history.nblocks
    starts = list(range(first, end, per))
    results: dict[int, P.Observed] = {}
    sem = asyncio.Semaphore(parallel)
    total = 0

    async def one(b: int) -> None:
        nonlocal total
        async with sem:
            count = min(per, end - b)
            data = await reader.read(b * bs, count * bs)
            total += len(data)
            results[b] = P.decode(data, b, history.run)

    # in order of blocks, so that the details name the lowest blocks first
    tasks = [asyncio.ensure_future(one(b)) for b in starts]
    try:
        for b, t in zip(starts, tasks, strict=True):
            await t
            checker.check_chunk(results.pop(b))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    r = checker.result
    r.seconds = time.monotonic() - started
    r.bytes_read = total
    return r
