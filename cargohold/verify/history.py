"""The log of a workload: every write's invocation and how it ended, every flush.

The workload (``workload.py``) records here; the checker (``checker.py``) decides from it
what each block may hold. Times are ``time.monotonic()`` seconds (CLOCK_MONOTONIC: one
clock for every process on the machine, so a history written by one process can be
checked by another, after the volume's engine crashed and restarted).

How a request ended (``status``):

- ``INFLIGHT``: no reply seen (the workload itself died, or stopped waiting);
- ``ACKED``: the server said it succeeded;
- ``FAILED``: the server answered with an error (a write may still have landed, before
  the reply);
- ``LOST``: the connection dropped first (a write may land at any time, even later).

Saved as JSON lines (``save`` / ``load``, or streamed while running with ``stream``):
the first line is the header, then one line per event, in the order they happened::

    {"type": "cargohold-verify-history", "version": 1, "run": 123, "first_block": 0,
     "nblocks": 16384, "block_size": 4096, "multi_conn": true, "uri": "nbd://...",
     "wall_start": 1700000000.0}
    {"e": "w", "id": 1, "c": 0, "b": 17, "n": 4, "fua": 0, "t": 5123.001}   write issued
    {"e": "ok", "id": 1, "t": 5123.004}                                    acknowledged
    {"e": "err", "id": 2, "t": 5123.005, "error": "EIO: ..."}                error reply
    {"e": "lost", "id": 3, "t": 5123.006, "error": "connection lost"}      no reply
    {"e": "f", "id": 1, "c": 0, "t": 5123.010}                              flush issued
    {"e": "fok" | "ferr" | "flost", "id": 1, "t": 5123.020}                 flush ended
    {"e": "rv", "block": 9, "t": 5123.1, ...}                a read-while-writing violation
    {"e": "end", "why": "duration", "reads_checked": 812}    the workload stopped

A truncated last line (the writer was killed mid-line) is ignored when loading.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import FormatError

FORMAT = "cargohold-verify-history"
VERSION = 1
VERSIONS_READ = frozenset({1})

INFLIGHT, ACKED, FAILED, LOST = 0, 1, 2, 3
STATUS_NAMES = {INFLIGHT: "in flight", ACKED: "acknowledged", FAILED: "failed", LOST: "lost"}
_END_EVENTS = {"ok": ACKED, "err": FAILED, "lost": LOST}
_FLUSH_END_EVENTS = {"fok": ACKED, "ferr": FAILED, "flost": LOST}


@dataclass(frozen=True, slots=True)
class WriteTable:
    """The writes as numpy arrays indexed by sequence id (index 0 is unused)."""

    block: np.ndarray  # int64 first block
    n: np.ndarray  # int64 blocks
    writer: np.ndarray  # int64
    fua: np.ndarray  # bool
    t0: np.ndarray  # float64 invocation
    t1: np.ndarray  # float64 end (inf while in flight or lost)
    status: np.ndarray  # int8


@dataclass
class History:
    run: int
    first_block: int
    nblocks: int
    block_size: int = BLOCK_SIZE
    multi_conn: bool = True
    uri: str = ""
    wall_start: float = 0.0
    # writes by sequence id: index 0 is a placeholder so that seq == index
    w_block: list[int] = field(default_factory=lambda: [0])
    w_n: list[int] = field(default_factory=lambda: [0])
    w_writer: list[int] = field(default_factory=lambda: [0])
    w_fua: list[bool] = field(default_factory=lambda: [False])
    w_t0: list[float] = field(default_factory=lambda: [0.0])
    w_t1: list[float] = field(default_factory=lambda: [math.inf])
    w_status: list[int] = field(default_factory=lambda: [INFLIGHT])
    w_error: dict[int, str] = field(default_factory=dict)
    # flushes by id (index 0 unused)
    f_writer: list[int] = field(default_factory=lambda: [0])
    f_t0: list[float] = field(default_factory=lambda: [0.0])
    f_t1: list[float] = field(default_factory=lambda: [math.inf])
    f_status: list[int] = field(default_factory=lambda: [INFLIGHT])
    read_violations: list[dict[str, Any]] = field(default_factory=list)
    reads_checked: int = 0
    ended: str = ""  # why the workload stopped ("" while running, or if it was killed)
    _sink: IO[str] | None = None

    # --- recording ---------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "type": FORMAT,
            "version": VERSION,
            "run": self.run,
            "first_block": self.first_block,
            "nblocks": self.nblocks,
            "block_size": self.block_size,
            "multi_conn": self.multi_conn,
            "uri": self.uri,
            "wall_start": self.wall_start,
        }

    def stream(self, f: IO[str]) -> None:
        """Append every event to ``f`` as it happens (the header first)."""
        self._sink = f
        f.write(json.dumps(self.header()) + "\n")

    def flush_stream(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    def _emit(self, event: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink.write(json.dumps(event, separators=(",", ":")) + "\n")

    def write_invoked(self, writer: int, block: int, n: int, fua: bool, t: float) -> int:
        seq = len(self.w_block)
        self.w_block.append(block)
        self.w_n.append(n)
        self.w_writer.append(writer)
        self.w_fua.append(fua)
        self.w_t0.append(t)
        self.w_t1.append(math.inf)
        self.w_status.append(INFLIGHT)
        self._emit({"e": "w", "id": seq, "c": writer, "b": block, "n": n, "fua": int(fua), "t": t})
        return seq

    def write_done(self, seq: int, status: int, t: float, error: str = "") -> None:
        self.w_status[seq] = status
        self.w_t1[seq] = math.inf if status == LOST else t
        if error:
            self.w_error[seq] = error
        event = {ACKED: "ok", FAILED: "err", LOST: "lost"}[status]
        self._emit({"e": event, "id": seq, "t": t, **({"error": error} if error else {})})

    def flush_invoked(self, writer: int, t: float) -> int:
        fid = len(self.f_t0)
        self.f_writer.append(writer)
        self.f_t0.append(t)
        self.f_t1.append(math.inf)
        self.f_status.append(INFLIGHT)
        self._emit({"e": "f", "id": fid, "c": writer, "t": t})
        return fid

    def flush_done(self, fid: int, status: int, t: float, error: str = "") -> None:
        self.f_status[fid] = status
        self.f_t1[fid] = t
        event = {ACKED: "fok", FAILED: "ferr", LOST: "flost"}[status]
        self._emit({"e": event, "id": fid, "t": t, **({"error": error} if error else {})})

    def finish(self, why: str) -> None:
        """The workload ended (``why``); records how many reads it checked."""
        self.ended = why
        self._emit({"e": "end", "why": why, "reads_checked": self.reads_checked})
        self.flush_stream()

    def read_violation(self, violation: dict[str, Any]) -> None:
        self.read_violations.append(violation)
        self._emit({"e": "rv", **violation})

    # --- looking at it -----------------------------------------------------------------------
    @property
    def writes(self) -> int:
        return len(self.w_block) - 1

    @property
    def flushes(self) -> int:
        return len(self.f_t0) - 1

    def counts(self) -> dict[str, int]:
        st = np.asarray(self.w_status[1:], np.int8)
        fs = np.asarray(self.f_status[1:], np.int8)
        return {
            "writes": self.writes,
            "writes_acked": int((st == ACKED).sum()),
            "writes_failed": int((st == FAILED).sum()),
            "writes_lost": int((st == LOST).sum()),
            "writes_in_flight": int((st == INFLIGHT).sum()),
            "writes_fua": int(np.count_nonzero(self.w_fua[1:])),
            "flushes": self.flushes,
            "flushes_acked": int((fs == ACKED).sum()),
            "reads_checked": self.reads_checked,
        }

    def table(self) -> WriteTable:
        return WriteTable(
            np.asarray(self.w_block, np.int64),
            np.asarray(self.w_n, np.int64),
            np.asarray(self.w_writer, np.int64),
            np.asarray(self.w_fua, bool),
            np.asarray(self.w_t0, np.float64),
            np.asarray(self.w_t1, np.float64),
            np.asarray(self.w_status, np.int8),
        )

    def describe_write(self, seq: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "write": seq,
            "writer": self.w_writer[seq],
            "blocks": [self.w_block[seq], self.w_block[seq] + self.w_n[seq]],
            "status": STATUS_NAMES[self.w_status[seq]],
            "fua": self.w_fua[seq],
            "invoked": round(self.w_t0[seq], 6),
        }
        if math.isfinite(self.w_t1[seq]):
            out["ended"] = round(self.w_t1[seq], 6)
        if seq in self.w_error:
            out["error"] = self.w_error[seq]
        return out

    # --- saving and loading -----------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the whole history (the same format ``stream`` produces, events grouped:
        the invocations in order, then the ends)."""
        with open(path, "w") as f:
            f.write(json.dumps(self.header()) + "\n")
            for line in self._lines():
                f.write(line + "\n")

    def _lines(self) -> Any:
        dumps = json.dumps
        for seq in range(1, len(self.w_block)):
            yield dumps(
                {
                    "e": "w",
                    "id": seq,
                    "c": self.w_writer[seq],
                    "b": self.w_block[seq],
                    "n": self.w_n[seq],
                    "fua": int(self.w_fua[seq]),
                    "t": self.w_t0[seq],
                }
            )
        for fid in range(1, len(self.f_t0)):
            yield dumps({"e": "f", "id": fid, "c": self.f_writer[fid], "t": self.f_t0[fid]})
        names = {ACKED: "ok", FAILED: "err", LOST: "lost"}
        for seq in range(1, len(self.w_block)):
            st = self.w_status[seq]
            if st != INFLIGHT:
                t = self.w_t1[seq]
                ev: dict[str, Any] = {"e": names[st], "id": seq, "t": t if math.isfinite(t) else 0}
                if seq in self.w_error:
                    ev["error"] = self.w_error[seq]
                yield dumps(ev)
        for fid in range(1, len(self.f_t0)):
            st = self.f_status[fid]
            if st != INFLIGHT:
                yield dumps({"e": "f" + names[st], "id": fid, "t": self.f_t1[fid]})
        for v in self.read_violations:
            yield dumps({"e": "rv", **v})
        if self.ended:
            yield dumps({"e": "end", "why": self.ended, "reads_checked": self.reads_checked})

    @classmethod
    def load(cls, path: str) -> History:
        with open(path) as f:
            lines = f.read().split("\n")
        if not lines or not lines[0].strip():
            raise FormatError(f"{path}: empty history")
        try:
            head = json.loads(lines[0])
        except ValueError as e:
            raise FormatError(f"{path}: the first line is not a history header: {e}") from None
        if head.get("type") != FORMAT:
            raise FormatError(f"{path}: not a cargohold verify history (type {head.get('type')!r})")
        if head.get("version") not in VERSIONS_READ:
            raise FormatError(
                f"{path}: history version {head.get('version')}, "
                f"this version reads {sorted(VERSIONS_READ)}"
            )
        h = cls(
            run=int(head["run"]),
            first_block=int(head["first_block"]),
            nblocks=int(head["nblocks"]),
            block_size=int(head.get("block_size", BLOCK_SIZE)),
            multi_conn=bool(head.get("multi_conn", True)),
            uri=str(head.get("uri", "")),
            wall_start=float(head.get("wall_start", 0.0)),
        )
        last = len(lines) - 1
        for i, line in enumerate(lines[1:], 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                if i == last:
                    break  # cut short by a crash of the writer
                raise FormatError(f"{path}:{i + 1}: not JSON") from None
            h._replay(ev, path, i + 1)
        return h

    def _replay(self, ev: dict[str, Any], path: str, lineno: int) -> None:
        e = ev.get("e")
        try:
            if e == "w":
                seq = self.write_invoked(ev["c"], ev["b"], ev["n"], bool(ev["fua"]), ev["t"])
                if seq != ev["id"]:
                    raise FormatError(f"{path}:{lineno}: write id {ev['id']}, expected {seq}")
            elif e in _END_EVENTS:
                self.write_done(ev["id"], _END_EVENTS[e], ev["t"], ev.get("error", ""))
            elif e == "f":
                fid = self.flush_invoked(ev["c"], ev["t"])
                if fid != ev["id"]:
                    raise FormatError(f"{path}:{lineno}: flush id {ev['id']}, expected {fid}")
            elif e in _FLUSH_END_EVENTS:
                self.flush_done(ev["id"], _FLUSH_END_EVENTS[e], ev["t"], ev.get("error", ""))
            elif e == "end":
                self.ended = str(ev.get("why", ""))
                self.reads_checked = int(ev.get("reads_checked", 0))
            elif e == "rv":
                self.read_violations.append({k: v for k, v in ev.items() if k != "e"})
            else:
                raise FormatError(f"{path}:{lineno}: unknown event {e!r}")
        except (KeyError, IndexError, TypeError) as exc:
            raise FormatError(f"{path}:{lineno}: malformed event {ev!r}: {exc}") from None
