"""Certificate rotation under a running workload (issue #16): three replica-server processes
and an engine over mutual TLS, ``cargohold verify run`` writing to the volume's NBD endpoint
the whole time, and meanwhile

1. every leaf certificate renewed (the replica servers', the engine's) by rewriting its
   credentials directory, then the engine made to reconnect to a replica (``remove-replica``
   and ``add-replica`` on its control socket: a new handshake with its renewed certificate);
2. a full CA rotation with the operator's command (``cargohold ca rotate stage|promote|
   retire``, run in this process): the next CA trusted everywhere, promoted, every leaf
   reissued from it, the engine reconnected to a replica (under the new chain while both CAs
   are trusted), the old CA retired and dropped from every trust bundle, and then a replica
   server restarted (the engine's reconnection now works only with its new certificate and
   trust, the server's only with its new ones).

Checked: ``verify`` reports no failed, lost or unanswered write, no failed flush and no
violation (rule ``acked``: every acknowledged write is read back); each replica server
presents the new certificate (its serial and issuer, read from a client's handshake); the
engine's log names the certificate it reloaded last (its serial); after retire a client
holding only the old CA's certificate is refused, and so is one whose certificate is the old
CA's even when it trusts the new one, while a client of the new CA is served; every replica
rebuilt and all three equal at the end. The rotation must end while the workload still runs.
One replica server runs with worker processes, checked through its replica's worker too.
docs/security.md ("Renewing, rotating and revoking, step by step").
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from typer.testing import CliRunner

from cargohold.cli.main import app as cli_app
from cargohold.constants import MIB
from cargohold.protocol.tls_hello import routing_name
from cargohold.replica.client import ReplicaClient
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import CA_FILE, CERT_FILE, CRL_FILE, KEY_FILE, Credentials
from tests.support.engine import EngineProc
from tests.support.processes import ROOT, ServerProc

SIZE = 32 * MIB
VOLUME = "rvol"
N = 3
CLUSTER = "c-rotation"
WORKLOAD_SECONDS = 25
WORKERS_AT = 1  # the replica server run with worker processes (routing by TLS server name)


class Rig:
    """The CA directory, the credentials directories of three replica servers and one
    engine, and the processes using them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        CertificateAuthority.create(self.ca_dir, CLUSTER)
        self.servers: list[ServerProc] = []
        self.engine: EngineProc | None = None
        self.leaves = {f"replica-{i}": (Role.REPLICA, f"node-{i}") for i in range(N)}
        self.leaves["engine"] = (Role.ENGINE, VOLUME)
        for name in self.leaves:
            self.renew(name)

    @property
    def ca(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.ca_dir)  # read again: the CLI changes it

    def dir(self, name: str) -> str:
        return str(self.root / "creds" / name)

    def renew(self, name: str) -> int:
        """A new key and certificate from the CA that signs now, with today's trust and CRLs,
        written over the component's files (what a renewal does); its serial."""
        role, ident = self.leaves[name]
        issued = self.ca.issue(Identity(CLUSTER, role, ident))
        issued.write(self.dir(name))
        return issued.serial

    def renew_all(self) -> dict[str, int]:
        return {name: self.renew(name) for name in self.leaves}

    def distribute_trust(self) -> None:
        """The CA directory's trust bundle and CRLs into every component's directory (what
        each component's next renewal would carry), certificates unchanged."""
        for name in self.leaves:
            d = Path(self.dir(name))
            for src, dst in (("ca.crl", CRL_FILE), ("trust.crt", CA_FILE)):
                tmp = d / f".{dst}.tmp"
                tmp.write_bytes((self.ca_dir / src).read_bytes())
                os.replace(tmp, d / dst)

    def client(self, tag: str, role: Role = Role.AGENT, name: str = "node-0") -> str:
        """A fresh credentials directory of the CA that signs now (a checker's)."""
        d = self.root / "clients" / tag
        self.ca.issue(Identity(CLUSTER, role, name)).write(d)
        return str(d)

    def old_cert_current_trust(self, old: str, tag: str) -> str:
        """A client directory with the certificate and key of ``old`` and the trust bundle
        and CRLs the CA directory holds now."""
        d = self.root / "clients" / f"old-cert-{tag}-trust"
        d.mkdir(parents=True)
        for f in (CERT_FILE, KEY_FILE):
            shutil.copy(Path(old) / f, d / f)
        for src, dst in (("trust.crt", CA_FILE), ("ca.crl", CRL_FILE)):
            shutil.copy(self.ca_dir / src, d / dst)
        return str(d)

    def rotate(self, step: str) -> None:
        """``cargohold ca rotate DIR STEP``: the operator's command, run in this process
        (a CLI process takes seconds to start on a loaded machine: time the workload needs)."""
        r = CliRunner().invoke(cli_app, ["ca", "rotate", str(self.ca_dir), step])
        assert r.exit_code == 0 and f"{step} done" in r.output, r.output

    # --- processes ----------------------------------------------------------------------
    def start_server(self, i: int, port: int = 0) -> ServerProc:
        """Server ``i`` on its disk; server ``WORKERS_AT`` with two worker processes (each
        with its own TLS contexts, which must follow the files as the parent's do)."""
        disk = self.root / f"disk-{i}"
        disk.mkdir(exist_ok=True)
        s = ServerProc(
            [str(disk)],
            port=port,
            tls_dir=self.dir(f"replica-{i}"),
            log_dir=str(self.root),
            workers=2 if i == WORKERS_AT else 1,
        )
        return s.start()

    def reconnect(self, i: int) -> None:
        """The engine closes its connection to replica ``i`` (``remove-replica``) and makes a
        new one (``add-replica``: a new TLS handshake with the credentials both sides hold
        now); the replica comes back through a delta rebuild."""
        assert self.engine is not None
        spec = f"r{i}@127.0.0.1:{self.servers[i].port}"
        assert self.engine.ctl(op="remove-replica", id=f"r{i}").get("ok")
        reply = self.engine.ctl(op="add-replica", replica=spec)
        assert reply.get("ok"), reply
        self.engine.wait_for(lambda s: modes(s)[f"r{i}"] == "RW", 60, f"r{i} rebuilt")

    def restart_server(self, i: int) -> None:
        """SIGTERM server ``i`` and start it again on its disk and port: the engine loses
        its connection, drops the replica, and gets it back by ``add-replica`` (a new TLS
        handshake with whatever credentials it and the server hold now) and a rebuild."""
        assert self.engine is not None
        port = self.servers[i].port
        self.servers[i].stop()
        self.engine.wait_for(lambda s: modes(s)[f"r{i}"] == "ERR", 30, f"r{i} dropped")
        self.servers[i] = self.start_server(i, port)
        reply = self.engine.ctl(op="add-replica", replica=f"r{i}@127.0.0.1:{port}")
        assert reply.get("ok"), reply
        self.engine.wait_for(lambda s: modes(s)[f"r{i}"] == "RW", 60, f"r{i} rebuilt")

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        for s in self.servers:
            s.stop()


def modes(status: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["mode"] for r in status["replicas"]}


# --- TLS from the client's side ---------------------------------------------------------------
def peer_certificate(port: int, ctx: ssl.SSLContext, replica: str) -> x509.Certificate | None:
    """The certificate a server presents on a new handshake naming ``replica`` (a server
    with workers: that replica's worker presents it); None: refused."""

    async def go() -> bytes | None:
        try:
            _r, w = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname=routing_name(replica)
                ),
                5,
            )
        except (OSError, TimeoutError):  # ssl.SSLError is an OSError
            return None
        der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        w.close()
        return der  # type: ignore[no-any-return]

    der = asyncio.run(go())
    return None if der is None else x509.load_der_x509_certificate(der)


def served(port: int, creds_dir: str, replica: str | None = None) -> bool:
    """Whether a client with these credentials gets an answer from the replica server (a
    HELLO over mutual TLS): a server that refuses the client certificate lets the client
    finish its handshake and closes, so only a request tells. ``replica``: name it (TLS
    server name), so that a server with workers hands the connection to that replica's."""

    async def go() -> bool:
        try:
            c = await ReplicaClient.connect(
                "127.0.0.1", port, tls=Credentials.load(creds_dir), timeout=5, replica=replica
            )
        except Exception:
            return False
        try:
            return bool((await asyncio.wait_for(c.hello(), 5)).get("node"))
        except Exception:
            return False
        finally:
            c.close_nowait()

    return asyncio.run(go())


def until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def presents(rig: Rig, i: int, serial: int, issuer: x509.Name, checker: str) -> bool:
    ctx = Credentials.load(checker).client_context()
    cert = peer_certificate(rig.servers[i].port, ctx, f"r{i}")
    return cert is not None and cert.serial_number == serial and cert.issuer == issuer


def digests(rig: Rig, creds_dir: str) -> list[str]:
    import hashlib

    async def one(i: int) -> str:
        c = await ReplicaClient.connect(
            "127.0.0.1", rig.servers[i].port, tls=Credentials.load(creds_dir), replica=f"r{i}"
        )
        try:
            await c.open(f"r{i}", 1)
            h = hashlib.sha256()
            for off in range(0, SIZE, 8 * MIB):
                h.update(bytes(await c.read(off, 8 * MIB)))
            return h.hexdigest()
        finally:
            await c.close()

    return [asyncio.run(one(i)) for i in range(N)]


@pytest.fixture
def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = Rig(tmp_path)
    try:
        agent = r.client("agent")
        for i in range(N):
            r.servers.append(r.start_server(i))

        async def create(i: int) -> None:
            c = await ReplicaClient.connect(
                "127.0.0.1", r.servers[i].port, tls=Credentials.load(agent), replica=f"r{i}"
            )
            await c.create(f"r{i}", SIZE, volume=VOLUME)
            await c.close()

        for i in range(N):
            asyncio.run(create(i))
        specs = [f"r{i}@127.0.0.1:{s.port}" for i, s in enumerate(r.servers)]
        r.engine = EngineProc(VOLUME, specs, 1, str(tmp_path), tls_dir=r.dir("engine")).start()
        yield r
    finally:
        r.close()
    for s in r.servers:
        assert "Traceback" not in s.output(), s.output()


def test_renewal_and_ca_rotation_under_verify_lose_nothing(rig: Rig, tmp_path: Path) -> None:
    assert rig.engine is not None
    old_issuer = rig.ca.cert.subject
    old_only = rig.client("old-only")  # an old-CA certificate trusting only the old CA
    checker = rig.client("checker-1")
    history = tmp_path / "run.jsonl"
    verify_log = open(tmp_path / "verify.out", "w")
    verify = subprocess.Popen(
        [
            *(sys.executable, "-m", "cargohold", "verify", "run", rig.engine.uri, "--yes"),
            *("--seconds", str(WORKLOAD_SECONDS), "--connections", "2", "--depth", "4"),
            *("--history", str(history), "-o", "json"),
        ],
        stdout=verify_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    t0 = time.monotonic()
    try:
        rig.engine.wait_for(lambda s: s["generation"] > 200, 30, "the workload's writes")

        # 1. every leaf renewed in place; each server presents its new certificate
        serials = rig.renew_all()
        for i in range(N):
            until(
                lambda i=i: presents(rig, i, serials[f"replica-{i}"], old_issuer, checker),
                10,
                f"replica server {i} presenting its renewed certificate",
            )
        rig.reconnect(0)  # the engine reconnects with its renewed certificate

        # 2. the CA rotation, with the operator's commands
        rig.rotate("stage")
        rig.distribute_trust()  # every component trusts both CAs
        rig.rotate("promote")
        new_issuer = rig.ca.cert.subject
        assert new_issuer != old_issuer
        serials = rig.renew_all()  # every leaf from the new CA
        checker = rig.client("checker-2")
        for i in range(N):
            until(
                lambda i=i: presents(rig, i, serials[f"replica-{i}"], new_issuer, checker),
                10,
                f"replica server {i} presenting a certificate of the new CA",
            )
        rig.reconnect(1)  # a reconnection under the new chain, both CAs trusted
        # not retired yet: an old CA's certificate still gets in (its holder trusting both)
        old_cert_both = rig.old_cert_current_trust(old_only, "both")
        for i in range(N):
            assert served(rig.servers[i].port, old_cert_both, f"r{i}"), f"server {i}"
        rig.rotate("retire")
        rig.distribute_trust()  # nobody trusts the old CA any more
        # the old CA's certificate is refused, also when its holder trusts the new CA
        old_cert_new_trust = rig.old_cert_current_trust(old_only, "new")
        for i in range(N):
            until(
                lambda i=i: (
                    not served(rig.servers[i].port, old_only, f"r{i}")
                    and not served(rig.servers[i].port, old_cert_new_trust)  # the parent
                    and not served(rig.servers[i].port, old_cert_new_trust, f"r{i}")
                ),
                10,
                f"replica server {i} refusing the retired CA",
            )
            assert served(rig.servers[i].port, checker), f"server {i} refuses the new CA"
            assert served(rig.servers[i].port, checker, f"r{i}"), f"server {i}'s worker refuses"
        rig.restart_server(2)  # works only with the engine's new certificate and trust
        took = time.monotonic() - t0
        assert verify.poll() is None, f"the workload ended before the rotation ({took:.1f} s)"
        rc = verify.wait(timeout=WORKLOAD_SECONDS + 120)
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.wait()
        verify_log.close()

    out = (tmp_path / "verify.out").read_text()
    assert rc == 0, out
    result = json.loads(out[out.index("{") :])
    h = result["history"]
    assert result["ok"] and result["violations_total"] == 0, out
    assert not result["read_violations"], out
    assert h["writes_failed"] == 0 and h["writes_lost"] == 0 and h["writes_in_flight"] == 0, h
    assert h["flushes"] == h["flushes_acked"] and h["flushes"] > 0, h
    assert h["writes_acked"] > 500 and h["reads_checked"] > 0, h
    st = rig.engine.ctl(op="status")
    assert st["robustness"] == "healthy" and set(modes(st).values()) == {"RW"}, st
    # the engine's log names the certificate it reloaded last: its renewal from the new CA
    reloads = re.findall(
        r"TLS credentials in \S+ reloaded: certificate serial ([0-9A-F]+)", rig.engine.output()
    )
    assert reloads and int(reloads[-1], 16) == serials["engine"], rig.engine.output()
    assert len(set(digests(rig, rig.client("agent-final")))) == 1
