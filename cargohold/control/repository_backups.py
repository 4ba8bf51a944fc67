"""The backup records' part of ``Repository`` (repository.py): backup targets, their
secrets and backups, over the same compare-and-swap helpers (control/backup_records.py says
what they are). A mixin so that repository.py stays one file per concern."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel

from cargohold.control.backup_records import Backup, BackupTarget, TargetSecrets
from cargohold.control.model import keys
from cargohold.control.state.base import Compare, Delete, Put, StateStore
from cargohold.errors import AlreadyExists, NotFound

M = TypeVar("M", bound=BaseModel)


def _dump(rec: BaseModel) -> bytes:
    return rec.model_dump_json().encode()


class BackupRecords(ABC):
    """Typed access to the backup records (``Repository`` implements the helpers)."""

    store: StateStore

    @abstractmethod
    async def _get(self, key: str, model: type[M]) -> tuple[M, int] | None: ...

    @abstractmethod
    async def _list(self, prefix: str, model: type[M]) -> list[M]: ...

    @abstractmethod
    async def _create(self, key: str, rec: BaseModel, what: str) -> None: ...

    @abstractmethod
    async def _update(
        self,
        key: str,
        model: type[M],
        change: Callable[[M], M | None] | Callable[[M], Awaitable[M | None]],
        what: str,
    ) -> M: ...

    @abstractmethod
    def _forget(self, key: str) -> None: ...

    # --- backup targets and backups (control/backup_records.py) ---------------------------
    async def backup_target(self, name: str) -> BackupTarget:
        got = await self._get(keys.backup_target(name), BackupTarget)
        if got is None:
            raise NotFound(f"backup target {name} not found")
        return got[0]

    async def backup_targets(self) -> list[BackupTarget]:
        return await self._list(keys.BACKUP_TARGETS, BackupTarget)

    async def target_secrets(self, name: str) -> TargetSecrets:
        got = await self._get(keys.target_secrets(name), TargetSecrets)
        if got is None:
            raise NotFound(f"backup target {name} has no credentials recorded")
        return got[0]

    async def create_backup_target(self, target: BackupTarget, secrets: TargetSecrets) -> None:
        """The target and its secrets, together (``secret_json``: the only place the
        secrets are written in clear, the state store)."""
        tkey, skey = keys.backup_target(target.name), keys.target_secrets(target.name)
        if not await self.store.txn(
            [Compare(tkey, 0)], [Put(tkey, _dump(target)), Put(skey, secrets.secret_json())]
        ):
            raise AlreadyExists(f"backup target {target.name} already exists")

    async def update_backup_target(
        self, name: str, change: Callable[[BackupTarget], BackupTarget | None]
    ) -> BackupTarget:
        return await self._update(
            keys.backup_target(name), BackupTarget, change, f"backup target {name}"
        )

    async def delete_backup_target(self, name: str, forget: list[str]) -> None:
        """The target, its secrets and the records of backups ``forget`` (their data stays
        in the repository: adding the target again imports them)."""
        ops: list[Put | Delete] = [
            Delete(keys.backup_target(name)),
            Delete(keys.target_secrets(name)),
            *(Delete(keys.backup(b)) for b in forget),
        ]
        await self.store.txn([], ops)
        for op in ops:
            self._forget(op.key)

    async def backup(self, bid: str) -> Backup:
        got = await self._get(keys.backup(bid), Backup)
        if got is None:
            raise NotFound(f"backup {bid} not found")
        return got[0]

    async def backups(self) -> list[Backup]:
        return sorted(await self._list(keys.BACKUPS, Backup), key=lambda b: (b.created, b.id))

    async def create_backup(self, rec: Backup) -> None:
        await self._create(keys.backup(rec.id), rec, f"backup {rec.id}")

    async def update_backup(self, bid: str, change: Callable[[Backup], Backup | None]) -> Backup:
        return await self._update(keys.backup(bid), Backup, change, f"backup {bid}")

    async def delete_backup_record(self, bid: str) -> None:
        await self.store.delete(keys.backup(bid))
        self._forget(keys.backup(bid))
