"""The SQLite state store: the embedded default, one database file on the manager's host.

``open_store("sqlite:PATH")`` builds it for the manager. Several manager processes may share
the file; SQLite's locks keep them consistent and the ``leader`` table elects one of them.

Schema (``PRAGMA user_version`` = 1):

    kv(key TEXT PRIMARY KEY, value BLOB, mod_revision INTEGER)   -- the records
    revision(id = 0, revision INTEGER)                           -- the store's revision
    leader(role TEXT PRIMARY KEY, holder TEXT, expires_at REAL)  -- wall-clock leases

Every write runs in one ``BEGIN IMMEDIATE`` transaction (the write lock taken before
reading, so compares and writes see the same state, across processes too) and bumps the
revision once. The journal is a WAL with ``synchronous=FULL``: a committed write — an epoch
handed out, say — survives power loss, and readers never wait for writers. Calls run on one
worker thread per store, so a busy or slow disk never stalls the event loop.

Leadership is a row renewed by compare-and-swap: a holder takes or keeps it when the row is
its own or has expired. Expiry uses the wall clock, which every process on the host shares.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cargohold.control.state.base import Compare, Delete, Entry, Put, StateStore
from cargohold.control.state.memory import check_ops
from cargohold.errors import ConfigError, FormatError, ManagerUnavailable, StateStoreDamaged

T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000  # how long a writer waits for another process's write lock

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv ("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL, mod_revision INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS revision ("
    " id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO revision (id, revision) VALUES (0, 0)",
    "CREATE TABLE IF NOT EXISTS leader ("
    " role TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)",
)

# Take the role if it is free, expired, or already ours; else change nothing (rowcount 0).
_CAMPAIGN = (
    "INSERT INTO leader (role, holder, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
    " WHERE leader.holder = excluded.holder OR leader.expires_at <= ?"
)


TABLES = ("kv", "revision", "leader")


class SQLiteStateStore(StateStore):
    """``create=False`` (the manager without ``--init``): the file must exist and hold the
    schema already; ConfigError naming the file and what is wrong otherwise, and the file
    is left exactly as it was (an empty or wrong file is an operator's mistake to see, not
    a new cluster to make)."""

    def __init__(self, path: str, create: bool = True) -> None:
        self.path = path
        if not create and not os.path.exists(path):
            raise ConfigError(
                f"SQLite state store {path!r} does not exist; give the right path, or "
                "--init to create a new cluster there"
            )
        try:
            self._conn = sqlite3.connect(
                path if create else f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw",
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN and COMMIT ourselves
                check_same_thread=False,  # opened here, used only on the worker thread
                uri=not create,
            )
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the SQLite state store {path!r}: {e}") from e
        try:
            if not create:
                self._check_schema()
            self._setup()
        except sqlite3.Error as e:
            self._conn.close()
            raise ConfigError(f"cannot use {path!r} as the SQLite state store: {e}") from e
        except BaseException:
            self._conn.close()
            raise
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="cargohold-sqlite"
        )

    def _check_schema(self) -> None:
        """Without creating anything: is this a cargohold state store?"""
        try:
            names = {
                r[0]
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"SQLite state store {self.path!r} is not a usable SQLite database ({e}); "
                "restore the right file, or --init to create a new cluster in a new file"
            ) from e
        missing = [t for t in TABLES if t not in names]
        if missing:
            what = "an empty file" if not names else f"has no table(s) {', '.join(missing)}"
            raise ConfigError(
                f"SQLite state store {self.path!r} is not a cargohold state store ({what}); "
                "restore the right file, or --init to create a new cluster"
            )

    def _setup(self) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA synchronous = FULL")

        def create(c: sqlite3.Connection) -> None:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FormatError(
                    f"SQLite state store {self.path!r} has schema version {version}; "
                    f"this cargohold reads version {SCHEMA_VERSION} and older"
                )
            for statement in _SCHEMA:
                c.execute(statement)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        self._write(create)

    # --- plumbing: one worker thread; writes in BEGIN IMMEDIATE ------------------------
    async def _call(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            raise ManagerUnavailable(f"SQLite state store {self.path!r} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except sqlite3.OperationalError as e:  # locked too long, disk I/O, out of space
            raise ManagerUnavailable(f"SQLite state store {self.path!r}: {e}") from e
        except sqlite3.DatabaseError as e:  # not a database, malformed: a damaged file
            raise StateStoreDamaged(
                f"SQLite state store {self.path!r} is damaged: {e} (restore it from a backup; "
                "see docs/operations.md)"
            ) from e

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            result = fn(c)
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _bump(c: sqlite3.Connection) -> int:
        c.execute("UPDATE revision SET revision = revision + 1 WHERE id = 0")
        return int(c.execute("SELECT revision FROM revision WHERE id = 0").fetchone()[0])

    @staticmethod
    def _upsert(c: sqlite3.Connection, key: str, value: bytes, revision: int) -> None:
        c.execute(
            "INSERT INTO kv (key, value, mod_revision) VALUES (?, ?, ?) ON CONFLICT (key)"
            " DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
            (key, bytes(value), revision),
        )

    # --- records -------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        def run() -> Entry | None:
            row = self._conn.execute(
                "SELECT value, mod_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else Entry(key, bytes(row[0]), int(row[1]))

        return await self._call(run)

    async def range(self, prefix: str) -> list[Entry]:
        def run() -> list[Entry]:
            # Walk the primary key from the prefix on and stop at the first key past it:
            # exact for any prefix, with no "next string" to compute.
            out: list[Entry] = []
            cur = self._conn.execute(
                "SELECT key, value, mod_revision FROM kv WHERE key >= ? ORDER BY key", (prefix,)
            )
            try:
                for key, value, rev in cur:
                    if not key.startswith(prefix):
                        break
                    out.append(Entry(key, bytes(value), int(rev)))
            finally:
                cur.close()
            return out

        return await self._call(run)

    async def put(self, key: str, value: bytes) -> int:
        def run(c: sqlite3.Connection) -> int:
            rev = self._bump(c)
            self._upsert(c, key, value, rev)
            return rev

        return await self._call(lambda: self._write(run))

    async def delete(self, key: str) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            if c.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 0:
                return False
            self._bump(c)
            return True

        return await self._call(lambda: self._write(run))

    async def txn(self, compares: list[Compare], ops: list[Put | Delete]) -> bool:
        check_ops(ops)

        def run(c: sqlite3.Connection) -> bool:
            for cmp in compares:
                row = c.execute("SELECT mod_revision FROM kv WHERE key = ?", (cmp.key,)).fetchone()
                if (0 if row is None else int(row[0])) != cmp.mod_revision:
                    return False
            changed = False
            for op in ops:
                if isinstance(op, Delete):
                    changed |= c.execute("DELETE FROM kv WHERE key = ?", (op.key,)).rowcount > 0
            puts = [op for op in ops if isinstance(op, Put)]
            if changed or puts:
                rev = self._bump(c)  # one revision for the whole transaction, as in etcd
                for op in puts:
                    self._upsert(c, op.key, op.value, rev)
            return True

        return await self._call(lambda: self._write(run))

    # --- leadership ----------------------------------------------------------------------
    async def campaign(self, role: str, holder: str, ttl: float) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            now = time.time()
            return c.execute(_CAMPAIGN, (role, holder, now + ttl, now)).rowcount == 1

        return await self._call(lambda: self._write(run))

    async def resign(self, role: str, holder: str) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM leader WHERE role = ? AND holder = ?", (role, holder))

        await self._call(lambda: self._write(run))

    async def leader(self, role: str) -> str | None:
        def run() -> str | None:
            row = self._conn.execute(
                "SELECT holder FROM leader WHERE role = ? AND expires_at > ?", (role, time.time())
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._call(run)

    async def check(self, deep: bool = False) -> None:
        """A read of the leader table; with ``deep``, SQLite's own structural check of the
        file (``PRAGMA quick_check``: every page of every table read once, ~120 ms for
        20,000 records of 1 KiB, so it runs only once damage was seen); StateStoreDamaged
        naming what it found."""
        if not deep:
            await self.leader("manager")
            return

        def run() -> list[str]:
            return [str(r[0]) for r in self._conn.execute("PRAGMA quick_check(5)").fetchall()]

        found = await self._call(run)
        if found != ["ok"]:
            raise StateStoreDamaged(
                f"SQLite state store {self.path!r} is damaged: " + "; ".join(found)
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        await asyncio.get_running_loop().run_in_executor(pool, self._conn.close)
        pool.shutdown(wait=False)
