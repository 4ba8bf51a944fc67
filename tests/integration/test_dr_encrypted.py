"""A standby of an ENCRYPTED volume (docs/disaster-recovery.md, "Encrypted volumes"), on a
local cluster of real processes: the cluster backs its own encrypted volume up to a file
target and keeps a standby of it (as test_dr_read_only.py: the target is all a standby
needs). A known pattern is written with qemu-io and backed up; the standby is created (it
gets the source's key record from the backup's label); more is written, the source's data
key is rotated (``volume rekey --data-key``: generation 2, the sweep rewrites every
block) and backed up again, so the apply must first merge generation 2 into the
standby's record. Read-only before activation and read-write after it, the standby shows
exactly what the source held at each backup (sha256 through NBD); its record keeps the
source's encryption id and both generations; no file of its replicas holds the pattern.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.integration.test_dr import jcli, sha256_of, wait_standby
from tests.support.cli import cli
from tests.support.cluster_logs import failed, print_tails
from tests.support.encrypted_engines import files_holding
from tests.support.nbd_clients import need, qemu_io
from tests.support.polling import wait_until

PLAIN = bytes([0x6B]) * 4096  # a block of the pattern written (qemu-io write -P 0x6b)


def detach(d: Path, name: str) -> None:
    cli(d, "volume", "detach", name)
    wait_until(lambda: jcli(d, "volume", "get", name)["state"] == "detached", 60, "detached", 0.2)


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalCluster, Path]]:
    need("nbdcopy", "qemu-io")
    monkeypatch.setenv("CARGOHOLD_MANAGER_STANDBY_POLL_INTERVAL", "1")
    d = Path(f"/tmp/drenc-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=2, backend="sqlite").up(timeout=90)
    try:
        yield c, d
    finally:
        if failed(request):
            print_tails(d)
        c.down(purge=True)


def generations(v: dict[str, Any]) -> list[int]:
    return [g["generation"] for g in v["encryption"]["generations"]]


# ~24 s here (a cluster, a rotation sweep, two backups, a restore and an apply): default run
def test_a_standby_of_an_encrypted_volume_follows_its_rotated_key(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    _c, d = cluster
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    cli(d, "backup-target", "add", "site-a", f"file://{repo}", "--generate-key", str(key))
    src = jcli(d, "volume", "create", "vault", "--size", "16MiB", "--replicas", "2",
               "--encrypted")  # fmt: skip
    uri = cli(d, "volume", "attach", "vault", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 0x6b 0 2M", "read -P 0x6b 0 2M")
    want1 = sha256_of(uri, tmp_path)
    b1 = jcli(d, "backup", "create", "vault", "--target", "site-a", "--wait")
    assert b1["state"] == "succeeded", b1
    v = jcli(d, "volume", "create-standby", "vault-dr", "--from-target", "site-a",
             "--source-volume", "vault", "--replicas", "2", "--wait")  # fmt: skip
    assert v["standby"]["applied"] == b1["repository_id"], v["standby"]
    assert v["size_bytes"] == src["size_bytes"], v
    assert v["encryption"]["id"] == src["encryption"]["id"] and generations(v) == [1], v

    ro = cli(d, "volume", "attach", "vault-dr", "--node", "node-2", "--read-only").stdout.strip()
    assert sha256_of(ro, tmp_path) == want1  # the engine got generation 1 through its agent
    detach(d, "vault-dr")

    # the source writes more and rotates its data key: the next backup is under generation 2
    qemu_io(uri, "write -P 0x6b 8M 1M")
    rot = jcli(d, "volume", "rekey", "vault", "--data-key")
    assert rot["encryption"]["rotation"]["generation"] == 2, rot

    def rotated() -> bool:
        v = jcli(d, "volume", "get", "vault")
        return bool(v["encryption"]["rotation"]["state"] == "finished")

    wait_until(rotated, 120, "the source's data-key rotation finishes", 0.5)
    # generation 1 may stay on the source (b1's snapshot, the next backup's parent, needs it)
    assert generations(jcli(d, "volume", "get", "vault"))[0] == 2
    want2 = sha256_of(uri, tmp_path)
    assert want2 != want1
    b2 = jcli(d, "backup", "create", "vault", "--target", "site-a", "--wait")
    assert b2["state"] == "succeeded", b2
    v = wait_standby(d, "vault-dr", lambda sb: sb.get("applied") == b2["repository_id"], 120)
    assert v["encryption"]["id"] == src["encryption"]["id"], v["encryption"]
    assert generations(v) == [2, 1], v["encryption"]  # merged, none dropped
    assert not v["error"], v["error"]

    # read-only for inspection: what the source held at b2
    ro = cli(d, "volume", "attach", "vault-dr", "--node", "node-2", "--read-only").stdout.strip()
    assert sha256_of(ro, tmp_path) == want2
    detach(d, "vault-dr")
    v = jcli(d, "volume", "activate", "vault-dr", "--wait")
    assert v["standby"]["state"] == "active", v["standby"]
    rw = cli(d, "volume", "attach", "vault-dr", "--node", "node-2").stdout.strip()
    assert sha256_of(rw, tmp_path) == want2
    qemu_io(rw, "read -P 0x6b 0 2M", "read -P 0x6b 8M 1M", "write -P 0x6b 4M 64k")

    # the standby's replicas hold ciphertext only
    files = [p for p in d.glob("nodes/*/disk-0/replicas/vault-dr-*/**/*") if p.is_file()]
    assert files, sorted(d.glob("nodes/*/disk-0/replicas/*"))
    leaked = files_holding(d, "nodes/*/disk-0/replicas/vault-dr-*/**/*", PLAIN)
    assert leaked == [], f"plaintext on an encrypted standby's replicas: {leaked}"
