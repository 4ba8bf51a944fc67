"""Group snapshots through a local cluster of real processes (manager, three agents, their
replica servers and engines, mutual TLS): the ``cargohold snapshot create-group`` CLI under
a live workload, every group restored (cloned) and read back. (The CSI GroupController is
tested over gRPC in test_csi_controller_cluster.py.)

The workload (tests/support/group_workload.py, libnbd under Debian's Python) writes record
i to volume ``rec`` and, only once it was acknowledged, commit marker i to volume ``mark``.
A crash-consistent group shows no marker without its record; snapshots of the two taken one
after the other (not as a group) could.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.control.client import ManagerClient
from tests.support import group_workload
from tests.support.cli import cli
from tests.support.cluster_logs import failed, local_cluster
from tests.support.nbd_clients import need
from tests.support.polling import wait_until

MiB = 1 << 20
DEBIAN_PY = "/usr/bin/python3"
WORKLOAD = Path(group_workload.__file__)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Path]:
    need("nbdcopy")
    if subprocess.run([DEBIAN_PY, "-c", "import nbd"], capture_output=True).returncode:
        pytest.skip("needs python3-libnbd under /usr/bin/python3")
    with local_cluster("grp", lambda: getattr(request.node, "group_failed", False)) as d:
        yield d


@pytest.fixture
def client(cluster: Path, request: pytest.FixtureRequest) -> Iterator[ManagerClient]:
    with ManagerClient.discover(None, cluster) as c:
        yield c
    if failed(request):
        request.node.parent.group_failed = True  # the module's cluster prints its logs


def read_volume(c: ManagerClient, d: Path, name: str, out: Path) -> bytes:
    uri = cli(d, "volume", "attach", name, "--node", "node-2").stdout.strip()
    p = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cli(d, "volume", "detach", name)
    return out.read_bytes()


def restore(c: ManagerClient, vol: str, snap: str, size: int) -> str:
    """A new volume from ``vol``'s snapshot ``snap`` (what CreateVolume does from a snapshot)."""
    name = f"{vol}-{snap}"
    c.create_volume(name, size, replicas=1, source={"volume": vol, "snapshot": snap})
    wait_until(lambda: c.volume(name)["state"] == "detached", 120, f"clone {name}")
    return name


@pytest.mark.long  # about 3 minutes: six clones read back
def test_group_snapshots_under_load_are_crash_consistent(
    cluster: Path, client: ManagerClient, tmp_path: Path
) -> None:
    d, c = cluster, client
    size = 8 * MiB
    for v in ("rec", "mark"):
        cli(d, "volume", "create", v, "--size", "8MiB", "--replicas", "2")
    uri_rec = cli(d, "volume", "attach", "rec", "--node", "node-1").stdout.strip()
    uri_mark = cli(d, "volume", "attach", "mark", "--node", "node-1").stdout.strip()
    progress, stop = tmp_path / "progress", tmp_path / "stop"
    blocks = size // group_workload.BLOCK
    wl = subprocess.Popen(
        [DEBIAN_PY, str(WORKLOAD), uri_rec, uri_mark, str(blocks), str(progress), str(stop)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def written() -> int:
        try:
            return int(progress.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    took: dict[str, tuple[float, int, int]] = {}  # group -> (seconds, records before, after)
    try:
        for i in range(3):
            before = written()
            wait_until(lambda b=before: written() >= b + 64, 60, "the workload to write on")
            t, before = time.monotonic(), written()
            out = cli(d, "snapshot", "create-group", f"g{i}", "rec", "mark", "-o", "json")
            took[f"g{i}"] = (time.monotonic() - t, before, written())
            assert json.loads(out.stdout)["state"] == "ready", out.stdout
    finally:
        stop.touch()
        stdout, stderr = wl.communicate(timeout=60)
    assert wl.returncode == 0, stderr
    result = json.loads(stdout)
    print(f"workload: {result}; group snapshots (s, records before, after): {took}")
    listed = json.loads(cli(d, "snapshot", "list-groups", "-o", "json").stdout)
    assert sorted(g["name"] for g in listed) == ["g0", "g1", "g2"]
    assert all(g["state"] == "ready" and g["volumes"] == ["mark", "rec"] for g in listed)

    for g, (_, before, after) in took.items():
        a = read_volume(c, d, restore(c, "rec", g, size), tmp_path / "a.img")
        b = read_volume(c, d, restore(c, "mark", g, size), tmp_path / "b.img")
        records, markers = group_workload.check(a, b)
        # the picture is of a moment while the workload ran: what was acknowledged before
        # the command is there, and the records are a prefix (written in order)
        assert before - 1 <= len(markers) and len(records) <= after + 16, (g, before, after)
        assert records == set(range(len(records))), g
        assert markers == set(range(len(markers))), g
        assert len(records) - len(markers) <= 1, (g, len(records), len(markers))
    # the group's member snapshots go with it
    cli(d, "snapshot", "delete-group", "g0")
    wait_until(lambda: "g0" not in {g["name"] for g in c.group_snapshots()}, 60, "g0 deleted")
    assert "g0" not in {s["name"] for s in c.snapshots("rec")}
    assert "g0" not in {s["name"] for s in c.snapshots("mark")}
    assert {s["name"] for s in c.snapshots("rec")} >= {"g1", "g2"}
