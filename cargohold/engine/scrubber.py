"""Scrub: the engine verifies every stored block of every current replica — the head and
every snapshot layer — reads each bad block from a healthy replica and repairs it in
place, and counts it (invariant 5: rot in blocks nobody reads is found and fixed, not only
rot that a read happens to hit).

Called by ``cargohold engine``, which runs ``Scrubber.run()`` for the engine's life: a
pass every ``scrub_interval_hours`` (``EngineSettings``; 0 = never on its own) and one
whenever ``request()`` asks for it — the control API's ``scrub`` op, which is what the
manager's ``scrub`` operation (``cargohold volume scrub NAME``) sends.

A pass walks the volume window by window (``scrub_window`` bytes): each RW replica
verifies that range of each of its layers (the replica wire's SCRUB with a range), then
every bad block is read from another RW replica — the same layer: the head, or the
snapshot of that name — and sent to the bad one as REPAIR, which rewrites only copies whose
recorded CRC32C the good content matches (so a block overwritten meanwhile is never
brought back). Passes are throttled to ``scrub_bandwidth`` bytes read per second per
replica, so they never take the disks from the workload. WO replicas (being rebuilt) and
dropped ones are skipped; a replica that fails a SCRUB is left for the write path to judge
(it is not dropped for it) and named in the report.

Counters (the engine's status, ``counters``): ``scrub_passes``, ``scrub_checked_blocks``,
``scrub_bad_blocks``, ``scrub_repaired_blocks``, ``scrub_unrepaired_blocks``. ``status()``
(the engine's status, ``scrub``): the pass running and how far it got, the last report.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from cargohold.constants import BLOCK_SIZE
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.engine.volume import Volume
from cargohold.errors import CargoholdError, ChecksumError, Fenced, NotFound, ReplicaIOError

log = logging.getLogger("cargohold.engine")

REPORTED_BLOCKS = 100  # bad blocks listed in a report (all of them are counted)
SCRUB_TIMEOUT_FACTOR = 10  # a window's SCRUB may take this many replica timeouts


def first_delay(
    every: float, last_scrub_at: float, now: float, rng: random.Random | None = None
) -> float:
    """Seconds from ``now`` (wall clock) until an engine's first periodic pass, for a pass
    every ``every`` seconds. With the volume's last pass known (``last_scrub_at`` > 0, as
    the manager recorded it from an earlier engine), the interval counts from that pass, so
    that restarts and moves do not postpone scrubs forever; an overdue pass starts within
    10 % of the interval (at most 10 minutes), spread so that engines started together do
    not scrub together. Without one, the interval counts from the engine's start, less up
    to 10 % of jitter."""
    rng = rng or random.Random()
    if last_scrub_at <= 0:
        return every * rng.uniform(0.9, 1.0)
    left = last_scrub_at + every - now
    if left > 0:
        return min(left, every)  # a clock far behind: no later than a whole interval
    return rng.uniform(0.0, min(every * 0.1, 600.0))


class Scrubber:
    def __init__(self, vol: Volume, last_scrub_at: float = 0.0) -> None:
        self.vol = vol
        self.settings = vol.settings
        self.last_scrub_at = last_scrub_at  # when the volume's last pass ended (0: unknown)
        self.last: dict[str, Any] | None = None  # the last pass's report
        self.progress: dict[str, Any] | None = None  # the pass running
        self._next = 1  # number of the next pass
        self._pending: int | None = None  # a requested pass that has not started yet
        self._wake = asyncio.Event()
        self._ended = asyncio.Condition()

    # --- asking for passes -----------------------------------------------------------
    def request(self) -> int:
        """Ask for a pass; -> its number. A requested pass that has not started yet is
        shared; a pass already running does not count (it may have passed the rot)."""
        if self._pending is None:
            self._pending = self._next
            self._next += 1
            self._wake.set()
        return self._pending

    async def wait(self, number: int) -> dict[str, Any]:
        """-> the report of pass ``number`` (or of a later one) once it ended."""
        async with self._ended:
            await self._ended.wait_for(lambda: (self.last or {}).get("pass", 0) >= number)
        assert self.last is not None
        return self.last

    def status(self) -> dict[str, Any]:
        return {
            "interval_hours": self.settings.scrub_interval_hours,
            "bandwidth": self.settings.scrub_bandwidth,
            "running": dict(self.progress) if self.progress else None,
            "last_scrub_at": self.last_scrub_at,
            "pending": self._pending,
            "last": self.last,
        }

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: a pass when one is requested or the interval is up. The first interval
        counts from the volume's last pass if it is known, else from the engine's start
        (``first_delay``), then from the end of each pass."""
        hours = self.settings.scrub_interval_hours
        every = hours * 3600.0 if hours > 0 else None
        due = (
            time.monotonic() + first_delay(every, self.last_scrub_at, time.time())
            if every
            else None
        )
        while True:
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                reason = "requested"
            except TimeoutError:
                reason = "periodic"
                self.request()
            self._wake.clear()
            number, self._pending = self._pending, None
            if number is None:
                continue
            await self._pass(number, reason)
            if every:
                due = time.monotonic() + every

    async def _pass(self, number: int, reason: str) -> None:
        vol = self.vol
        report: dict[str, Any] = {
            "pass": number,
            "reason": reason,
            "state": "running",
            "started_at": time.time(),
            "seconds": 0.0,
            "checked_blocks": 0,
            "found": 0,
            "repaired": 0,
            "unrepaired": 0,
            "replicas": {},
            "bad": [],
        }
        t0 = time.monotonic()
        self.progress = {"pass": number, "offset": 0, "size": vol.size}
        log.info("volume %s: scrub pass %d (%s) starts", vol.name, number, reason)
        try:
            await self._walk(report)
            report["state"] = "succeeded"
        except asyncio.CancelledError:
            raise
        except Exception as e:
            report["state"] = "failed"
            report["error"] = (
                f"{type(e).__name__}: {e}" if not isinstance(e, CargoholdError) else str(e)
            )
            log.warning("volume %s: scrub pass %d failed: %s", vol.name, number, report["error"])
        finally:
            report["seconds"] = round(time.monotonic() - t0, 3)
            self.progress = None
            vol.counters["scrub_passes"] += 1
        log.info(
            "volume %s: scrub pass %d %s in %.1f s: %d blocks checked, %d bad, %d repaired, "
            "%d not repaired",
            vol.name,
            number,
            report["state"],
            report["seconds"],
            report["checked_blocks"],
            report["found"],
            report["repaired"],
            report["unrepaired"],
        )
        if report["state"] == "succeeded":
            self.last_scrub_at = report["started_at"] + report["seconds"]
        async with self._ended:
            self.last = report
            self._ended.notify_all()

    async def _walk(self, report: dict[str, Any]) -> None:
        vol, window = self.vol, self.settings.scrub_window
        skip: set[str] = set()  # replicas whose SCRUB failed in this pass
        read = 0  # bytes read from disk by the busiest replica, for the throttle
        t0 = time.monotonic()
        off = 0
        while off < vol.size:
            vol._check_usable()
            length = min(window, vol.size - off)
            links = [
                lk
                for lk in vol.links
                if lk.mode is Mode.RW and lk.client is not None and lk.spec.id not in skip
            ]
            if not links:
                raise ReplicaIOError(f"volume {vol.name}: no current replica to scrub")
            answers = await asyncio.gather(
                *(self._scrub_window(lk, off, length) for lk in links), return_exceptions=True
            )
            most = 0
            for link, ans in zip(links, answers, strict=True):
                per = report["replicas"].setdefault(
                    link.spec.id, {"checked_blocks": 0, "found": 0, "repaired": 0}
                )
                if isinstance(ans, Fenced):
                    raise ans
                if isinstance(ans, BaseException):
                    skip.add(link.spec.id)
                    per["error"] = f"SCRUB at offset {off}: {type(ans).__name__}: {ans}"
                    continue
                checked = int(ans.get("checked_blocks", 0))
                most = max(most, checked)
                per["checked_blocks"] += checked
                report["checked_blocks"] += checked
                vol.counters["scrub_checked_blocks"] += checked
                for bad in ans.get("bad", []):
                    await self._fix(link, str(bad["layer"]), int(bad["block"]), report, per)
            read += most * BLOCK_SIZE
            off += length
            self.progress = {"pass": report["pass"], "offset": off, "size": vol.size}
            rate = self.settings.scrub_bandwidth
            if rate:  # throttle: at most `rate` bytes read per second since the start
                ahead = read / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    async def _scrub_window(self, link: ReplicaLink, off: int, length: int) -> dict[str, Any]:
        assert link.client is not None
        timeout = self.settings.replica_timeout * SCRUB_TIMEOUT_FACTOR
        return await asyncio.wait_for(link.client.scrub(off, length), timeout)

    async def _fix(
        self,
        link: ReplicaLink,
        layer: str,
        block: int,
        report: dict[str, Any],
        per: dict[str, Any],
    ) -> None:
        """One bad block of ``link``: read it from a healthy replica, repair it, count it."""
        vol = self.vol
        report["found"] += 1
        per["found"] += 1
        vol.counters["scrub_bad_blocks"] += 1
        how = await self._repair(link, layer, block)
        if how == "repaired":
            report["repaired"] += 1
            per["repaired"] += 1
            vol.counters["scrub_repaired_blocks"] += 1
        elif how != "overwritten":
            report["unrepaired"] += 1
            vol.counters["scrub_unrepaired_blocks"] += 1
        log.log(
            logging.INFO if how in ("repaired", "overwritten") else logging.WARNING,
            "volume %s: scrub: block %d (layer %s) of replica %s bad: %s",
            vol.name,
            block,
            layer,
            link.spec,
            how,
        )
        if len(report["bad"]) < REPORTED_BLOCKS:
            report["bad"].append(
                {"replica": link.spec.id, "layer": layer, "block": block, "outcome": how}
            )

    async def _repair(self, link: ReplicaLink, layer: str, block: int) -> str:
        """-> "repaired", "overwritten" (a write replaced the block meanwhile: it is good
        now), "no healthy copy", or why the repair failed."""
        vol = self.vol
        offset = block * BLOCK_SIZE
        snapshot = None if layer == "head" else layer
        sources = [
            lk
            for lk in vol.links
            if lk is not link and lk.mode is Mode.RW and lk.client is not None
        ]
        sources.sort(key=lambda lk: not lk.spec.local)
        timeout = vol.settings.replica_timeout
        for src in sources:
            assert src.client is not None
            try:
                data = await asyncio.wait_for(
                    src.client.read(offset, BLOCK_SIZE, snapshot=snapshot), timeout
                )
            except (ChecksumError, NotFound):
                continue  # bad there too, or that replica lacks the snapshot: try another
            except (TimeoutError, CargoholdError, OSError):
                continue  # the write path judges that replica; here we only look elsewhere
            if link.client is None:
                return "the replica was dropped"
            try:
                fixed = await asyncio.wait_for(link.client.repair(offset, data), timeout)
            except (TimeoutError, CargoholdError, OSError) as e:
                return f"repair failed: {type(e).__name__}: {e}"
            if fixed:
                return "repaired"
            # nothing matched its recorded checksum: it was overwritten meanwhile (then it
            # is good now), or the healthy copy differs (then it is still bad)
            try:
                again = await asyncio.wait_for(
                    link.client.scrub(offset, BLOCK_SIZE), timeout * SCRUB_TIMEOUT_FACTOR
                )
            except (TimeoutError, CargoholdError, OSError) as e:
                return f"could not verify the repair: {type(e).__name__}: {e}"
            if not any(b["layer"] == layer and b["block"] == block for b in again["bad"]):
                return "overwritten"
        return "no healthy copy"
