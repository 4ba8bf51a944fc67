"""What every part of ``Service`` shares: the repository, the settings, the manager's
identity, the reconcilers' wake-up and the heartbeat watch; and the helpers the calls of
several record kinds use (a volume's view, a new operation, "is the volume usable").

``Service`` (service.py) is made of the parts in service_*.py and heartbeat_hold.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cargohold.control import key_generations
from cargohold.control.backup_records import Backup
from cargohold.control.io_history import IoHistory
from cargohold.control.metrics import ManagerMetrics
from cargohold.control.model import Heartbeat, Operation, OperationKind, Snapshot, Volume, keys
from cargohold.control.repository import Guard, Repository, new_id, now
from cargohold.control.settings import ManagerSettings
from cargohold.control.state.base import Put
from cargohold.control.tenancy import check_visible
from cargohold.control.views import volume_view
from cargohold.control.watch import AssignmentWatch
from cargohold.errors import WrongState
from cargohold.security.identity import Identity


class ServiceBase:
    """The state and helpers every part of ``Service`` uses; not used alone."""

    def __init__(
        self, repo: Repository, settings: ManagerSettings, backend: str, manager_id: str
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.backend = backend
        self.manager_id = manager_id
        self.is_leader = False
        self.kick = asyncio.Event()  # wakes the reconcilers after a write
        self.watch = AssignmentWatch()  # wakes held heartbeats when their node's work changes
        self.reports: dict[str, tuple[str, Heartbeat]] = {}  # node -> (digest, last report)
        self.agent_versions: dict[str, str] = {}  # node -> the version its agent reported
        self.metrics = ManagerMetrics()  # /metrics: API latency, reconciler passes
        self.io_history = IoHistory()  # the console's I/O sparklines (memory only)
        repo.observers.append(self.watch.changed)

    async def view(self, vol: Volume) -> dict[str, Any]:
        nodes = {n.name: n for n in await self.repo.nodes()}
        return volume_view(vol, await self.repo.replicas(vol.name), nodes)

    async def _volume(self, name: str, who: Identity | None) -> Volume:
        """The volume, if ``who`` may see it (None: the manager itself); else NotFound,
        as for a volume that does not exist (control/tenancy.py)."""
        return check_visible(who, await self.repo.volume(name))

    async def _operation(
        self,
        kind: OperationKind,
        volume: str,
        args: dict[str, Any],
        also: list[Put] | None = None,
        guard: Guard | None = None,
    ) -> Operation:
        op = Operation(id=new_id("op-"), kind=kind, volume=volume, args=args, created_at=now())
        await self.repo.create_operation(op, also=also, guard=guard)
        self.kick.set()
        return op

    async def _restore_source(
        self, bid: str, owner: str | None, size: int, who: Identity | None
    ) -> Backup:
        """The backup a new volume restores, checked (service_backups.py)."""
        raise NotImplementedError

    async def _backup_encryption(self, bid: str, who: Identity | None) -> Any:
        """The key record a restore of backup ``bid`` needs (service_backups.py)."""
        raise NotImplementedError

    def _usable(self, vol: Volume) -> None:
        if vol.deleting or vol.released:
            raise WrongState(f"volume {vol.name} is being deleted")
        if not vol.initialized:
            what = "restored" if vol.source and vol.source.backup else "cloned"
            raise WrongState(f"volume {vol.name} is still being {what} ({vol.state.value})")

    async def _snapshot_op(self, volume: str, snap: str, labels: dict[str, str]) -> Operation:
        vol = await self.repo.volume(volume)  # an encrypted one's: the key generations
        kept = key_generations.snapshot_generations(vol.encryption)
        rec = Snapshot(
            volume=volume, name=snap, labels=labels, created_at=now(), key_generations=kept
        )
        op = await self._operation(
            OperationKind.SNAPSHOT_CREATE,
            volume,
            {"name": snap, "labels": labels},
            also=[Put(keys.snapshot(volume, snap), rec.model_dump_json().encode())],
        )
        return op
