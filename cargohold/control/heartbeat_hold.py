"""A node's heartbeat as the API serves it: the long poll. The report is taken in
(heartbeat.py) and the answer held until the node's assignments change (watch.py wakes
it), its ``hold`` passes, or the agent hangs up; a report sent as its digest stands for
the last whole one kept.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cargohold.control import heartbeat as hb_mod
from cargohold.control.assignments import assignments
from cargohold.control.grant_signer import GrantSigner
from cargohold.control.io_history import io_counters
from cargohold.control.model import Assignments, Heartbeat
from cargohold.control.service_base import ServiceBase


class HeartbeatCalls(ServiceBase):
    grant_signer: GrantSigner | None = None  # the manager's read grants (set with --tls-dir)

    async def heartbeat(
        self, name: str, hb: Heartbeat, gone: asyncio.Future[Any] | None = None
    ) -> Assignments:
        """Take in the report (liveness is recorded now) and answer the node's assignments:
        at once when they differ from the revision the agent has, else when they change
        (an API write or a reconciler touched them), the agent's ``hold`` (at most
        ``heartbeat_interval``) has passed, or the agent hung up (``gone``). A report sent
        as its digest (``same_report``) stands for the last whole one this manager kept of
        the node; one it does not have is answered ``resend`` at once."""
        if hb.same_report:  # "as last time": the report this manager kept, if it has it
            last = self.reports.get(name)
            if last is None or last[0] != hb.report_digest:
                return Assignments(resend=True, heartbeat_interval=self.settings.heartbeat_every)
            hb = last[1].model_copy(
                update={"hold": hb.hold, "assignments_revision": hb.assignments_revision}
            )
        elif hb.report_digest:
            self.reports[name] = (hb.report_digest, hb)
        mark = self.watch.mark(name)
        a = await hb_mod.handle(
            self.repo, name, hb, self.settings, self.kick.set, self.grant_signer
        )
        self._io_samples(hb)
        hold = min(hb.hold, self.settings.heartbeat_every)
        if hold <= 0 or a.revision != hb.assignments_revision:
            return a
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        while (left := deadline - loop.time()) > 0:
            if not await self.watch.wait(name, mark, left, gone):
                break
            mark = self.watch.mark(name)
            a = await assignments(self.repo, name, hb, self.settings, self.grant_signer)
            if a.revision != hb.assignments_revision:
                return a
        # nothing new: the agent keeps what it has (no lists to send, parse or check)
        return Assignments(
            revision=a.revision, heartbeat_interval=a.heartbeat_interval, unchanged=True
        )

    def _io_samples(self, hb: Heartbeat) -> None:
        """Each engine's I/O counters into the in-memory history (control/io_history.py);
        an engine that is not running leaves a gap."""
        t = time.time()
        for er in hb.engines:
            counters = io_counters(er.status) if er.running else None
            if counters is None:
                self.io_history.gap(er.volume, t)
            else:
                self.io_history.add(er.volume, t, er.epoch, counters)
