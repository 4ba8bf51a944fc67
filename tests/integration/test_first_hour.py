"""Issue 23 against a local cluster of real processes (manager, agents, replica servers,
engines) through the `cargohold` CLI: a detach is refused while a real NBD client
(qemu-io, kept open) holds the export, goes through with --force, and goes through
unforced once the client left; `disk add` of a missing directory is refused with the
agent's reason and leaves nothing behind, an existing one is served with a warning."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.control.client import ManagerClient
from tests.support.cli import cli, js
from tests.support.cluster_logs import failed, local_cluster
from tests.support.nbd_clients import need, pattern_ok, qemu_io
from tests.support.polling import wait_until

MiB = 1 << 20
# ~100 s with the cluster's start on a loaded 2-core machine: `make test-long` runs it; the
# same logic runs in the default run over a simulated cluster and a fake manager
# (tests/unit/control/test_detach_clients.py, tests/unit/cli/test_cli_ux.py)
pytestmark = pytest.mark.long


@pytest.fixture(scope="module")
def cluster(request) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    with local_cluster("chl-ux", lambda: failed(request), nodes=2) as d:
        yield d


def clients(d: Path, name: str) -> list[dict[str, str]]:
    with ManagerClient.discover(None, str(d)) as c:  # polled: no CLI process each time
        return c.volume(name)["nbd_clients"]  # type: ignore[no-any-return]


def test_detach_refuses_while_a_client_holds_the_export(cluster: Path) -> None:
    need("qemu-io")
    d = cluster
    cli(d, "volume", "create", "held", "--size", "16Mi", "--replicas", "2")
    uri = cli(d, "volume", "attach", "held", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 0x5a 0 1M")
    # a client that stays connected: qemu-io reading its commands from a pipe we keep open
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", uri],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        got = wait_until(lambda: clients(d, "held"), 30, "the engine to report the client", 0.2)
        assert got == [{"peer": "127.0.0.1", "export": "held"}], got
        refused = cli(d, "volume", "detach", "held", check=False)
        assert refused.returncode == 5, refused.stdout + refused.stderr
        assert "1 NBD client(s) connected on node node-1 (127.0.0.1)" in refused.stderr
        v = js(d, "volume", "get", "held")
        assert v["state"] == "attached" and v["attached_node"] == "node-1"  # type: ignore[index]
        assert pattern_ok(uri, 0, MiB, 0x5A)  # still served
    finally:
        assert holder.stdin is not None
        holder.stdin.write("quit\n")
        holder.stdin.close()
        holder.wait(30)
    # the client left: an unforced detach goes through (the client retries a stale report)
    wait_until(lambda: not clients(d, "held"), 30, "the client to be gone from the report", 0.2)
    cli(d, "volume", "detach", "held")
    assert js(d, "volume", "get", "held")["state"] == "detached"  # type: ignore[index]

    # --force detaches under a connected client
    uri = cli(d, "volume", "attach", "held", "--node", "node-2").stdout.strip()
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", uri],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: clients(d, "held"), 30, "the engine to report the client", 0.2)
        forced = cli(d, "volume", "detach", "held", "--force", check=False)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert js(d, "volume", "get", "held")["state"] == "detached"  # type: ignore[index]
    finally:
        holder.kill()
        holder.wait(30)


def test_disk_add_needs_an_existing_directory_on_the_node(cluster: Path) -> None:
    d = cluster
    missing = d / "nodes" / "node-1" / "no-such-ssd"
    r = cli(
        d, "disk", "add", "node-1", str(missing), "--capacity", "1Gi", "--name", "ssd", check=False
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "disk ssd not added: node node-1:" in r.stderr and "does not exist" in r.stderr
    assert not missing.exists()  # nothing was created on the node's root filesystem
    assert "ssd" not in [x["name"] for x in js(d, "disk", "list", "--node", "node-1")]  # type: ignore[index]

    there = d / "nodes" / "node-1" / "ssd"
    there.mkdir()
    r = cli(d, "disk", "add", "node-1", str(there), "--capacity", "1Gi", "--name", "ssd")
    assert "warning:" in r.stderr and "is not a mount point" in r.stderr
    disk = next(x for x in js(d, "disk", "list", "--node", "node-1") if x["name"] == "ssd")  # type: ignore[index,union-attr]
    assert disk["checked"] is True and disk["error"] == ""  # type: ignore[index]
