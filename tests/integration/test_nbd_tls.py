"""NBD over TLS (NBD_OPT_STARTTLS, FORCEDTLS) on the engine's network endpoint, against
real clients we did not write: qemu-img and qemu-io (GnuTLS through qemu's tls-creds-x509)
and libnbd's nbdinfo and nbdcopy (``nbds://`` URIs). A real engine with three real replica
servers; certificates from a real cluster CA (security/ca.py), laid out for the tools by
security/x509_dir.py. Every test compares bytes, checksums or exit codes.

The endpoint listens on loopback with ``--nbd-tls`` (the rule that makes TLS mandatory off
loopback is checked by starting an engine on a wildcard address without credentials:
it refuses, before it binds anything)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys

import pytest

from cargohold.protocol import nbd
from cargohold.replica.client import ReplicaClient
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials
from cargohold.security.x509_dir import lay_out
from tests.support.engine import EngineProc
from tests.support.processes import ROOT, ServerProc

MIB = 1 << 20
SIZE = 64 * MIB
CLUSTER = "c-nbd"
NODE = "node-1"

pytestmark = pytest.mark.skipif(
    not all(os.path.exists(f"/usr/bin/{t}") for t in ("qemu-img", "qemu-io", "nbdinfo", "nbdcopy")),
    reason="qemu-utils and libnbd-bin are needed (scripts/setup.sh installs them)",
)


def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def ok(*cmd: str, timeout: float = 60) -> str:
    p = run(*cmd, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


class Lab:
    """A CA, an engine with NBD over TLS for volume ``vol`` attached to NODE, and client
    directories in qemu/GnuTLS names: ``dirs[name]``."""

    def __init__(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        self.tmp = tmp_path
        self.ca = CertificateAuthority.create(tmp_path / "ca", CLUSTER)
        eng = self.ca.issue(Identity(CLUSTER, Role.ENGINE, "vol"), hosts=["127.0.0.1"])
        self.engine_creds = eng.write(tmp_path / "engine-creds")
        self.dirs = {
            "good": self.client(Identity(CLUSTER, Role.AGENT, NODE)),
            "other-node": self.client(Identity(CLUSTER, Role.AGENT, "node-2")),
            "wrong-role": self.client(Identity(CLUSTER, Role.ENGINE, "vol")),
            "tenant-csi": self.client(Identity(CLUSTER, Role.CSI, NODE, tenant="t1")),
            "expired": self.client(
                Identity(CLUSTER, Role.AGENT, NODE), lifetime=dt.timedelta(minutes=-1)
            ),
        }
        revoked = self.ca.issue(Identity(CLUSTER, Role.AGENT, NODE))
        self.dirs["revoked"] = lay_out(revoked.write(tmp_path / "revoked"), tmp_path / "x509-rev")
        self.ca.revoke(revoked.serial, "node-1 removed")
        (self.engine_creds / "ca.crl").write_bytes(self.ca.crl_pem())  # before the engine starts
        other = CertificateAuthority.create(tmp_path / "other-ca", CLUSTER)
        foreign = other.issue(Identity(CLUSTER, Role.AGENT, NODE)).write(tmp_path / "foreign")
        self.dirs["other-ca"] = lay_out(foreign, tmp_path / "x509-other-ca")
        # it trusts our CA (so it can check the server) but has no certificate of its own
        nocert = tmp_path / "x509-no-cert"
        nocert.mkdir()
        (nocert / "ca-cert.pem").write_bytes((self.engine_creds / "ca.crt").read_bytes())
        self.dirs["no-cert"] = nocert

        # the replica servers speak mutual TLS too: the engine's --tls-dir serves both links
        server_creds = self.ca.issue(Identity(CLUSTER, Role.REPLICA, NODE)).write(
            tmp_path / "replica-server"
        )
        agent = Credentials.load(
            self.ca.issue(Identity(CLUSTER, Role.AGENT, NODE)).write(tmp_path / "agent")
        )
        self.servers = []
        for i in range(3):
            (tmp_path / f"node-{i}").mkdir()
            server = ServerProc([str(tmp_path / f"node-{i}")], tls_dir=str(server_creds))
            self.servers.append(server.start())

        async def create() -> None:
            for i, s in enumerate(self.servers):
                c = await ReplicaClient.connect("127.0.0.1", s.port, tls=agent, replica=f"r{i}")
                await c.create(f"r{i}", SIZE, volume="vol")  # engine/vol may open it
                await c.close()

        asyncio.run(create())
        self.unix = str(tmp_path / "vol.nbd")
        specs = [f"r{i}@127.0.0.1:{s.port}" for i, s in enumerate(self.servers)]
        extra = ["--unix", self.unix, "--nbd-tls", "--tls-dir", str(self.engine_creds)]
        self.engine = EngineProc(
            "vol", specs, 1, str(tmp_path), local="r0", extra=[*extra, "--node", NODE]
        ).start()

    def client(self, ident: Identity, **kw) -> os.PathLike[str]:  # type: ignore[no-untyped-def]
        tag = f"{ident.role}-{ident.name}-{len(os.listdir(self.tmp))}"
        creds = self.ca.issue(ident, **kw).write(self.tmp / f"creds-{tag}")
        return lay_out(creds, self.tmp / f"x509-{tag}")

    def nbds(self, who: str = "good") -> str:
        return f"nbds://127.0.0.1:{self.engine.port}/vol?tls-certificates={self.dirs[who]}"

    def tls_object(self, who: str = "good") -> list[str]:
        return ["--object", f"tls-creds-x509,id=tls0,dir={self.dirs[who]},endpoint=client"]

    def image_opts(self) -> str:
        return f"driver=nbd,host=127.0.0.1,port={self.engine.port},export=vol,tls-creds=tls0"

    def qemu(self, who: str = "good") -> list[str]:
        """qemu-io options for the volume over TLS as ``who``."""
        return [*self.tls_object(who), "--image-opts", self.image_opts()]

    def stop(self) -> int | None:
        rc = self.engine.stop()
        for s in self.servers:
            s.stop()
        return rc


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    yield lab
    rc = lab.stop()
    assert rc == 0, lab.engine.output()  # drained, flushed and closed cleanly
    assert "Traceback" not in lab.engine.output(), lab.engine.output()


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pattern(path: str, size: int) -> str:
    data = bytearray(os.urandom(size))
    data[size // 4 : size // 2] = bytes(size // 4)  # a zero run: sparse-aware copies too
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def test_qemu_and_libnbd_read_back_over_tls_what_they_wrote(lab, tmp_path):
    assert lab.engine.output().count("TLS required") == 1
    src = str(tmp_path / "src.img")
    want = pattern(src, 16 * MIB)
    # qemu-img writes the image over TLS; nbdcopy (libnbd) reads it back over nbds://
    ok(
        "qemu-img", "convert", "-n", *lab.tls_object(), "--image-opts",
        f"driver=file,filename={src}", "--target-image-opts", lab.image_opts(),
    )  # fmt: skip
    got = str(tmp_path / "got.img")
    ok("nbdcopy", lab.nbds(), got)
    assert os.path.getsize(got) == SIZE
    with open(got, "rb") as f:
        assert hashlib.sha256(f.read(16 * MIB)).hexdigest() == want
    # and the other way round: nbdcopy writes, qemu-io checks the pattern
    ok("qemu-io", "-c", "write -P 0x5a 32M 1M", *lab.qemu())
    out = ok("qemu-io", "-c", "read -P 0x5a 32M 1M", *lab.qemu())
    assert "read 1048576/1048576 bytes" in out
    info = json.loads(ok("nbdinfo", "--json", lab.nbds()))
    assert info["protocol"] == "newstyle-fixed" and info["TLS"] is True
    assert [e["export-size"] for e in info["exports"]] == [SIZE]
    # the endpoint the engine reports is nbds://
    assert lab.engine.ctl(op="status")["endpoint"] == f"nbds://127.0.0.1:{lab.engine.port}/vol"


REFUSED = ["no-cert", "other-ca", "expired", "revoked", "wrong-role", "other-node", "tenant-csi"]


@pytest.mark.parametrize("who", REFUSED)
def test_refused_clients_get_nothing_and_the_engine_serves_others(lab, who, tmp_path):
    ok("qemu-io", "-c", "write -P 0x33 0 1M", *lab.qemu())
    before = lab.engine.output()
    bad = run("nbdinfo", "--size", lab.nbds(who))
    assert bad.returncode != 0 and bad.stdout.strip() == "", (bad.stdout, bad.stderr)
    q = run("qemu-io", "-c", "read -P 0x33 0 1M", *lab.qemu(who))
    assert q.returncode != 0 or "read 1048576" not in q.stdout, q.stdout
    copy = run("nbdcopy", lab.nbds(who), str(tmp_path / "stolen"))
    assert copy.returncode != 0
    assert not os.path.exists(tmp_path / "stolen") or os.path.getsize(tmp_path / "stolen") == 0
    # the engine goes on serving the node it is attached to
    assert lab.engine.alive()
    assert "read 1048576/1048576" in ok("qemu-io", "-c", "read -P 0x33 0 1M", *lab.qemu())
    assert ok("nbdinfo", "--size", lab.nbds()).strip() == str(SIZE)
    log = lab.engine.output()[len(before) :]
    if who in ("wrong-role", "other-node", "tenant-csi"):
        assert "may not use the NBD endpoint of volume vol" in log, log
    else:
        assert "TLS handshake failed" in log, log


def raw_options(port: int, *options: tuple[int, bytes]) -> list[tuple[int, int, bytes]]:
    """Speak the handshake in clear: each option's replies (option, type, payload)."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        magic, opt, _flags = struct.unpack(">QQH", f.read(18))
        assert (magic, opt) == (nbd.NBDMAGIC, nbd.IHAVEOPT)
        s.sendall(struct.pack(">I", 3))
        for option, body in options:
            s.sendall(struct.pack(">QII", nbd.IHAVEOPT, option, len(body)) + body)
            if option == nbd.OPT_EXPORT_NAME:
                out.append((option, -1, f.read(10)))  # b"": it hung up
                break
            while True:
                hdr = f.read(20)
                _, o, rtype, length = struct.unpack(">QIII", hdr)
                out.append((o, rtype, f.read(length)))
                if rtype != nbd.REP_SERVER and rtype != nbd.REP_INFO:
                    break
    return out


def test_without_tls_the_network_endpoint_reveals_nothing(lab):
    p = run("nbdinfo", "--list", f"nbd://127.0.0.1:{lab.engine.port}/")
    assert p.returncode != 0 and "vol" not in p.stdout
    p = run("nbdinfo", "--size", f"nbd://127.0.0.1:{lab.engine.port}/")
    assert p.returncode != 0 and p.stdout.strip() == ""
    go = struct.pack(">I", 0) + struct.pack(">H", 0)  # GO on the empty name
    got = raw_options(
        lab.engine.port,
        (nbd.OPT_LIST, b""),
        (nbd.OPT_GO, go),
        (nbd.OPT_INFO, struct.pack(">I", 3) + b"vol" + struct.pack(">H", 0)),
        (nbd.OPT_EXPORT_NAME, b""),
    )
    assert [t for _, t, _ in got[:3]] == [nbd.REP_ERR_TLS_REQD] * 3
    assert not any(b"vol" in p for _, _, p in got)
    assert got[3] == (nbd.OPT_EXPORT_NAME, -1, b"")  # hung up: no size, no flags


def test_the_unix_socket_stays_local_and_in_clear(lab):
    st = os.stat(lab.unix)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    ok("qemu-io", "-c", "write -P 0x44 1M 64k", *lab.qemu())
    out = ok(
        "qemu-io", "-f", "raw", "-c", "read -P 0x44 1M 64k", f"nbd+unix:///vol?socket={lab.unix}"
    )
    assert "read 65536/65536" in out


def test_a_network_endpoint_without_credentials_is_refused_at_start(tmp_path):
    """Not loopback, no --tls-dir, no --plaintext: exit 2 before anything is bound."""
    cmd = [sys.executable, "-m", "cargohold", "engine", "--volume", "v", "--epoch", "1"]
    cmd += ["--replica", "r0@127.0.0.1:1", "--listen", "0.0.0.0:0"]
    p = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT)
    )
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "needs TLS: give --tls-dir" in p.stderr
    p = subprocess.run(
        [*cmd[:-2], "--listen", "127.0.0.1:0", "--nbd-tls", "--tls-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert p.returncode == 2 and "needs --node" in p.stderr, (p.stdout, p.stderr)


def test_the_csi_node_attaches_an_nbds_endpoint_with_the_nodes_credentials(lab, tmp_path):
    """The node plugin's mounter (csi/mounter.py) on an ``nbds://`` endpoint: nbdfuse over
    TLS with the node's certificate, a loop device, bytes written there read back over TLS
    by qemu-io; the kernel's NBD client is not used for TLS."""
    from cargohold.csi.mounter import Attachment

    if not all(os.path.exists(f"/usr/bin/{t}") for t in ("nbdfuse", "fusermount3")):
        pytest.skip("nbdfuse is not installed")
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.skip("needs /dev/fuse and root (loop devices)")
    endpoint = f"nbds://127.0.0.1:{lab.engine.port}/vol"
    assert lab.engine.ctl(op="status")["endpoint"] == endpoint
    att = Attachment(volume="vol", endpoint=endpoint, work=str(tmp_path / "att"))
    att.tls_dir = str(lab.dirs["good"])
    os.makedirs(att.work)
    dev = att.attach()
    try:
        assert att.kind == "nbdfuse" and att.growable
        fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
        try:
            import mmap

            buf = mmap.mmap(-1, MIB)
            buf.write(b"\xc3" * MIB)
            assert os.pwrite(fd, buf, 8 * MIB) == MIB
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        att.detach()
    assert not os.path.exists(att.fuse_file) or att.fuse_pid == 0
    out = ok("qemu-io", "-c", "read -P 0xc3 8M 1M", *lab.qemu())
    assert "read 1048576/1048576" in out
