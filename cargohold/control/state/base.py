"""The state store's contract: a small, ordered key-value store with revisions,
compare-and-swap transactions and leader leases. Two backends implement it — SQLite (the
embedded default, one manager) and etcd (several managers) — plus an in-memory twin; one
test suite (tests/unit/control/test_state_store.py) runs against all of them.

Values are bytes (the manager stores JSON). Every write bumps the store's revision; an
entry remembers the revision that last modified it (``mod_revision``), so a writer can say
"put this only if nobody changed that key since I read it" — the optimistic concurrency
that lets several managers (or several API requests) update records without locks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int  # the store revision of the last write to this key


@dataclass(frozen=True)
class Compare:
    """Holds when ``key``'s mod_revision equals ``mod_revision``; 0 means "does not exist"."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


class StateStore(ABC):
    """Async: the manager calls it from its event loop."""

    @abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abstractmethod
    async def range(self, prefix: str) -> list[Entry]:
        """Every entry whose key starts with ``prefix``, sorted by key."""

    @abstractmethod
    async def put(self, key: str, value: bytes) -> int:
        """Unconditional write; returns the new revision."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """True if the key existed."""

    @abstractmethod
    async def txn(self, compares: list[Compare], ops: list[Put | Delete]) -> bool:
        """Atomically: if every compare holds, apply every op and return True; else change
        nothing and return False."""

    @abstractmethod
    async def campaign(self, role: str, holder: str, ttl: float) -> bool:
        """Try to be (or stay) the holder of ``role``'s leadership for ``ttl`` seconds.
        True while ``holder`` leads: call again well within ``ttl`` to keep it (etcd: a
        lease kept alive; SQLite and memory: an expiry time, renewed by compare-and-swap).
        When the holder stops calling, another holder wins after ``ttl``."""

    @abstractmethod
    async def resign(self, role: str, holder: str) -> None:
        """Give leadership up now (a clean shutdown), if ``holder`` has it."""

    @abstractmethod
    async def leader(self, role: str) -> str | None:
        """Who leads ``role`` now, if anyone."""

    async def check(self, deep: bool = False) -> None:
        """Read the store, cheaply, to tell that it answers: ManagerUnavailable (or its
        StateStoreDamaged) if it does not. The manager's health check calls it; ``deep``
        (after damage was seen) asks a backend with a structural check of its own (SQLite)
        to run it."""
        await self.leader("manager")

    async def close(self) -> None:  # noqa: B027 - optional for backends
        pass
