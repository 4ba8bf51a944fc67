"""Backups of an encrypted volume carry ciphertext only (issue 19's grep-level proof), on a
local cluster of real processes and a real S3 server (SeaweedFS, tests/support/s3_server.py).

A known plaintext (a text marker through nbdcopy, a 0x5a pattern through qemu-io) is
written into an encrypted volume and into a plain one beside it; each is backed up to its
own repository (prefix) of the same bucket. Then EVERY object of the bucket is listed with
boto3, fetched, and decoded with the repository library (cargohold/backup/): sealed objects
opened and decompressed, every pack's trailer read and every blob in it opened and
decompressed to the chunk plaintext the repository holds. The plain volume's chunks hold
the pattern (the grep works); no byte the encrypted volume's repository holds, raw or
decoded, does. The backup is restored into a new volume that keeps the source's key, read
back byte for byte; after ``volume delete --shred`` of the source a restore is refused
with the "data key ... was destroyed" error.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.backup import format as fmt
from cargohold.backup.packs import read_trailer
from cargohold.backup.repository import Repository
from cargohold.backup.targets import open_target
from tests.support.cli import cli, js
from tests.support.cluster_logs import failed, local_cluster
from tests.support.nbd_clients import need, qemu_io
from tests.support.polling import wait_until
from tests.support.s3_server import S3Server

MiB = 1 << 20
MARKER = b"cargohold-enc3 known plaintext marker, block-aligned; "  # 54 bytes
PATTERN = bytes([0x5A]) * 4096  # qemu-io write -P 0x5a


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Path]:
    need("nbdcopy", "qemu-io")
    with local_cluster("encbk", lambda: failed(request), nodes=2) as d:
        yield d


def marker_image(size: int) -> bytes:
    n = size // len(MARKER) + 1
    return (MARKER * n)[:size]


def decoded_objects(s3: S3Server, prefix: str, key: Path) -> dict[str, list[bytes]]:
    """Every object under ``prefix`` of the bucket (listed with boto3, fetched whole): its
    raw bytes, then what the repository library decodes from it — a sealed object's
    decompressed payload; a pack's trailer and every blob's chunk plaintext."""
    raw = s3.client()
    names: list[str] = []
    for page in raw.get_paginator("list_objects_v2").paginate(
        Bucket=s3.bucket, Prefix=prefix + "/"
    ):
        names += [o["Key"] for o in page.get("Contents", [])]
    repo = Repository.open(
        open_target(f"s3://{s3.bucket}/{prefix}", endpoint=s3.endpoint,
                    access_key=s3.access_key, secret_key=s3.secret_key),
        base64.b64decode(key.read_text().strip()),
    )  # fmt: skip
    out: dict[str, list[bytes]] = {}
    for full in names:
        data = raw.get_object(Bucket=s3.bucket, Key=full)["Body"].read()
        name = full[len(prefix) + 1 :]
        kind = data[4:5]
        parts = [data]
        if kind == fmt.KIND_PACK:
            entries = read_trailer(repo.keys, name, data)
            assert entries, f"pack {name} holds no blob"
            for e in entries:
                blob = data[e.offset : e.offset + e.length]
                parts.append(repo.keys.open_blob(e.id, e.flags, e.raw, blob, name))
        elif kind != fmt.KIND_KEYS:  # the key object holds only the wrapped master key
            parts.append(repo.keys.open(kind, name, data))
        out[name] = parts
    return out


def holding(objects: dict[str, list[bytes]], needle: bytes) -> list[str]:
    return sorted(n for n, parts in objects.items() if any(needle in p for p in parts))


def nbd_read(uri: str, tmp: Path, size: int) -> bytes:
    out = tmp / "read.img"
    out.unlink(missing_ok=True)
    p = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return out.read_bytes()[:size]


@pytest.mark.long  # a cluster, an S3 server, two backups and a restore: ~55 s here
def test_backups_of_an_encrypted_volume_hold_ciphertext_only(cluster: Path, tmp_path: Path) -> None:
    d = cluster
    size = 16 * MiB
    image = marker_image(4 * MiB)
    src = tmp_path / "marker.img"
    src.write_bytes(image)
    with S3Server() as s3:
        creds = tmp_path / "s3.creds"
        creds.write_text(f"access_key={s3.access_key}\nsecret_key={s3.secret_key}\n")
        s3args = ("--endpoint", s3.endpoint, "--credentials-file", str(creds))
        keys: dict[str, Path] = {}
        for t in ("enc", "plain"):
            keys[t] = tmp_path / f"{t}.key"
            cli(d, "backup-target", "add", t, f"s3://{s3.bucket}/{t}", *s3args,
                "--generate-key", str(keys[t]))  # fmt: skip
        js(d, "volume", "create", "vault", "--size", "16MiB", "--replicas", "2", "--encrypted")
        js(d, "volume", "create", "open", "--size", "16MiB", "--replicas", "2")
        backups: dict[str, dict[str, Any]] = {}
        want: dict[str, bytes] = {}
        for vol, target in (("vault", "enc"), ("open", "plain")):
            uri = cli(d, "volume", "attach", vol, "--node", "node-1").stdout.strip()
            p = subprocess.run(["nbdcopy", str(src), uri], capture_output=True, text=True,
                               timeout=120)  # fmt: skip
            assert p.returncode == 0, p.stderr
            qemu_io(uri, "write -P 0x5a 8M 1M", "read -P 0x5a 8M 1M")
            want[vol] = nbd_read(uri, tmp_path, size)
            assert want[vol][: len(image)] == image and PATTERN in want[vol]
            b = js(d, "backup", "create", vol, "--target", target, "--wait", "-o", "json")
            assert isinstance(b, dict) and b["state"] == "succeeded", b
            assert b["size_bytes"] == size, b  # the size users see, not the stored one
            backups[vol] = b
            print(f"{vol}: {b['info']}")
            cli(d, "volume", "detach", vol)

        # the grep, on every object of both repositories, decoded
        plain = decoded_objects(s3, "plain", keys["plain"])
        enc = decoded_objects(s3, "enc", keys["enc"])
        packs = [n for n in enc if n.startswith("packs/")]
        blobs = sum(len(enc[n]) - 1 for n in packs)
        print(f"objects: encrypted repository {len(enc)} ({len(packs)} packs, {blobs} chunks); "
              f"plain repository {len(plain)}")  # fmt: skip
        assert packs and blobs >= 2, sorted(enc)
        assert any(n.startswith("backups/") for n in enc), sorted(enc)
        for needle in (MARKER, PATTERN):
            assert holding(plain, needle), f"the grep finds no {needle[:16]!r} in the plain one"
            assert holding(enc, needle) == [], "plaintext in an encrypted volume's backup"
        assert holding(enc, MARKER[:24]) == [] and holding(enc, PATTERN[:64]) == []
        # the chunks hold the plain volume of the encrypted one: its size, ciphertext
        assert backups["vault"]["info"]["size"] > size, backups["vault"]["info"]

        # restore: a new volume with the source's key and encryption id, same bytes
        cli(d, "backup", "restore", backups["vault"]["id"], "copy", "--replicas", "2", "--wait",
            timeout=300)  # fmt: skip
        copy = js(d, "volume", "get", "copy")
        vault = js(d, "volume", "get", "vault")
        assert isinstance(copy, dict) and isinstance(vault, dict)
        assert copy["encryption"] and copy["encryption"]["id"] == vault["encryption"]["id"]
        assert copy["size_bytes"] == size, copy
        uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
        qemu_io(uri, "read -P 0x5a 8M 1M")
        got = nbd_read(uri, tmp_path, size)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want["vault"]).hexdigest()
        cli(d, "volume", "detach", "copy")

        # crypto-shredding the source: its backups cannot be restored any more
        wait_until(
            lambda: js(d, "volume", "get", "vault")["state"] == "detached",  # type: ignore[index]
            60,
            "vault detached",
            0.2,
        )
        cli(d, "volume", "delete", "vault", "--shred")
        p = cli(d, "backup", "restore", backups["vault"]["id"], "again", "--replicas", "2", "--wait",
                check=False,
                timeout=120)  # fmt: skip
        text = p.stdout + p.stderr
        assert p.returncode != 0 and "destroyed" in text and "vault" in text, text
        names = {v["name"] for v in js(d, "volume", "list")}  # type: ignore[union-attr,index]
        assert "again" not in names, names
        print(f"restore after --shred refused: {text.strip()}")
