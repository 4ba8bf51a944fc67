"""An in-memory twin of the backup repositories the manager opens (unit tests only): one
repository per target URL with its key, and what a simulated engine's BACKUP / RESTORE
reports (``engine_result``), so that the manager's side of backups is stepped without a
target, an engine or a thread pool doing real work."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from cargohold.control.backup_records import BackupTarget, TargetSecrets
from cargohold.control.model import OperationAssignment, OperationKind
from cargohold.control.service_keys import ENCRYPTION_LABEL
from cargohold.encryption.layout import physical_size
from cargohold.errors import Busy, InvalidArgument, NotFound

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(32)).decode()


@dataclass(frozen=True)
class Info:
    """Stands for backup.repository.BackupInfo: what the manager uses of it."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass
class TwinRepository:
    key: bytes
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    gcs: int = 0
    pins: dict[str, list[str]] = field(default_factory=dict)  # holder -> backups (standbys)
    gets: int = 0  # catalog reads (backups())
    down: bool = False  # a target that does not answer

    def backups(self) -> list[Info]:
        if self.down:
            raise InvalidArgument("backup target: unreachable")
        self.gets += 1
        return [Info(d) for d in self.infos.values()]

    def pin(self, holder: str, backups: list[str], ttl: float) -> str:
        if self.down:
            raise InvalidArgument("backup target: unreachable")
        self.pins[holder] = sorted(backups)
        return f"locks/dr-{holder}"

    def unpin(self, holder: str) -> None:
        self.pins.pop(holder, None)

    def delete(self, backup_id: str) -> None:
        if any(backup_id in b for b in self.pins.values()):
            raise Busy(f"backup {backup_id} is pinned by a standby volume")
        if backup_id not in self.infos:
            raise NotFound(f"backup {backup_id} not in the catalog")
        del self.infos[backup_id]

    def gc(self) -> dict[str, Any]:
        self.gcs += 1
        return {"packs_deleted": 0, "bytes_freed": 0}

    def add(self, **info: Any) -> dict[str, Any]:
        rid = hashlib.sha256(repr(sorted(info.items())).encode()).hexdigest()[:16]
        full = {
            "id": rid,
            "volume": "v",
            "volume_id": "",
            "size": 1 << 30,
            "snapshot": "s",
            "generation": 1,
            "parent": None,
            "labels": {},
            "created": 1_000_000.0 + len(self.infos),
            "mode": "full",
            "bytes_read": 0,
            "bytes_new": 0,
            "bytes_total": 0,
            "chunks_new": 0,
            "chunks_reused": 0,
            **info,
        }
        self.infos[rid] = full
        return full


class TwinTargets:
    """The manager's ``open_backup_repository``, over twins: a URL starting with
    ``s3://down`` is unreachable; a wrong key for an existing repository is refused."""

    def __init__(self) -> None:
        self.repos: dict[str, TwinRepository] = {}
        self.opened: list[tuple[str, str]] = []  # (url, access key) of every open

    def __call__(self, target: BackupTarget, sec: TargetSecrets, create: bool) -> TwinRepository:
        self.opened.append((target.url, sec.access_key.get_secret_value()))
        if target.url.startswith("s3://down"):
            raise InvalidArgument(f"backup target {target.name} ({target.url}): unreachable")
        key = base64.b64decode(sec.repository_key.get_secret_value())
        repo = self.repos.get(target.url)
        if repo is None:
            if not create:
                raise InvalidArgument(f"backup target {target.name} holds no backup repository")
            repo = self.repos[target.url] = TwinRepository(key)
        elif repo.key != key:
            raise InvalidArgument(
                f"backup target {target.name} ({target.url}): the repository key does not "
                "open the repository there"
            )
        return repo

    def engine_result(self, oa: OperationAssignment) -> dict[str, Any]:
        """What an engine reports of a finished operation (the contract's result)."""
        if oa.kind is OperationKind.BACKUP:
            repo = self.repos[oa.secrets["url"]]
            parent = oa.args.get("parent")
            gen = 10 * (len(repo.infos) + 1)
            info = repo.add(
                volume=oa.volume,
                volume_id=oa.args["volume_id"],
                snapshot=oa.args["snapshot"],
                generation=gen,
                parent=parent,
                labels=oa.args.get("labels", {}),
                mode="incremental" if parent else "full",
                # the engine backs up what its replicas hold: an encrypted volume's plain
                # (stored) volume, 65/64 of its size (the twin's volumes are 1 GiB)
                **(
                    {"size": physical_size(1 << 30)}
                    if ENCRYPTION_LABEL in oa.args.get("labels", {})
                    else {}
                ),
            )
            return {**info, "reason": "" if parent else "no parent"}
        if oa.kind is OperationKind.RESTORE:
            if oa.args.get("base"):  # a standby's apply (engine/restore.py apply_delta)
                return {"changed_bytes": 8192, "data_bytes": 4096, "fetched_bytes": 900}
            return {"bytes_restored": 1 << 20, "data_bytes": 1 << 20, "seconds": 0.1}
        return {}
