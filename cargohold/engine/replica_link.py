"""One replica of a volume as its engine sees it: where it is, its connection, its mode.

Modes: RW (in the write set and serving reads), WO (in the write set, being rebuilt: takes
live writes, serves no reads — invariant 2), ERR (dropped after an error, a timeout or a
lost connection; it gets no more I/O until it is rebuilt). Called by ``volume`` and
``rebuild``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from cargohold import lineage
from cargohold.errors import ConfigError
from cargohold.replica.client import ReplicaClient
from cargohold.store.reader import ReplicaReader


class Mode(enum.StrEnum):
    RW = "RW"
    WO = "WO"
    ERR = "ERR"


_SPEC = re.compile(
    r"^(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<host>[^:@/]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$"
)


@dataclass(frozen=True)
class ReplicaSpec:
    """``ID@HOST:PORT``: replica ``ID`` on the replica server at ``HOST:PORT``."""

    id: str
    host: str
    port: int
    local: bool = False  # on this engine's node: preferred for reads

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
        if self.error:
            out["error"] = self.error
        if self.rebuild:
            out["rebuild"] = dict(self.rebuild)
        return out


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
