"""Encryption at rest end to end on a local cluster of real processes (issue 19): a volume
created with ``volume create --encrypted`` (its data key wrapped by the cluster's KEK
``DIR/keys/default``), attached, written through its engine's NBD export with qemu-io, read
back; then no file under any node's replica directories holds the plaintext (a plain
volume written with the same pattern beside it shows the grep finds it when it is there),
the clear data key is nowhere on disk (state store, logs, replicas), the agent fetched it
through the manager's key route (the event log says so, without the key), and
``volume delete --shred`` destroys the key before the volume goes.

Needs the engine side of the contract (``--data-key-fd``, ``--encryption-key-id``: the
s19-enc1 branch): without it the encrypted volume's engine does not start.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.control.model import Volume, keys
from cargohold.control.state import open_store
from cargohold.encryption import layout
from cargohold.keys.data_keys import WrappedKey, open_sealed, parse_kek
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.encrypted_engines import files_holding
from tests.support.nbd_clients import need, qemu_io
from tests.support.polling import wait_until

MiB = 1 << 20
BLOCK = 4096
PLAIN = bytes([0x5A]) * BLOCK  # a block of the pattern written (qemu-io write -P 0x5a)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    need("qemu-io")
    d = Path(f"/tmp/enc-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=2, managers=1).up(timeout=90)
    try:
        yield d
    finally:
        c.down(purge=True)


def volume_record(d: Path, name: str) -> Volume:
    async def read() -> Volume:
        store = open_store(f"sqlite:{d / 'state.db'}")
        try:
            e = await store.get(keys.volume(name))
            assert e is not None, f"no record of volume {name}"
            return Volume.model_validate_json(e.value)
        finally:
            await store.close()

    return asyncio.run(read())


def test_kek_rotation_rewraps_without_an_engine(cluster: Path) -> None:
    """``volume rekey`` and ``key rotate``: the data key stays (unwrapped equal), only its
    wrapping changes; a KEK that is not there is refused and changes nothing."""
    d = cluster
    js(d, "volume", "create", "cellar", "--size", "1MiB", "--replicas", "1", "--encrypted")
    kek1 = parse_kek((d / "keys" / "default").read_bytes(), "default")
    before = volume_record(d, "cellar").encryption
    assert before is not None
    dek = open_sealed(kek1, WrappedKey.from_b64("file", "default", before.wrapped_key).blob,
                      before.id, "default").key  # fmt: skip
    p = cli(d, "volume", "rekey", "cellar", "--key", "kek-2", check=False)
    assert p.returncode != 0 and "kek-2" in p.stdout + p.stderr
    assert volume_record(d, "cellar").encryption == before  # unchanged
    kek2 = os.urandom(32)
    (d / "keys" / "kek-2").write_text(kek2.hex() + "\n")
    v = js(d, "volume", "rekey", "cellar", "--key", "kek-2")
    assert v["encryption"]["key_ref"] == "kek-2"  # type: ignore[index]
    after = volume_record(d, "cellar").encryption
    assert after is not None and after.id == before.id
    again = open_sealed(kek2, WrappedKey.from_b64("file", "kek-2", after.wrapped_key).blob,
                        after.id, "kek-2").key  # fmt: skip
    assert again == dek
    got = js(d, "key", "rotate", "--from", "kek-2", "--to", "default")
    assert got == {"rekeyed": ["cellar"], "failed": []}
    assert volume_record(d, "cellar").encryption.key_ref == "default"  # type: ignore[union-attr]
    assert {"key": "file:default", "volumes": ["cellar"]} in js(d, "key", "list")  # type: ignore[operator]
    cli(d, "volume", "delete", "cellar", "--shred")


def test_an_encrypted_volume_keeps_only_ciphertext_on_replicas(cluster: Path) -> None:
    d = cluster
    size = 16 * MiB
    v = js(d, "volume", "create", "vault", "--size", "16MiB", "--replicas", "2", "--encrypted")
    assert isinstance(v, dict)
    enc = v["encryption"]
    assert enc["provider"] == "file" and enc["key_ref"] == "default" and not enc["shredded"]
    assert v["size_bytes"] == size and enc["stored_bytes"] == layout.physical_size(size)
    assert "wrapped_key" not in enc and "data_key" not in str(v)
    js(d, "volume", "create", "plain", "--size", "16MiB", "--replicas", "2")

    # the same plaintext into both, through their engines
    for name in ("vault", "plain"):
        uri = cli(d, "volume", "attach", name, "--node", "node-1").stdout.strip()
        qemu_io(uri, "write -P 0x5a 0 1M", "write -P 0x5a 8M 256k")
        qemu_io(uri, "read -P 0x5a 0 1M", "read -P 0x5a 8M 256k", "read -P 0 1M 1M")
        info = js(d, "volume", "get", name)
        assert isinstance(info, dict) and info["size_bytes"] == size
        cli(d, "volume", "detach", name)
    for name in ("vault", "plain"):
        wait_until(
            lambda n=name: js(d, "volume", "get", n)["state"] == "detached",  # type: ignore[index]
            60,
            f"{name} detached",
            0.2,
        )

    # the grep: the plain volume's replicas hold the pattern, the encrypted one's never
    reps = {
        n: sorted(p for p in d.glob(f"nodes/*/disk-0/replicas/{n}-*")) for n in ("vault", "plain")
    }
    assert len(reps["vault"]) == 2 and len(reps["plain"]) == 2, reps
    assert files_holding(d, "nodes/*/disk-0/replicas/plain-*/**/*", PLAIN), "the grep finds nothing"
    leaked = files_holding(d, "nodes/*/disk-0/replicas/vault-*/**/*", PLAIN)
    assert leaked == [], f"plaintext on an encrypted volume's replicas: {leaked}"
    assert files_holding(d, "nodes/**/*", PLAIN[:512]) == files_holding(
        d, "nodes/*/disk-0/replicas/plain-*/**/*", PLAIN[:512]
    )  # nothing else under the nodes (logs, trash) holds it either

    # the clear data key is nowhere: state store, logs, replicas, keys of other volumes
    rec = volume_record(d, "vault")
    assert rec.encryption is not None
    kek = parse_kek((d / "keys" / "default").read_bytes(), "the KEK")
    blob = WrappedKey.from_b64("file", "default", rec.encryption.wrapped_key).blob
    dek = open_sealed(kek, blob, rec.encryption.id, "default").key
    for form in (dek, dek.hex().encode(), base64.b64encode(dek)):
        assert files_holding(d, "**/*", form) == [], "the clear data key was written down"

    # the agent fetched it through the key route; the event says so without the key
    ev = js(d, "events", "vault")
    assert isinstance(ev, list)
    issued = [e for e in ev if e["kind"] == "data-key-issued"]
    assert issued and all(base64.b64encode(dek).decode() not in e["message"] for e in issued)

    # crypto-shredding: the key goes first, then the volume
    cli(d, "volume", "delete", "vault", "--shred")
    wait_until(
        lambda: "vault" not in {x["name"] for x in js(d, "volume", "list")},  # type: ignore[index,union-attr]
        60,
        "vault deleted",
        0.3,
    )
    kinds = [e["kind"] for e in js(d, "events", "vault")]  # type: ignore[union-attr,index]
    assert (
        "volume-shredded" in kinds
        and "volume-deleted" not in kinds[: kinds.index("volume-shredded")]
    )
    p = cli(d, "volume", "delete", "plain", "--shred", check=False)
    assert p.returncode != 0 and "not encrypted" in (p.stdout + p.stderr)
