"""What a repository says about each backup (BackupInfo), and the catalog object listing them.

The catalog (object ``catalog``, sealed) holds every backup's BackupInfo and the names of the
index objects, so listing backups is one GET and opening the index needs no LIST. The
repository rewrites it (read, change, write) after a backup's manifest is written and when a
backup is deleted or GC merges the index; the manifests and index objects stay the truth (GC,
verify and repair can rebuild the catalog from them with LIST). Sans-I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cargohold.backup import format as fmt
from cargohold.errors import FormatError

CATALOG = "catalog"


@dataclass(frozen=True)
class BackupInfo:
    """One backup, as its manifest and the catalog record it."""

    id: str
    volume: str
    volume_id: str
    size: int
    snapshot: str
    generation: int
    parent: str | None
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    mode: str = "full"  # "full" | "incremental"
    bytes_read: int = 0  # bytes handed to the writer (write() and, for zeros, zero())
    bytes_new: int = 0  # bytes stored in new blobs (after dedup and compression)
    bytes_total: int = 0  # data the backup covers (the chunk map's extents)
    chunks_new: int = 0
    chunks_reused: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["labels"] = dict(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "catalog") -> BackupInfo:
        if not isinstance(d, dict):
            raise FormatError(f"{where}: a backup entry is not an object", object=where)
        try:
            info = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
        except TypeError as e:
            raise FormatError(f"{where}: bad backup entry ({e})", object=where) from e
        ints = (
            info.size,
            info.generation,
            info.bytes_read,
            info.bytes_new,
            info.bytes_total,
            info.chunks_new,
            info.chunks_reused,
        )
        ok = (
            all(
                isinstance(getattr(info, k), str)
                for k in ("id", "volume", "volume_id", "snapshot", "mode")
            )
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints)
            and isinstance(info.created, int | float)
            and (info.parent is None or isinstance(info.parent, str))
            and isinstance(info.labels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in info.labels.items())
            and info.mode in ("full", "incremental")
            and info.id != ""
        )
        if not ok:
            raise FormatError(f"{where}: bad backup entry {d.get('id')!r}", object=where)
        return info


@dataclass
class Catalog:
    backups: dict[str, BackupInfo] = field(default_factory=dict)
    indexes: list[str] = field(default_factory=list)
    repository: str = ""

    def encode(self) -> bytes:
        return fmt.encode_json(
            {
                "repository": self.repository,
                "backups": [
                    b.to_dict()
                    for b in sorted(self.backups.values(), key=lambda b: (b.created, b.id))
                ],
                "indexes": sorted(self.indexes),
            }
        )

    @classmethod
    def decode(cls, payload: bytes) -> Catalog:
        doc = fmt.decode_json(payload, CATALOG)
        backups, indexes = doc.get("backups"), doc.get("indexes")
        if (
            not isinstance(backups, list)
            or not isinstance(indexes, list)
            or not all(isinstance(i, str) for i in indexes)
        ):
            raise FormatError("catalog: bad layout", object=CATALOG)
        infos = [BackupInfo.from_dict(b) for b in backups]
        return cls({b.id: b for b in infos}, list(indexes), str(doc.get("repository", "")))
