"""A real KMS API server for tests: moto's server mode (PyPI ``moto[server]``, pinned in
pyproject's dev extras), run as a process on a free loopback port — the ``kms`` key
provider (cargohold/keys/kms.py) talks HTTP to it through boto3 exactly as to AWS KMS.

    from tests.support.kms_server import KmsServer

    with KmsServer() as kms:
        key_id = kms.create_key()            # an enabled symmetric key
        KmsProvider(kms.endpoint, kms.region)

Credentials are dummies (moto checks none); ``env`` holds them for a process that uses the
server (a manager). Stopped by its PID. A missing ``moto_server`` is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from tests.support.processes import terminate

REGION = "eu-west-1"
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def find_moto_server() -> str:
    for candidate in (os.path.join(os.path.dirname(sys.executable), "moto_server"),
                      shutil.which("moto_server")):  # fmt: skip
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("moto_server not found: run `make setup` (the dev extras pin moto[server])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KmsServer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.region = REGION
        self.env = dict(ENV)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="cargohold-kms-")
        self.log = os.path.join(self.dir, "moto.log")

    def __enter__(self) -> KmsServer:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [find_moto_server(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().list_keys()
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"moto_server did not answer: see {self.log}") from None
                time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        terminate(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        ).client("kms", endpoint_url=self.endpoint)

    def create_key(self, alias: str | None = None) -> str:
        c = self.client()
        key_id = str(c.create_key(Description="cargohold test KEK")["KeyMetadata"]["KeyId"])
        if alias:
            c.create_alias(AliasName=alias, TargetKeyId=key_id)
        return key_id

    def disable_key(self, key_id: str) -> None:
        self.client().disable_key(KeyId=key_id)
