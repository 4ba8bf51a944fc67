"""The web console in a real browser: Debian's chromium, driven by Playwright (pointed at
/usr/bin/chromium; never `playwright install`), against real manager processes.

- In the default run (~30 s): a real manager (``--plaintext``, its nodes registered over
  the API, no agents) — the pages, keyboard navigation, creating a volume with the form,
  a snapshot, the live fragments, the confirmation step of a delete, dark mode.
- ``long``: a local cluster of real processes (TLS, a token): sign in, create a volume,
  attach it from the console, kill a node under a write and watch the volume degrade and
  recover live, take a snapshot.

Screenshots go to $CARGOHOLD_ARTIFACTS (else a temporary directory), printed by the test;
docs/ui.md shows a few of them (docs/images/ui-*.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cli import cli, js
from tests.support.cluster_logs import failed, local_cluster
from tests.support.nbd_clients import need, qemu_io
from tests.support.polling import wait_until

CHROMIUM = "/usr/bin/chromium"
GiB = 1 << 30
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs Debian's chromium (scripts/setup.sh)"
)


def artifacts(tmp_path: Path, name: str) -> Path:
    base = os.environ.get("CARGOHOLD_ARTIFACTS")
    d = Path(base) / name if base else tmp_path / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of {name}: {d}")
    return d


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[str]:
    """A real manager on a new SQLite store, plaintext, three nodes registered (they send
    no heartbeats: node_down_after is an hour)."""
    port = free_port()
    log = open(tmp_path / "manager.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cargohold",
            "manager",
            "--init",
            "--state",
            f"sqlite:{tmp_path}/state.db",
            "--plaintext",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CARGOHOLD_MANAGER_NODE_DOWN_AFTER": "3600"},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as c:

            def up() -> bool:
                try:
                    return c.get("/healthz").status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "manager.log").read_text()
                    return False

            wait_until(up, 60, "the manager to answer", 0.1)
            for i in (1, 2, 3):
                r = c.put(
                    f"/api/v1/nodes/node-{i}",
                    json={
                        "address": f"127.0.0.{i}",
                        "replica_port": 9500,
                        "zone": f"zone-{i}",
                        "disks": [{"name": "disk-0", "path": f"/d{i}", "capacity_bytes": 8 * GiB}],
                    },
                )
                assert r.status_code < 300, r.text
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_the_console_in_a_browser(manager: str, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = artifacts(tmp_path, "ui-manager")
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    complaints: list[str] = []  # the browser's errors: a CSP refusal, a script failing
    page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: complaints.append(str(e)))
    page.goto(manager + "/")  # / -> /ui/
    assert page.url.endswith("/ui/")
    expect(page.locator("h1")).to_have_text("Overview")
    # the skip link is the first stop of the keyboard, and it leads to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    # create a volume with the form, reached by keyboard from the volumes page
    page.get_by_role("link", name="Volumes", exact=True).click()
    page.get_by_role("link", name="Create a volume").click()
    expect(page.locator("h1")).to_have_text("Create a volume")
    page.get_by_label("Name").fill("web-data")
    page.get_by_label("Size").fill("256")
    page.get_by_label("Unit").select_option("MiB")
    page.get_by_label("Replicas").fill("2")
    expect(page.get_by_label("Replicas")).to_have_value("2")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("h1")).to_have_text("Volume web-data")
    expect(page.locator("#done")).to_contain_text("created")
    expect(page.locator("table.replicas tbody tr")).to_have_count(2)
    # a snapshot: the form posts in place (htmx), the page shows the snapshot
    page.get_by_label("Snapshot name").fill("before-upgrade")
    page.get_by_role("button", name="Take snapshot").click()
    expect(page.locator(".tree")).to_contain_text("before-upgrade")
    page.screenshot(path=str(shots / "volume.png"), full_page=True)
    # the list: filter in place, sort, one page
    for n in range(3):
        httpx.post(
            manager + "/api/v1/volumes", json={"name": f"logs-{n}", "size_bytes": 64 << 20}
        ).raise_for_status()
    page.goto(manager + "/ui/volumes")
    expect(page.locator("#volume-count")).to_contain_text("4 volumes")
    page.get_by_label("Filter").fill("logs")
    expect(page.locator("#volume-count")).to_contain_text("3 volumes")
    assert "q=logs" in page.url  # the filter is in the URL (a bookmark opens it)
    page.get_by_role("link", name="Size").click()
    expect(page.locator("th[aria-sort]")).to_contain_text("Size")
    page.screenshot(path=str(shots / "volumes.png"), full_page=True)
    # live: a change made elsewhere (the API) shows without a reload
    page.goto(manager + "/ui/volumes/logs-1")
    expect(page.locator("#vol-node")).to_have_text("—")
    httpx.post(
        manager + "/api/v1/volumes/logs-1/attach", json={"node": "node-2"}
    ).raise_for_status()
    expect(page.locator("#vol-node")).to_contain_text("node-2", timeout=10_000)
    # its engine's I/O counters in node-2's heartbeats become the I/O sparklines, live
    expect(page.locator("#io-none")).to_be_visible()
    for reads in (0, 50, 150):
        io = {"read": reads, "write": 0, "read_bytes": reads * 4096, "written_bytes": 0}
        engine = {"volume": "logs-1", "epoch": 1, "running": True, "status": {"io": io}}
        httpx.post(
            manager + "/api/v1/nodes/node-2/heartbeat", json={"engines": [engine]}
        ).raise_for_status()
    expect(page.locator("table.io-sparks svg.sparkline")).to_have_count(4, timeout=10_000)
    expect(page.locator("table.io-sparks")).to_contain_text("write MB/s: now 0.0, peak 0.0")
    assert "read IOPS: now 0.0" not in page.locator("table.io-sparks").inner_text()
    # a destructive action asks first, and wants the name typed
    page.goto(manager + "/ui/volumes/logs-0")
    page.get_by_role("link", name="Delete…").click()
    expect(page.locator("h1")).to_have_text("Delete volume logs-0?")
    page.get_by_label("Type logs-0 to confirm").fill("logs-0")
    page.get_by_role("button", name="Delete logs-0").click()
    expect(page.locator("h1")).to_have_text("Volumes")
    state = httpx.get(manager + "/api/v1/volumes/logs-0")
    assert state.status_code == 404 or state.json()["state"] == "deleting"
    page.goto(manager + "/ui/")
    page.screenshot(path=str(shots / "overview-light.png"), full_page=True)
    assert complaints == [], complaints
    dark = browser.new_page(color_scheme="dark", viewport={"width": 1200, "height": 800})
    dark.goto(manager + "/ui/nodes")
    expect(dark.locator("h1")).to_have_text("Nodes and disks")
    bg = dark.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(13, 17, 23)", bg  # the dark palette of ui.css
    dark.screenshot(path=str(shots / "nodes-dark.png"), full_page=True)


# --- a real cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(request) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    with local_cluster("uib", lambda: failed(request), nodes=3) as d:
        yield d


def test_sign_in_attach_degrade_recover_snapshot(
    cluster: Path, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    need("qemu-io")
    d = cluster
    shots = artifacts(tmp_path, "ui-cluster")
    url = json.loads((d / "cluster.json").read_text())["api_tcp"]
    token = (d / "token").read_text().strip()
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 800})
    page = ctx.new_page()
    page.goto(url + "/ui/volumes")
    expect(page.locator("h1")).to_have_text("Sign in")
    page.get_by_label("API token").fill("chk_wrong_token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".flash.error")).to_contain_text("sign-in refused")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_contain_text("admin")
    cookie = next(c for c in ctx.cookies() if c["name"] == "cargohold_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    # create and attach from the console
    page.goto(url + "/ui/volumes/new")
    expect(page.locator("h1")).to_have_text("Create a volume")
    page.get_by_label("Name").fill("orders")
    page.get_by_label("Size").fill("64")
    page.get_by_label("Unit").select_option("MiB")
    page.get_by_label("Replicas").fill("3")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("h1")).to_have_text("Volume orders")
    expect(page.locator("#vol-state")).to_contain_text("detached", timeout=60_000)
    page.get_by_label("Node").select_option("node-1")
    page.get_by_role("button", name="Attach").click()
    expect(page.locator("#vol-state")).to_contain_text("attached", timeout=60_000)
    expect(page.locator("#vol-robustness")).to_contain_text("healthy", timeout=60_000)
    page.screenshot(path=str(shots / "attached.png"), full_page=True)
    # kill a node that holds a replica (not the engine's), write: degraded, live
    endpoint = js(d, "volume", "get", "orders")["endpoint"]  # type: ignore[index]
    cli(d, "node", "kill", "node-3")
    qemu_io(endpoint, "write -P 0x61 0 1M")
    expect(page.locator("#vol-robustness")).to_contain_text("degraded", timeout=60_000)
    # the write's megabyte, through the agent's heartbeat, on the write MB/s line
    expect(page.locator("table.io-sparks")).to_contain_text(
        re.compile(r"write MB/s: now [0-9.]+, peak (0\.[1-9]|[1-9])"), timeout=30_000
    )
    page.screenshot(path=str(shots / "degraded.png"), full_page=True)
    page.goto(url + "/ui/")
    expect(page.locator("#alerts-h")).not_to_contain_text("(0)")
    page.screenshot(path=str(shots / "overview-degraded.png"), full_page=True)
    # the node comes back: its replica is rebuilt and the volume is healthy again
    cli(d, "node", "start", "node-3", timeout=180)
    page.goto(url + "/ui/volumes/orders")
    expect(page.locator("#vol-robustness")).to_contain_text("healthy", timeout=120_000)
    # a snapshot from the console, ready once the engine took it
    page.get_by_label("Snapshot name").fill("after-recovery")
    page.get_by_role("button", name="Take snapshot").click()
    expect(page.locator(".tree")).to_contain_text("after-recovery")
    wait_until(
        lambda: any(
            s["name"] == "after-recovery" and s["state"] == "ready"
            for s in js(d, "snapshot", "list", "orders")  # type: ignore[union-attr]
        ),
        60,
        "the snapshot to be ready",
        0.5,
    )
    page.reload()
    page.screenshot(path=str(shots / "snapshot.png"), full_page=True)
    if os.environ.get("CARGOHOLD_UI_DOC_IMAGES"):  # refresh docs/images/ (docs/ui.md)
        docs = Path(__file__).resolve().parents[2] / "docs/images"
        for name in ("overview-degraded", "degraded", "snapshot"):
            shutil.copy(shots / f"{name}.png", docs / f"ui-{name}.png")
