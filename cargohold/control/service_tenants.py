"""``Service``'s calls on tenants: create, list, get, set the quota, delete (refused while
the tenant has volumes). Only the admin reaches them (permission ``tenants``); what a
tenant sees of volumes is control/tenancy.py's.
"""

from __future__ import annotations

import logging
from typing import Any

from cargohold.control.access import Tenant
from cargohold.control.model import Volume
from cargohold.control.repository import MAX_RETRIES, now
from cargohold.control.requests import TenantCreate, TenantQuota
from cargohold.control.service_base import ServiceBase
from cargohold.control.tenancy import human, tenant_view, usage
from cargohold.errors import Busy, WrongState

log = logging.getLogger("cargohold.manager")


class TenantCalls(ServiceBase):
    async def _view(self, t: Tenant, vols: list[Volume] | None = None) -> dict[str, Any]:
        vols = await self.repo.volumes() if vols is None else vols
        used = usage(t.name, vols, await self.repo.operations())
        return tenant_view(t, used, sum(1 for v in vols if v.tenant == t.name))

    async def tenants(self) -> list[dict[str, Any]]:
        vols = await self.repo.volumes()
        return [await self._view(t, vols) for t in await self.repo.tenants()]

    async def tenant(self, name: str) -> dict[str, Any]:
        return await self._view((await self.repo.tenant(name))[0])

    async def create_tenant(self, req: TenantCreate) -> dict[str, Any]:
        t = Tenant(name=req.name, quota_bytes=req.quota_bytes, created_at=now())
        await self.repo.create_tenant(t)
        log.info(
            "tenant %s created (quota: %s)",
            t.name,
            "none" if t.quota_bytes is None else human(t.quota_bytes),
        )
        return await self._view(t)

    async def set_quota(self, name: str, req: TenantQuota) -> dict[str, Any]:
        """A new quota. One below what the tenant uses now is taken (nothing is taken away):
        its volumes keep working, and new volumes and expansions are refused until it is
        under again."""

        def change(t: Tenant) -> Tenant | None:
            if t.quota_bytes == req.quota_bytes:
                return None
            t.quota_bytes = req.quota_bytes
            return t

        t = await self.repo.update_tenant(name, change)
        return await self._view(t)

    async def delete_tenant(self, name: str) -> dict[str, Any]:
        """Refused while it has volumes (of any state: released ones hold data too)."""
        for _ in range(MAX_RETRIES):
            t, rev = await self.repo.tenant(name)
            vols = await self.repo.volumes()
            left = sorted(v.name for v in vols if v.tenant == name)
            if left:
                shown = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
                raise WrongState(
                    f"tenant {name} still has {len(left)} volume(s) ({shown}): delete them first"
                )
            view = await self._view(t, vols)
            if await self.repo.delete_tenant(name, rev):
                log.info("tenant %s deleted", name)
                return view
        raise Busy(f"tenant {name}: too many concurrent changes, try again")
