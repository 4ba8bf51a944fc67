"""One replica of a volume as its engine sees it: where it is, its connection, its mode.

Modes: RW (in the write set and serving reads), WO (in the write set, being rebuilt: takes
live writes, serves no reads — invariant 2), ERR (dropped after an error, a timeout or a
lost connection; it gets no more I/O until it is rebuilt). Called by ``volume`` and
``rebuild``.

The connection to a replica (``connect``): mutual TLS over TCP, except to the replica on
the engine's own node when its server also listens on a unix socket (``ReplicaSpec.unix``,
the engine's ``--local-unix``): that traffic never leaves the host, so it goes over the
socket in clear, without the cipher's cost. When the socket is missing or refuses, the
engine falls back to TLS over TCP (logged once per replica). docs/security.md, "The local
replica link".
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from cargohold import lineage
from cargohold.errors import CargoholdError, ConfigError
from cargohold.replica.client import ReplicaClient
from cargohold.security.tls import Credentials
from cargohold.store.reader import ReplicaReader

log = logging.getLogger("cargohold.engine")


class Mode(enum.StrEnum):
    RW = "RW"
    WO = "WO"
    ERR = "ERR"


_SPEC = re.compile(
    r"^(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<host>[^:@/]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$"
)


@dataclass(frozen=True)
class ReplicaSpec:
    """``ID@HOST:PORT``: replica ``ID`` on the replica server at ``HOST:PORT``. ``unix``:
    that server's unix socket on this node (the local replica only; not in the text form,
    given apart as ``--local-unix``): tried first, in clear, the TCP address the fallback."""

    id: str
    host: str
    port: int
    local: bool = False  # on this engine's node: preferred for reads
    unix: str | None = None  # the local replica's server socket (``connect``)

    @classmethod
    def parse(cls, text: str, local: bool = False) -> ReplicaSpec:
        m = _SPEC.match(text.strip())
        if not m:
            raise ConfigError(f"bad replica {text!r}: expected ID@HOST:PORT, e.g. r1@10.0.0.5:9500")
        return cls(m["id"], m["host"].strip("[]"), int(m["port"]), local)

    def __str__(self) -> str:
        return f"{self.id}@{self.host}:{self.port}"


@dataclass
class ReplicaLink:
    spec: ReplicaSpec
    client: ReplicaClient | None = None
    mode: Mode = Mode.ERR
    generation: int = 0  # complete through, as the replica last reported
    seen: int = 0
    # its store found at open that the machine crashed: complete only through its last
    # FLUSH, maybe more above (start_policy); cleared when it is marked current
    power_loss: bool = False
    size: int = 0  # bytes, as the replica reported at OPEN
    history: list[list[int]] = field(default_factory=list)  # [[epoch, first generation]]
    error: str = ""
    rebuild: dict[str, Any] = field(default_factory=dict)  # progress while WO
    # local reads (``local_reads``): where the server keeps it, as reported at OPEN
    # ({"path", "boot_id", "dev", "ino"}, or None), and the engine's reader of those files
    disk: dict[str, Any] | None = None
    reader: ReplicaReader | None = None
    reader_layout: int = -1
    reader_retry: float = 0.0
    transport: str = ""  # how its connection goes: "unix", "tls" or "tcp" (``connect``)
    unix_failed: bool = False  # the unix socket failed once (logged): later ones at debug
    # what its OPEN to this engine said, kept when a start in doubt marks it current (the
    # rebuild's handling of a block failing on its source: engine/rebuild.py ``LostBlocks``)
    opened_generation: int = 0
    opened_seen: int = 0
    opened_power_loss: bool = False

    def opened(self, client: ReplicaClient, info: dict[str, Any]) -> None:
        """Connected and OPEN answered with ``info`` (a replica server's OPEN reply)."""
        self.client = client
        self.generation = info["generation"]
        self.seen = info.get("seen", info["generation"])
        self.power_loss = bool(info.get("power_loss", False))  # not sent by older servers
        self.opened_generation, self.opened_seen = self.generation, self.seen
        self.opened_power_loss = self.power_loss
        self.history = info.get("history", [])
        self.size = info["size"]
        self.disk = info.get("disk") if isinstance(info.get("disk"), dict) else None
        self.error = ""

    def drop(self, why: str) -> None:
        """Out of the write set (ERR); its connection is closed so nothing more reaches it,
        and its files are no longer read directly."""
        if self.mode is not Mode.ERR:
            self.mode = Mode.ERR
            self.error = why
        self.close_reader()
        if self.client is not None:
            client, self.client = self.client, None
            client.close_nowait()

    def close_reader(self) -> None:
        if self.reader is not None:
            reader, self.reader = self.reader, None
            reader.close()

    @property
    def last_epoch(self) -> int:
        """The epoch of the engine that made this replica's newest mutation."""
        return lineage.last_epoch(self.history)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.spec.id,
            "address": f"{self.spec.host}:{self.spec.port}",
            "mode": self.mode.value,
            "generation": self.generation,
            "local": self.spec.local,
        }
        if self.transport:
            out["transport"] = self.transport
        if self.power_loss:
            out["power_loss"] = True
        if self.error:
            out["error"] = self.error
        if self.rebuild:
            out["rebuild"] = dict(self.rebuild)
        return out


async def connect(
    link: ReplicaLink, volume: str, timeout: float, tls: Credentials | None, batch: bool
) -> ReplicaClient:
    """A negotiated connection (HELLO done) to ``link``'s replica server: over its unix
    socket when the spec names one and it answers (the session then declares itself the
    engine of ``volume``: the server holds it to that volume's replicas), else over TCP
    with ``tls`` (mutual TLS; None: ``--plaintext``). Sets ``link.transport``."""
    spec = link.spec
    if spec.unix:
        client = None
        try:
            client = await ReplicaClient.connect(unix=spec.unix, timeout=timeout)
            await asyncio.wait_for(client.negotiate(batch, volume, spec.id), timeout)
            link.transport = "unix"
            return client
        except (CargoholdError, OSError, TimeoutError) as e:
            if client is not None:
                client.close_nowait()
            fallback = "TLS over TCP" if tls is not None else "TCP"
            (log.debug if link.unix_failed else log.warning)(
                "volume %s: replica %s: its server's unix socket %s failed (%s): %s to %s:%d",
                volume,
                spec.id,
                spec.unix,
                e,
                fallback,
                spec.host,
                spec.port,
            )
            link.unix_failed = True
    client = await ReplicaClient.connect(
        spec.host, spec.port, timeout=timeout, tls=tls, replica=spec.id
    )
    try:
        # version 2 servers take the writes of one loop pass as one WRITE_BATCH frame
        await asyncio.wait_for(client.negotiate(batch), timeout)
    except BaseException:
        client.close_nowait()
        raise
    link.transport = "tls" if tls is not None else "tcp"
    return client


def stale_start(
    volume: str, require: tuple[int, int], links: list[ReplicaLink], top: tuple[int, int]
) -> str:
    """Why an engine refuses to start when the manager recorded newer data (``require``:
    epoch, generation) than the newest reachable replica holds (``top``)."""
    epoch, gen = require
    have = "; ".join(
        f"{link.spec}: epoch {link.last_epoch}, generation {link.generation}"
        if not link.error
        else f"{link.spec}: unreachable ({link.error})"
        for link in links
    )
    recorded = f"epoch {epoch}, generation {gen}" if epoch else f"generation {gen}"
    return (
        f"volume {volume}: refusing to start: newer data exists ({recorded} was "
        f"recorded) but the newest reachable replica is at epoch "
        f"{top[0]}, generation {top[1]}; starting would lose acknowledged writes. Replicas: "
        f"{have}. Bring back a replica that holds the newer data."
    )
