"""Clusters of real replica servers on loopback, for tests and benchmarks.

- ``ReplicaServers``: ``n`` replica server processes, server ``i`` on the disk
  ``root/node-<i>`` (or ``disks[i]``, e.g. a small filesystem); every process started, restarts
  too, is stopped at the end by its PID; logs always go to ``root`` so that a full disk does
  not swallow them. Reads replicas straight from their servers (not through an engine): OPEN,
  CHANGED, STATS, LIST and a SHA-256 of a replica's content.
- ``ReplicaCluster``: the same with one replica ``r<i>`` of one volume on server ``i``.

``cargohold`` is imported inside the methods: tests/probe/engine_support.py, which imports this
module, also runs as a script under Debian's Python.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from tests.support.processes import ServerProc

MIB = 1 << 20


class ReplicaServers:
    """``n`` replica servers on loopback; see the module's docstring."""

    def __init__(self, root: Path, n: int = 3, disks: dict[int, Path] | None = None) -> None:
        self.root = root
        self.all: list[ServerProc] = []
        self.servers: list[ServerProc] = []
        try:
            for i in range(n):
                d = (disks or {}).get(i) or root / f"node-{i}"
                d.mkdir(parents=True, exist_ok=True)
                self.servers.append(self._start([str(d)]))
        except BaseException:
            self.close()
            raise

    def _start(self, disks: list[str]) -> ServerProc:
        s = ServerProc(disks, log_dir=str(self.root))
        self.all.append(s)
        return s.start()

    def _every(self) -> list[ServerProc]:
        """Every server started here and every one a test put into ``servers`` itself."""
        return self.all + [s for s in self.servers if s not in self.all]

    def kill(self, i: int) -> None:
        self.servers[i].kill()  # SIGKILL, reaped

    def restart(self, i: int) -> ServerProc:
        """SIGKILL server ``i`` (if it still runs) and start it again on the same disk."""
        self.servers[i].kill()
        self.servers[i] = self._start(self.servers[i].disks)
        return self.servers[i]

    def stop(self) -> None:
        """SIGTERM: a clean shutdown of every server still running."""
        for s in self._every():
            s.stop()

    def close(self) -> None:
        """SIGKILL every server still running."""
        for s in self._every():
            s.kill()

    # --- looking at the replicas directly ------------------------------------------------
    def _on(self, i: int, go: Any) -> Any:
        """Run ``go(client)`` on a connection of its own to server ``i``, then close it."""
        from cargohold.replica.client import ReplicaClient

        async def run() -> Any:
            c = await ReplicaClient.connect("127.0.0.1", self.servers[i].port)
            try:
                return await go(c)
            finally:
                await c.close()

        return asyncio.run(run())

    def create_replica(self, i: int, replica: str, size: int) -> None:
        async def go(c: Any) -> None:
            await c.create(replica, size)

        self._on(i, go)

    def listing(self, i: int) -> dict[str, dict[str, Any]]:
        """LIST of server ``i``, by replica id."""

        async def go(c: Any) -> list[dict[str, Any]]:
            return await c.list()  # type: ignore[no-any-return]

        return {x["id"]: x for x in self._on(i, go)}

    def digest(self, i: int, replica: str, epoch: int, size: int | None = None) -> str:
        """SHA-256 of the first ``size`` bytes of ``replica`` on server ``i`` (all of it by
        default), read from its server: every block is checksum-verified on the way."""

        async def go(c: Any) -> str:
            info = await c.open(replica, epoch)
            end = info["size"] if size is None else size
            h = hashlib.sha256()
            for off in range(0, end, 16 * MIB):
                h.update(bytes(await c.read(off, min(16 * MIB, end - off))))
            return h.hexdigest()

        return self._on(i, go)  # type: ignore[no-any-return]


class ReplicaCluster(ReplicaServers):
    """``n`` replica servers (three by default), replica ``r<i>`` of ``size`` bytes on server
    ``i``, all of one volume."""

    def __init__(
        self, root: Path, size: int, n: int = 3, disks: dict[int, Path] | None = None
    ) -> None:
        super().__init__(root, n, disks)
        self.size = size
        try:
            for i in range(n):
                self.create_replica(i, f"r{i}", size)
        except BaseException:
            self.close()
            raise

    def spec(self, i: int, port: int | None = None) -> str:
        return f"r{i}@127.0.0.1:{port or self.servers[i].port}"

    def specs(self, ports: dict[int, int] | None = None) -> list[str]:
        return [self.spec(i, (ports or {}).get(i)) for i in range(len(self.servers))]

    def opened(self, i: int, epoch: int) -> dict[str, Any]:
        """OPEN replica ``i`` on a connection of its own and close it: its persisted
        generation, ``seen`` and epoch. With the epoch the engine holds, this fences no one."""

        async def go(c: Any) -> dict[str, Any]:
            return await c.open(f"r{i}", epoch)  # type: ignore[no-any-return]

        return self._on(i, go)  # type: ignore[no-any-return]

    def changed_bytes(self, i: int, epoch: int, since: int) -> int:
        """Bytes of replica ``i`` written after generation ``since`` (CHANGED)."""

        async def go(c: Any) -> int:
            await c.open(f"r{i}", epoch)
            return sum(n for _, n in await c.changed_since(since))

        return self._on(i, go)  # type: ignore[no-any-return]

    def stats(self, i: int, epoch: int) -> dict[str, Any]:
        """STATS of replica ``i`` (allocated bytes, the store's read/write counters)."""

        async def go(c: Any) -> dict[str, Any]:
            await c.open(f"r{i}", epoch)
            return await c.stats()  # type: ignore[no-any-return]

        return self._on(i, go)  # type: ignore[no-any-return]

    def digests(self, epoch: int, which: tuple[int, ...] = (0, 1, 2)) -> list[str]:
        """SHA-256 of each replica's first ``size`` bytes, read from its server."""
        return [self.digest(i, f"r{i}", epoch, self.size) for i in which]
