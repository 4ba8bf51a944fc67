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

Cross-replica comparison (invariant 8): a block can pass its own checksum on every replica
and still differ between them (a write that bypassed the engine, an edit of the files
together with their checksums, a bug). So after the per-replica SCRUB of a window, the RW
replicas' checksum maps of the window — the head and every snapshot all of them have — are
compared by digests per 16 MiB, per-block maps only where digests differ, no data read
(``compare``); if they differ, again with the volume's mutations held for a moment, since a
write in flight can make them differ briefly. Where they disagree, the content
is taken from the replica the generation history says is current. A replica that has seen
a generation the engine never issued (above the engine's own: a write around it with a
guessed number) is never the source, and is named in the report (``ahead_of_engine``). Of
the others, the one with the highest (last epoch, generation) if one stands alone; among
equals (the engine's rule makes
every one of them current) the value a strict majority of them holds; otherwise the block
is undecidable and is reported, never guessed. Head blocks are repaired by copying them
from that replica (EXPORT, IMPORT) and compared again; snapshot layers are reported only
(IMPORT writes the head). Report: ``diverged_found``, ``diverged_repaired``,
``diverged_unrepaired``, ``compared_replicas`` and up to 100 blocks under ``diverged``.

Counters (the engine's status, ``counters``): ``scrub_passes``, ``scrub_checked_blocks``,
``scrub_bad_blocks``, ``scrub_repaired_blocks``, ``scrub_unrepaired_blocks``,
``scrub_diverged_blocks``, ``scrub_diverged_repaired_blocks``. ``status()``
(the engine's status, ``scrub``): the pass running and how far it got, the last report.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from cargohold import lineage
from cargohold.constants import BLOCK_SIZE
from cargohold.engine import compare
from cargohold.engine.background import ForegroundYield
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.engine.volume import Volume
from cargohold.errors import CargoholdError, ChecksumError, Fenced, NotFound, ReplicaIOError

if TYPE_CHECKING:  # numpy is imported where it is used: an engine that never compares
    import numpy as np  # replicas does not load it (~10 MiB of RSS per engine)


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
            "compared_replicas": 0,
            "diverged_found": 0,
            "diverged_repaired": 0,
            "diverged_unrepaired": 0,
            "diverged": [],
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
        log.log(
            logging.WARNING if report["diverged_found"] else logging.INFO,
            "volume %s: scrub pass %d %s in %.1f s: %d blocks checked, %d bad, %d repaired, "
            "%d not repaired; %d replicas compared: %d blocks differ between them, %d "
            "repaired, %d not repaired",
            vol.name,
            number,
            report["state"],
            report["seconds"],
            report["checked_blocks"],
            report["found"],
            report["repaired"],
            report["unrepaired"],
            report["compared_replicas"],
            report["diverged_found"],
            report["diverged_repaired"],
            report["diverged_unrepaired"],
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
        courtesy = ForegroundYield(vol.counters, most=vol.settings.background_yield_max)
        off = 0
        while off < vol.size:
            vol.check_usable()
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
            await self._compare(off, length, report, skip)
            read += most * BLOCK_SIZE
            off += length
            self.progress = {"pass": report["pass"], "offset": off, "size": vol.size}
            rate = self.settings.scrub_bandwidth
            if rate:  # throttle: at most `rate` bytes read per second since the start
                ahead = read / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await courtesy.pause()  # engine/background.py

    # --- comparing replicas with each other ---------------------------------------------
    async def _compare(self, off: int, length: int, report: dict[str, Any], skip: set[str]) -> None:
        """The RW replicas' checksum maps of one window, compared with each other (module
        doc); differing head blocks repaired from the replica that is current.

        First without holding anything: equal maps need no more (the common case, and
        writes never wait for it; a write the engine sent earlier is in every map, since a
        replica applies one connection's requests in order). Only if they differ — which an
        operation still running on one replica (a snapshot revert waits for a lock) can
        also cause — is the window compared again with the volume's mutations held, and
        what still differs then is settled."""
        if not await self._compare_once(off, length, report, skip, settle=False):
            return
        async with self.vol.hold():
            await self._compare_once(off, length, report, skip, settle=True)

    async def _compare_once(
        self, off: int, length: int, report: dict[str, Any], skip: set[str], settle: bool
    ) -> bool:
        """-> whether any layer's maps differed (settled, with ``settle``)."""
        timeout = self.settings.replica_timeout * SCRUB_TIMEOUT_FACTOR
        links = [
            lk
            for lk in self.vol.links
            if lk.mode is Mode.RW and lk.client is not None and lk.spec.id not in skip
        ]
        if len(links) < 2:
            return False
        report["compared_replicas"] = max(report["compared_replicas"], len(links))
        clients = [lk.client for lk in links if lk.client is not None]
        infos = await asyncio.gather(*(asyncio.wait_for(c.info(), timeout) for c in clients))
        common = set.intersection(*(set(i.get("snapshots", [])) for i in infos))
        layers: list[str | None] = [None, *sorted(common)]
        found = False
        for layer in layers:
            for o, ln in compare.ranges(length):
                try:
                    blocks, crcs = await compare.differing(clients, off + o, ln, timeout, layer)
                except NotFound:
                    break  # a snapshot deleted meanwhile
                if blocks.size:
                    found = True
                    if not settle:
                        return True
                    await self._settle(links, infos, layer, blocks, crcs, report, timeout)
        return found

    async def _settle(
        self,
        links: list[ReplicaLink],
        infos: list[dict[str, Any]],
        layer: str | None,
        blocks: np.ndarray,
        crcs: np.ndarray,
        report: dict[str, Any],
        timeout: float,
    ) -> None:
        """Blocks of one layer where replicas disagree: decide, repair, count, report."""
        import numpy as np

        vol = self.vol
        name = layer or "head"
        n = int(blocks.size)
        report["diverged_found"] += n
        vol.counters["scrub_diverged_blocks"] += n
        authority = current_by_block(infos, crcs, vol.gen)
        ahead = {
            lk.spec.id: int(i.get("seen", 0))
            for lk, i in zip(links, infos, strict=True)
            if int(i.get("seen", 0)) > vol.gen
        }
        if ahead:  # mutations the engine never issued: written around it
            report.setdefault("ahead_of_engine", {}).update(ahead)
            log.warning(
                "volume %s: scrub: replica(s) %s hold generations the engine never issued "
                "(it issued up to %d): written around the engine; not used as a source",
                vol.name,
                ahead,
                vol.gen,
            )
        repaired = np.zeros(n, dtype=bool)
        if layer is None:
            for src in sorted(set(authority.tolist()) - {-1}):
                for i, lk in enumerate(links):
                    want = (authority == src) & (crcs[i] != crcs[src])
                    if i == src or not want.any() or lk.client is None:
                        continue
                    src_client = links[src].client
                    assert src_client is not None
                    try:
                        await compare.recopy(src_client, lk.client, blocks[want], timeout)
                    except (TimeoutError, CargoholdError, OSError) as e:
                        log.warning(
                            "volume %s: scrub: copying %d diverged block(s) to %s failed: %s",
                            vol.name,
                            int(want.sum()),
                            lk.spec,
                            e,
                        )
            # compared again: repaired are the blocks on which every replica agrees now
            clients = [lk.client for lk in links if lk.client is not None]
            if len(clients) == len(links):
                lo, hi = int(blocks[0]), int(blocks[-1]) + 1
                still, _ = await compare.differing(
                    clients, lo * BLOCK_SIZE, (hi - lo) * BLOCK_SIZE, timeout
                )
                repaired = ~np.isin(blocks, still)
        fixed = int(repaired.sum())
        report["diverged_repaired"] += fixed
        report["diverged_unrepaired"] += n - fixed
        vol.counters["scrub_diverged_repaired_blocks"] += fixed
        log.warning(
            "volume %s: scrub: replicas %s differ in %d block(s) of layer %s (first: block %d);"
            " %d repaired from the current replica, %d not",
            vol.name,
            ", ".join(lk.spec.id for lk in links),
            n,
            name,
            int(blocks[0]),
            fixed,
            n - fixed,
        )
        for j in range(min(n, REPORTED_BLOCKS - len(report["diverged"]))):
            src = int(authority[j])
            if repaired[j]:
                outcome = f"repaired from {links[src].spec.id}"
            elif layer is not None and src >= 0:
                outcome = f"not repaired: {links[src].spec.id} holds the current content, but "
                outcome += "snapshot layers are only compared, not rewritten"
            elif src < 0:
                outcome = "undecidable: the current replicas disagree with no majority"
            else:
                outcome = "not repaired: the copy did not make the replicas agree"
            report["diverged"].append(
                {
                    "layer": name,
                    "block": int(blocks[j]),
                    "crc32c": {lk.spec.id: int(crcs[i, j]) for i, lk in enumerate(links)},
                    "outcome": outcome,
                }
            )

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


def current_by_block(
    infos: list[dict[str, Any]], crcs: np.ndarray, issued: int | None = None
) -> np.ndarray:
    """Per differing block, the index of the replica whose content is current, or -1 when
    undecidable. ``infos``: each replica's INFO (generation, seen, history); ``crcs``: the
    replicas' checksums of the blocks, shape (replicas, blocks); ``issued``: the newest
    generation the engine handed out (its mutations held meanwhile).

    A replica that has seen a generation above ``issued`` holds a mutation the engine never
    issued (a write around it, with a guessed number): it is never the source. Of the
    others, the one with the highest (last epoch, generation) alone is current for every
    block; among several equal ones (the engine makes each of them current), a block's
    content is the value a strict majority of them holds; without one it is undecidable."""
    import numpy as np

    def rank(i: dict[str, Any]) -> tuple[int, int]:
        return lineage.rank(i.get("history") or [], int(i.get("generation", 0)))

    def seen(i: dict[str, Any]) -> int:
        return int(i.get("seen", i.get("generation", 0)))

    nblocks = crcs.shape[1]
    out = np.full(nblocks, -1, dtype=np.int64)
    eligible = [k for k, i in enumerate(infos) if issued is None or seen(i) <= issued]
    if not eligible:
        return out
    top = max(rank(infos[k]) for k in eligible)
    tied = [k for k in eligible if rank(infos[k]) == top]
    if len(tied) == 1:
        return np.full(nblocks, tied[0], dtype=np.int64)
    sub = crcs[tied]
    for k in tied:  # per candidate: how many of the tied hold its value (vectorised)
        votes = (sub == crcs[k]).sum(axis=0)
        out[(out < 0) & (votes * 2 > len(tied))] = k
    return out
