"""The manager process: the API server, the leader election, and the reconcilers.

``cargohold manager`` builds one of these. Every manager serves the API; the one that
holds the ``manager`` leadership in the state store (an etcd lease, or an expiring row in
SQLite) also runs the reconcilers, and after them the recurring jobs (job_runner.py). A standby campaigns every pass and takes over within
``leader_ttl`` seconds of the leader's death.

The API is served over HTTPS (TLS 1.3; a client certificate asked for, not required: bearer
tokens work too) on the TCP socket, and over plain HTTP on the unix socket (mode 0600, a
bearer token required); control/auth.py says who may do what. ``tls=None`` (``--plaintext``)
serves plain HTTP and authenticates nobody. With ``--init`` the manager writes the first
admin token to ``admin_token_file`` (mode 0600), never to its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from cargohold.control.api import build
from cargohold.control.auth import Auth, make_protocol
from cargohold.control.grant_signer import GrantSigner
from cargohold.control.identity import open_cluster
from cargohold.control.job_actions import ServiceActions
from cargohold.control.job_runner import JobRunner
from cargohold.control.jobs import JobStore
from cargohold.control.reconcilers import RECONCILERS
from cargohold.control.repository import Repository
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.standby_follower import FOLLOW_TICK, StandbyFollower
from cargohold.control.state import MemoryStateStore, open_store
from cargohold.control.token_store import TokenStore
from cargohold.errors import CargoholdError, ConfigError, ManagerUnavailable, StateStoreDamaged
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Role
from cargohold.security.tls import Credentials

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
        tls: Credentials | None = None,
        admin_token_file: str | None = None,
        ca_dir: str | None = None,
        extend: Callable[[FastAPI, Service], None] | None = None,
    ) -> None:
        # without --init nothing is created: a missing or empty store is refused (identity.py)
        self.store = open_store(state_url, create=init, etcd_tls=settings.etcd_tls_dir)
        self.init = init
        self.cluster_id = cluster_id  # with init: recreate a lost cluster's store under its id
        self.settings = settings
        self.id = manager_id
        backend = state_url.split(":", 1)[0]
        self.repo = Repository(self.store)
        self.service = Service(self.repo, settings, backend, manager_id)
        self.reconcilers = [cls(self.repo, settings) for cls in RECONCILERS]
        # recurring snapshot and backup jobs: run after the reconcilers, by the leader only
        self.jobs = JobRunner(JobStore(self.store), ServiceActions(self.service))
        # standby volumes follow their targets in a loop of their own (a slow target never
        # delays the reconcilers), by the leader only
        self.follower = StandbyFollower(self.service)
        self.tls = tls  # None: --plaintext
        self.admin_token_file = admin_token_file
        self.extend = extend  # routes served beside the API: the web console (cargohold/ui)
        self.ca_dir = ca_dir  # the cluster CA: signs joining agents' and engines' certificates
        self.service.plaintext = tls is None
        self.service.tls_dir = tls.directory if tls is not None else None
        if tls is not None:  # clones' read grants are signed with the manager's key
            self.service.grant_signer = GrantSigner(tls.directory)

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
            for rec in [*self.reconcilers, self.jobs]:
                t0, failed = time.perf_counter(), True
                try:
                    await rec.run_once()
                    failed = False
                except CargoholdError as e:
                    log.warning("%s: %s", type(rec).__name__, e)
                    if isinstance(e, StateStoreDamaged):
                        self.repo.note_damage(e)
                except Exception:
                    log.exception("%s failed; retrying next pass", type(rec).__name__)
                finally:  # /metrics: each pass's duration and failures
                    self.service.metrics.reconciled(
                        type(rec).__name__, time.perf_counter() - t0, failed
                    )
        return lead

    async def reconcile_forever(self) -> None:
        interval = min(self.settings.reconcile_interval, self.settings.leader_ttl / 3)
        kick = self.service.kick
        while True:
            kick.clear()
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), interval)

    async def follow_forever(self) -> None:
        """The standby follower's loop (standby_follower.py), while this manager leads."""
        while True:
            if self.service.is_leader:
                try:
                    await self.follower.run_once()
                except CargoholdError as e:
                    log.warning("standby follower: %s", e)
                except Exception:
                    log.exception("standby follower failed; retrying")
            await asyncio.sleep(FOLLOW_TICK)

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
        if self.tls is not None:
            ident = self.tls.identity()
            if ident.role is not Role.MANAGER or ident.cluster != cluster.id:
                await self.store.close()
                raise ConfigError(
                    f"the certificate in {self.tls.directory} is {ident.uri}; a manager of "
                    f"cluster {cluster.id} needs cargohold://{cluster.id}/manager/<name>"
                )
        if self.ca_dir:  # made with the cluster (--init), its id the store's
            self.service.ca = CertificateAuthority.open_or_create(self.ca_dir, cluster.id)
            self.service._publish_crl()
        if self.init and self.admin_token_file:
            await self.write_admin_token(self.admin_token_file)

    async def write_admin_token(self, path: str) -> None:
        """Make the first admin token and write it to ``path`` (mode 0600)."""
        _, token = await TokenStore(self.store).create("admin", "bootstrap")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (token + "\n").encode())
        finally:
            os.close(fd)
        log.warning("manager %s: the first admin token is in %s (mode 0600)", self.id, path)

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
            os.chmod(unix, 0o600)  # and a bearer token is still required (auth.py)
        app = build(self.service, Auth(self.repo, plaintext=self.tls is None), self.extend)
        servers = []
        for sockets, tls in ((socks, self.tls), ([u] if unix is not None else [], None)):
            if not sockets:
                continue
            config = uvicorn.Config(
                app,
                http="h11",
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=2,
            )
            config.load()
            config.http_protocol_class = make_protocol(config.http_protocol_class)
            if tls is not None:
                config.ssl = tls.server_context()  # follows its files (security/tls.py)
            servers.append((uvicorn.Server(config), sockets))
        loop_task = asyncio.create_task(self.reconcile_forever())
        follow_task = asyncio.create_task(self.follow_forever())
        try:
            tasks = [asyncio.ensure_future(srv.serve(sockets=sk)) for srv, sk in servers]
            # one server's stop (a signal reaches the one that installed its handler) stops all
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for srv, _ in servers:
                srv.should_exit = True
            await asyncio.gather(*tasks)
        finally:
            loop_task.cancel()
            follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            with contextlib.suppress(asyncio.CancelledError):
                await follow_task
            with contextlib.suppress(CargoholdError, OSError):
                await self.store.resign("manager", self.id)
            await self.store.close()
            if unix is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(unix)
