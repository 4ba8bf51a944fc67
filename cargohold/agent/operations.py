"""Operations this node runs on its engines for the manager (snapshots, clones, expansion,
scrubs, imports ...): started when assigned to a running engine here, reported every
heartbeat until the manager stops assigning them (it has their result then). Used by
``cargohold.agent.agent`` (``converge``, ``reports``) and at shutdown (``tasks``).

An operation whose engine dies under it may be half done: this run is forgotten and the
operation runs again once the engine is back (the manager keeps assigning it), at most
``OP_TRIES`` times before it fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from cargohold.agent.engine_link import EngineLink, EngineUnreachable
from cargohold.agent.engine_process import EngineProcess
from cargohold.control.model import OperationAssignment, OperationReport, OperationState
from cargohold.errors import CargoholdError

log = logging.getLogger("cargohold.agent")

OP_TRIES = 3  # runs of one operation whose engine dies under it, before it fails


@dataclass
class OperationRun:
    """One operation this agent runs (or ran) on an engine, reported until the manager stops
    assigning it."""

    spec: OperationAssignment
    state: OperationState = OperationState.RUNNING
    progress: float = 0.0
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.state in (OperationState.SUCCEEDED, OperationState.FAILED)

    def report(self) -> OperationReport:
        return OperationReport(
            id=self.spec.id,
            state=self.state,
            progress=self.progress,
            error=self.error,
            result=self.result,
        )


class Operations:
    """The operations of this node by id. ``engines``: the engine supervisor's engines by
    volume (read, never changed); ``news`` is set when one finishes."""

    def __init__(self, engines: dict[str, EngineProcess], news: asyncio.Event) -> None:
        self.runs: dict[str, OperationRun] = {}
        self._engines = engines
        self._news = news
        self._tries: dict[str, int] = {}  # operation id -> runs its engine died under

    def reports(self) -> list[OperationReport]:
        return [op.report() for op in self.runs.values()]

    def tasks(self) -> list[asyncio.Task[None]]:
        return [op.task for op in self.runs.values() if op.task is not None]

    def converge(self, assigned: list[OperationAssignment]) -> None:
        ids = {op.id for op in assigned}
        for oid, run in list(self.runs.items()):
            if oid not in ids and run.done:
                del self.runs[oid]  # the manager has its result
        for oid in [o for o in self._tries if o not in ids]:
            del self._tries[oid]  # no longer assigned: its retries are over
        for op in assigned:
            if op.id in self.runs:
                continue
            eng = self._engines.get(op.volume)
            if eng is None or not eng.takes_work:
                continue  # no engine here (yet): the manager assigns it again
            run = OperationRun(op)
            self.runs[op.id] = run
            run.task = asyncio.create_task(self._run(run, eng.link))

    async def _run(self, run: OperationRun, link: EngineLink) -> None:
        op = run.spec
        log.info(
            "running operation %s: %s of volume %s %s",
            op.id,
            op.kind.value,
            op.volume,
            json.dumps(op.args),
        )

        def progress(p: float) -> None:
            run.progress = p

        def settle() -> None:  # what the operation changed shows in the next status
            eng = self._engines.get(op.volume)
            if eng is not None:
                eng.status_every = 0.0

        try:
            run.result = await link.run_operation(op, progress)
            run.progress, run.state = 1.0, OperationState.SUCCEEDED
            settle()
            self._news.set()
            log.info("operation %s (%s of volume %s) succeeded", op.id, op.kind.value, op.volume)
        except EngineUnreachable as e:
            # the engine died under it: the operation may be half done. Forget this run; the
            # manager keeps assigning the operation, and it runs again once the engine is
            # back (snapshot create and delete set a half-done one right)
            tries = self._tries[op.id] = self._tries.get(op.id, 0) + 1
            if tries < OP_TRIES and self.runs.get(op.id) is run:
                log.warning(
                    "operation %s (%s of volume %s): %s; running it again once the engine "
                    "is back (%d of %d)",
                    op.id,
                    op.kind.value,
                    op.volume,
                    e,
                    tries + 1,
                    OP_TRIES,
                )
                del self.runs[op.id]
                return
            run.error, run.state = str(e), OperationState.FAILED
            settle()
            self._news.set()
        except CargoholdError as e:
            run.error, run.state = str(e), OperationState.FAILED
            settle()
            self._news.set()
            log.warning(
                "operation %s (%s of volume %s) failed: %s", op.id, op.kind.value, op.volume, e
            )
        except Exception as e:  # a bug: report it as the operation's failure, keep the agent
            log.exception("operation %s crashed", op.id)
            run.error, run.state = f"{type(e).__name__}: {e}", OperationState.FAILED
