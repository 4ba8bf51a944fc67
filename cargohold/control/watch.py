"""Which nodes' assignments a record change touches, and the held heartbeats that wait for it.

A node agent's heartbeat is a long poll: when the agent already has the newest assignments
(it sends their ``revision``), the manager holds the answer until something that could
change them happens, or ``heartbeat_interval`` passes (``Service.heartbeat``). The
``Repository`` tells ``AssignmentWatch.changed`` about every record it writes; ``affected``
decides whose assignments that write can change (the desired half of records: replicas to
create or delete, engine specs, operations, disks, replica addresses) and the watch wakes
the heartbeats held for those nodes. Observed fields (an engine's status, a replica's
mode) wake nobody.

A woken heartbeat recomputes its node's assignments and answers only when their revision
differs from the agent's, so waking too many is safe, only wasteful; waking too few only
delays an agent until its hold ends. Wakes are in-process: a heartbeat held by a standby
manager learns of the leader's writes when its hold ends.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel

from cargohold.control.model import Disk, Node, Operation, Replica, Tombstone, Volume

ALL: Literal["all"] = "all"


def affected(old: BaseModel | None, new: BaseModel | None) -> set[str] | Literal["all"]:
    """The nodes whose assignments may differ after ``old`` became ``new`` (None: absent)."""
    rec = new if new is not None else old
    # old and new are records of one kind (one key): rec's, or absent
    if isinstance(rec, Replica):
        if not isinstance(new, Replica):  # the record goes after the agent deleted it
            return set()
        if not isinstance(old, Replica) or (old.deleting, old.size_bytes, old.disk_path) != (
            new.deleting,
            new.size_bytes,
            new.disk_path,
        ):
            return {rec.node}
        return set()
    if isinstance(rec, Volume):
        if not isinstance(old, Volume) or not isinstance(new, Volume):
            return set()  # created with its replicas (they say where); deleted: orphans only
        if old.size_bytes != new.size_bytes:
            return ALL
        if old.engine != new.engine:
            return {e.node for e in (old.engine, new.engine) if e is not None}
        if old.qos != new.qos and new.engine is not None:  # new limits for its engine
            return {new.engine.node}
        return set()
    if isinstance(rec, Operation):
        if not isinstance(new, Operation):
            return set()
        if not isinstance(old, Operation) or (old.state != new.state and not new.done):
            return ALL  # a new (or re-run) operation: for its engine's node
        return set()
    if isinstance(rec, Disk):
        return {rec.node}
    if isinstance(rec, Tombstone):  # an orphan condemned: its node deletes it
        return {rec.node} if new is not None else set()
    if isinstance(rec, Node):
        if (
            isinstance(old, Node)
            and isinstance(new, Node)
            and (old.address, old.replica_port)
            == (
                new.address,
                new.replica_port,
            )
        ):
            return set()
        return ALL  # engines elsewhere reach this node's replicas at its address and port
    return set()


class AssignmentWatch:
    """Per-node change counters, and futures of the heartbeats waiting on them."""

    def __init__(self) -> None:
        self._marks: dict[str, int] = {}
        self._all = 0
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def mark(self, node: str) -> tuple[int, int]:
        """Take before computing a node's assignments; ``wait`` returns at once if anything
        touched the node since."""
        return self._all, self._marks.get(node, 0)

    def touch(self, nodes: set[str] | Literal["all"]) -> None:
        if nodes == ALL:
            self._all += 1
            targets = list(self._waiters)
        else:
            for n in nodes:
                self._marks[n] = self._marks.get(n, 0) + 1
            targets = [n for n in nodes if n in self._waiters]
        for n in targets:
            for f in self._waiters.pop(n, ()):
                if not f.done():
                    f.set_result(None)

    def changed(self, old: BaseModel | None, new: BaseModel | None) -> None:
        """The Repository's hook: a record was written (``new`` None: deleted)."""
        nodes = affected(old, new)
        if nodes:
            self.touch(nodes)

    async def wait(
        self,
        node: str,
        mark: tuple[int, int],
        timeout: float,
        also: asyncio.Future[Any] | None = None,
    ) -> bool:
        """Until ``node`` is touched after ``mark`` (True), ``timeout`` seconds pass or
        ``also`` (the agent hung up) is done (False)."""
        if self.mark(node) != mark:
            return True
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(node, set()).add(f)
        try:
            waited: set[asyncio.Future[Any]] = {f} if also is None else {f, also}
            await asyncio.wait(
                waited,
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiting = self._waiters.get(node)
            if waiting is not None:
                waiting.discard(f)
                if not waiting:
                    del self._waiters[node]
        return f.done()

    @property
    def held(self) -> int:
        """Heartbeats waiting now (for status and tests)."""
        return sum(len(w) for w in self._waiters.values())
