"""The state store's in-memory twin: the semantics of the contract, with no storage.

Unit tests and the simulated cluster (tests/unit/control/sim.py) use it through
``open_store("memory:")``. It behaves like the real backends where callers can tell: a
revision per write (one for a whole transaction), mod revisions, prefix ranges in key
order, duplicate keys in a transaction refused like etcd refuses them, and every call
yields to the event loop once, so concurrent tasks interleave as they would over a network.
Leadership expires on ``time.monotonic()``.

``check_ops`` is shared with the SQLite and etcd backends.
"""

from __future__ import annotations

import asyncio
import time

from cargohold.control.state.base import Compare, Delete, Entry, Put, StateStore
from cargohold.errors import InvalidArgument


def check_ops(ops: list[Put | Delete]) -> None:
    """Refuse what etcd refuses: a transaction that writes one key twice, or both puts and
    deletes it. Every backend checks this, so the twin cannot accept what etcd rejects."""
    puts: set[str] = set()
    deletes: set[str] = set()
    for op in ops:
        if isinstance(op, Put):
            if op.key in puts or op.key in deletes:
                raise InvalidArgument(f"txn: key {op.key!r} is written twice")
            puts.add(op.key)
        else:
            if op.key in puts:
                raise InvalidArgument(f"txn: key {op.key!r} is both put and deleted")
            deletes.add(op.key)


class MemoryStateStore(StateStore):
    def __init__(self) -> None:
        self._kv: dict[str, tuple[bytes, int]] = {}
        self._revision = 0
        self._leaders: dict[str, tuple[str, float]] = {}  # role -> (holder, monotonic expiry)

    async def get(self, key: str) -> Entry | None:
        await asyncio.sleep(0)
        found = self._kv.get(key)
        return None if found is None else Entry(key, found[0], found[1])

    async def range(self, prefix: str) -> list[Entry]:
        await asyncio.sleep(0)
        return [
            Entry(k, v, rev) for k, (v, rev) in sorted(self._kv.items()) if k.startswith(prefix)
        ]

    async def put(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        self._revision += 1
        self._kv[key] = (bytes(value), self._revision)
        return self._revision

    async def delete(self, key: str) -> bool:
        await asyncio.sleep(0)
        if self._kv.pop(key, None) is None:
            return False
        self._revision += 1
        return True

    async def txn(self, compares: list[Compare], ops: list[Put | Delete]) -> bool:
        check_ops(ops)
        await asyncio.sleep(0)
        for c in compares:
            found = self._kv.get(c.key)
            if (0 if found is None else found[1]) != c.mod_revision:
                return False
        deleted = [op.key for op in ops if isinstance(op, Delete) and op.key in self._kv]
        puts = [op for op in ops if isinstance(op, Put)]
        if deleted or puts:
            self._revision += 1  # one revision for the whole transaction, as in etcd
        for key in deleted:
            del self._kv[key]
        for op in puts:
            self._kv[op.key] = (bytes(op.value), self._revision)
        return True

    async def campaign(self, role: str, holder: str, ttl: float) -> bool:
        await asyncio.sleep(0)
        now = time.monotonic()
        current = self._leaders.get(role)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leaders[role] = (holder, now + ttl)
        return True

    async def resign(self, role: str, holder: str) -> None:
        await asyncio.sleep(0)
        current = self._leaders.get(role)
        if current is not None and current[0] == holder:
            del self._leaders[role]

    async def leader(self, role: str) -> str | None:
        await asyncio.sleep(0)
        current = self._leaders.get(role)
        if current is None or current[1] <= time.monotonic():
            return None
        return current[0]
