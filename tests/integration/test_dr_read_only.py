"""A standby attached read-only for inspection (docs/disaster-recovery.md), on a local
cluster of real processes: one cluster backs its own volume up to a file target and keeps a
standby of it (the target is all a standby needs; a second cluster would only add start-up
time). Attached read-only, the standby's NBD export is read-only (nbdinfo), shows exactly
the applied backup (sha256 against the backup read offline from the repository), refuses a
write (qemu-io) and keeps showing that backup while a newer one arrives (the follower waits);
a read-write attach is refused until activation, and works after it. The manager's
/metrics shows the standby's lag meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster
from tests.integration.test_dr import backup_sha256, jcli, sha256_of, wait_standby
from tests.support.cli import cli
from tests.support.cluster_logs import failed, print_tails
from tests.support.nbd_clients import need, qemu_io

MiB = 1 << 20
SIZE = 16 * MiB


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalCluster, Path]]:
    need("nbdcopy", "qemu-io", "nbdinfo")
    monkeypatch.setenv("CARGOHOLD_MANAGER_STANDBY_POLL_INTERVAL", "1")
    d = Path(f"/tmp/drro-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=2, backend="sqlite").up(timeout=90)
    try:
        yield c, d
    finally:
        if failed(request):
            print_tails(d)
        c.down(purge=True)


def read_only_flag(uri: str) -> bool:
    p = subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return bool(json.loads(p.stdout)["exports"][0]["is_read_only"])


def test_a_standby_attached_read_only_shows_its_last_complete_backup(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    _c, d = cluster
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    url = f"file://{repo}"
    cli(d, "backup-target", "add", "site-a", url, "--generate-key", str(key))
    cli(d, "volume", "create", "db", "--size", f"{SIZE // MiB}MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "db", "--node", "node-1").stdout.strip()
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(SIZE))
    p = subprocess.run(["nbdcopy", str(src), uri], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    b1 = jcli(d, "backup", "create", "db", "--target", "site-a", "--wait")
    assert b1["state"] == "succeeded", b1
    v = jcli(d, "volume", "create-standby", "db-dr", "--from-target", "site-a",
             "--source-volume", "db", "--replicas", "2", "--wait")  # fmt: skip
    assert v["standby"]["applied"] == b1["repository_id"], v["standby"]
    want = backup_sha256(url, key, b1["repository_id"])

    # read-write: refused before activation; read-only: the applied backup, writes refused
    p = cli(d, "volume", "attach", "db-dr", "--node", "node-2", check=False)
    assert p.returncode != 0 and "activate it first" in p.stderr, p.stderr
    ro = cli(d, "volume", "attach", "db-dr", "--node", "node-2", "--read-only").stdout.strip()
    assert read_only_flag(ro)
    assert sha256_of(ro, tmp_path) == want
    w = qemu_io(ro, "write -P 0x55 0 64k", check=False)
    out = (w.stdout + w.stderr).lower()
    assert w.returncode != 0 or "denied" in out or "read-only" in out or "fail" in out, out
    v = jcli(d, "volume", "get", "db-dr")
    assert v["attached_read_only"] and v["state"] == "attached", v

    # a newer backup of the source: seen (lag), not applied into what is served
    qemu_io(uri, "write -P 0x66 0 1M")
    b2 = jcli(d, "backup", "create", "db", "--target", "site-a", "--wait")
    assert b2["state"] == "succeeded", b2
    v = wait_standby(d, "db-dr", lambda sb: sb["lag"]["backups"] == 1, timeout=30)
    time.sleep(2)  # two more follower passes: still nothing applied
    sb = jcli(d, "volume", "get", "db-dr")["standby"]
    assert sb["applied"] == b1["repository_id"] and not sb["dirty"] and not sb["phase"], sb
    assert sha256_of(ro, tmp_path) == want
    # the lag on the manager's /metrics (the catalogue's cargohold_standby_*)
    with ManagerClient.discover(None, str(d)) as mc:
        r = mc._http.get("/metrics")
    assert r.status_code == 200, r.text
    assert 'cargohold_standby_backups_behind{volume="db-dr"} 1.0' in r.text, r.text[-2000:]
    assert 'cargohold_standby_lag_seconds{volume="db-dr"}' in r.text

    # detached: it catches up with b2; then activated, read-write works
    cli(d, "volume", "detach", "db-dr")
    wait_standby(d, "db-dr", lambda sb: sb.get("applied") == b2["repository_id"], timeout=60)
    v = jcli(d, "volume", "activate", "db-dr", "--wait")
    assert v["standby"]["state"] == "active", v["standby"]
    rw = cli(d, "volume", "attach", "db-dr", "--node", "node-2").stdout.strip()
    assert not read_only_flag(rw)
    assert sha256_of(rw, tmp_path) == backup_sha256(url, key, b2["repository_id"])
    qemu_io(rw, "write -P 0x77 0 64k", "read -P 0x77 0 64k")
