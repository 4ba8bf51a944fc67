"""The manager process: the API server, the leader election, and the reconcilers.

``cargohold manager`` builds one of these. Every manager serves the API; the one that
holds the ``manager`` leadership in the state store (an etcd lease, or an expiring row in
SQLite) also runs the reconcilers. A standby campaigns every pass and takes over within
``leader_ttl`` seconds of the leader's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

import uvicorn

from cargohold.control.api import build
from cargohold.control.auth import PeerProtocol
from cargohold.control.identity import open_cluster
from cargohold.control.reconcilers import RECONCILERS
from cargohold.control.repository import Repository
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import MemoryStateStore, open_store
from cargohold.errors import CargoholdError, ManagerUnavailable, StateStoreDamaged
from cargohold.security.ca import CertificateAuthority
from cargohold.security.tls import Credentials, warn_plaintext

log = logging.getLogger("cargohold.manager")
STORE_WAIT = 60.0  # seconds a starting manager waits for an unreachable state store


class Manager:
    def __init__(
        self,
        state_url: str,
        manager_id: str,
        settings: ManagerSettings,
        init: bool = False,
        cluster_id: str | None = None,
        ca_dir: str | None = None,
        tls_dir: str | None = None,
    ) -> None:
        # without --init nothing is created: a missing or empty store is refused (identity.py)
        self.store = open_store(state_url, create=init)
        self.init = init
        self.cluster_id = cluster_id  # with init: recreate a lost cluster's store under its id
        self.settings = settings
        self.id = manager_id
        backend = state_url.split(":", 1)[0]
        self.repo = Repository(self.store)
        self.service = Service(self.repo, settings, backend, manager_id)
        self.reconcilers = [cls(self.repo, settings) for cls in RECONCILERS]
        self.ca_dir = ca_dir  # the cluster CA: signs joining agents' and engines' certificates
        # the API's own credentials (None: plaintext, said loudly)
        self.tls = Credentials.load(tls_dir, client_optional=True) if tls_dir else None
        self.service.plaintext = self.tls is None
        self.service.tls_dir = Path(tls_dir) if tls_dir else None
        if self.tls is None:
            warn_plaintext(f"manager {manager_id}'s REST API")

    async def run_once(self) -> bool:
        """One pass: campaign, and reconcile if we lead. Returns whether we lead."""
        try:
            lead = await self.store.campaign("manager", self.id, self.settings.leader_ttl)
        except CargoholdError as e:
            log.warning("manager %s: state store unavailable: %s", self.id, e)
            if isinstance(e, StateStoreDamaged):
                self.repo.note_damage(e)  # /healthz fails until it is repaired
            lead = False
        if lead != self.service.is_leader:
            log.info("manager %s is %s", self.id, "the leader now" if lead else "standing by")
        self.service.is_leader = lead
        if lead:
            for rec in self.reconcilers:
                try:
                    await rec.run_once()
                except CargoholdError as e:
                    log.warning("%s: %s", type(rec).__name__, e)
                    if isinstance(e, StateStoreDamaged):
                        self.repo.note_damage(e)
                except Exception:
                    log.exception("%s failed; retrying next pass", type(rec).__name__)
        return lead

    async def reconcile_forever(self) -> None:
        interval = min(self.settings.reconcile_interval, self.settings.leader_ttl / 3)
        kick = self.service.kick
        while True:
            kick.clear()
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), interval)

    async def open_cluster(self) -> None:
        """Check the store is this cluster's (or make a new cluster with ``--init``); close
        it and raise ConfigError, naming the store and what is wrong, otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORE_WAIT
        said = False
        try:
            while True:
                try:
                    cluster = await open_cluster(
                        self.repo,
                        self.init,
                        allow_empty=isinstance(self.store, MemoryStateStore),
                        cluster_id=self.cluster_id,
                    )
                    break
                except ManagerUnavailable as e:  # not there yet (etcd starting): wait a while
                    if isinstance(e, StateStoreDamaged) or loop.time() >= deadline:
                        raise  # a damaged store does not heal by waiting
                    if not said:
                        log.warning(
                            "manager %s: state store unavailable: %s; retrying for %.0f s",
                            self.id,
                            e,
                            STORE_WAIT,
                        )
                        said = True
                    await asyncio.sleep(1.0)
        except BaseException:
            await self.store.close()
            raise
        log.info("manager %s serves cluster %s", self.id, cluster.id)
        if self.ca_dir:  # made with the cluster (--init), its id the store's
            self.service.ca = CertificateAuthority.open_or_create(self.ca_dir, cluster.id)
            self.service._publish_crl()

    async def serve(self, listen: tuple[str, int] | None, unix: str | None) -> None:
        await self.open_cluster()
        socks = []
        if listen is not None:
            s = socket.socket(socket.AF_INET6 if ":" in listen[0] else socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(listen)
            socks.append(s)
        if unix is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix)
            u = socket.socket(socket.AF_UNIX)
            u.bind(unix)
            os.chmod(unix, 0o660)
            socks.append(u)
        tls = self.tls
        config = uvicorn.Config(
            build(self.service),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            http=PeerProtocol,  # the TLS peer's identity for control/auth.py
            ssl_context_factory=(lambda _c, _d: tls.server_context()) if tls else None,
        )
        server = uvicorn.Server(config)
        loop_task = asyncio.create_task(self.reconcile_forever())
        try:
            await server.serve(sockets=socks)
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            with contextlib.suppress(CargoholdError, OSError):
                await self.store.resign("manager", self.id)
            await self.store.close()
            if unix is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(unix)
