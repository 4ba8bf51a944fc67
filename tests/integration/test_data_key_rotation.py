"""Data-key rotation end to end on a local cluster of real processes (docs/keys.md,
"Rotating the data key"): an encrypted volume written with qemu-io through its engine's
NBD export, ``volume rekey NAME --data-key`` while attached (the agent gives the running
engine the new key with the op ``data-keys`` and the engine rewrites every block under it),
the rotation followed through ``volume get`` to "finished" (the old generation dropped,
and the running engine given the shorter list), then detach and attach: the new engine gets only the new key (the event log says which
generations its agent was given), the data reads back equal, and no replica file holds
the plaintext.

Needs the engine's side of the contract (the control op ``data-keys`` and the ``rekey``
status: branch s19-rekeyeng); without it the rotation never finishes and the test fails
at its deadline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.encrypted_engines import files_holding
from tests.support.nbd_clients import need, qemu_io
from tests.support.polling import wait_until

BLOCK = 4096
PLAIN = bytes([0x6B]) * BLOCK  # a block of the pattern written (qemu-io write -P 0x6b)
ROTATION_DEADLINE = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    need("qemu-io")
    d = Path(f"/tmp/rekey-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=2, managers=1).up(timeout=90)
    try:
        yield d
    finally:
        c.down(purge=True)


def encryption(d: Path, name: str) -> dict[str, Any]:
    v = js(d, "volume", "get", name)
    assert isinstance(v, dict) and isinstance(v["encryption"], dict), v
    return v["encryption"]


@pytest.mark.long  # a cluster of real processes, two attaches and a sweep: over 30 s
def test_rotating_the_data_key_online_rewrites_every_block(cluster: Path) -> None:
    d = cluster
    js(d, "volume", "create", "vault", "--size", "16MiB", "--replicas", "2", "--encrypted")
    uri = cli(d, "volume", "attach", "vault", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 0x6b 0 2M", "write -P 0x6b 9M 512k")
    assert [g["generation"] for g in encryption(d, "vault")["generations"]] == [1]

    # online: the volume stays attached, its engine keeps serving
    v = js(d, "volume", "rekey", "vault", "--data-key")
    assert isinstance(v, dict)
    rot = v["encryption"]["rotation"]
    assert rot["state"] == "running" and rot["generation"] == 2, rot
    assert [g["generation"] for g in v["encryption"]["generations"]] == [2, 1]
    qemu_io(uri, "read -P 0x6b 0 2M", "write -P 0x6b 4M 64k")  # served during the sweep

    def finished() -> bool:
        return bool(encryption(d, "vault")["rotation"]["state"] == "finished")

    try:
        wait_until(finished, ROTATION_DEADLINE, "the data-key rotation finishes", 0.5)
    except AssertionError:
        raise AssertionError(f"the rotation did not finish: {encryption(d, 'vault')}") from None
    enc = encryption(d, "vault")
    assert [g["generation"] for g in enc["generations"]] == [2], enc  # the old key dropped
    assert enc["rotation"]["progress"] == 1.0
    kinds = [e["kind"] for e in js(d, "events", "vault")]  # type: ignore[union-attr,index]
    assert "data-key-rotation-finished" in kinds and "data-key-dropped" in kinds

    def issued() -> list[str]:
        return [
            e["message"]
            for e in js(d, "events", "vault")  # type: ignore[union-attr]
            if e["kind"] == "data-key-issued"  # type: ignore[index]
        ]

    # the running engine is given the one key left: its agent fetches the keys once more
    wait_until(
        lambda: issued()[-1].endswith("generations 2)"),
        30,
        "the running engine is given the shorter key list",
        0.5,
    )
    before = len(issued())

    # a new engine gets only the new key, and reads what was written under both
    cli(d, "volume", "detach", "vault")
    wait_until(
        lambda: js(d, "volume", "get", "vault")["state"] == "detached",  # type: ignore[index]
        60,
        "vault detached",
        0.2,
    )
    uri = cli(d, "volume", "attach", "vault", "--node", "node-2").stdout.strip()
    qemu_io(
        uri,
        "read -P 0x6b 0 2M",
        "read -P 0x6b 4M 64k",
        "read -P 0x6b 9M 512k",
        "read -P 0 2M 2M",
    )
    now = issued()
    assert len(now) > before and now[-1].endswith("generations 2)"), now
    cli(d, "volume", "detach", "vault")
    wait_until(
        lambda: js(d, "volume", "get", "vault")["state"] == "detached",  # type: ignore[index]
        60,
        "vault detached again",
        0.2,
    )
    leaked = files_holding(d, "nodes/*/disk-0/replicas/vault-*/**/*", PLAIN)
    assert leaked == [], f"plaintext on the encrypted volume's replicas: {leaked}"
    cli(d, "volume", "delete", "vault", "--shred")
