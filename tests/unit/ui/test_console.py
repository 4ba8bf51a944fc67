"""The web console in process (httpx's ASGI transport, a memory state store): signing in
with a token, roles (a reader sees no action and is refused one), tenants (only their own
volumes), the CSRF check on every POST, and the pages over the same Service calls the API
makes. The real browser runs in tests/integration/test_ui_browser.py."""

from __future__ import annotations

import re

import httpx
import pytest

from cargohold.control.api import build
from cargohold.control.auth import Auth
from cargohold.control.model import DiskReport, EngineReport, Heartbeat, Registration
from cargohold.control.repository import Repository
from cargohold.control.requests import TenantCreate, VolumeCreate
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import open_store
from cargohold.control.token_store import TokenStore
from cargohold.ui.app import mount
from cargohold.ui.session import COOKIE

GiB = 1 << 30
BASE = "https://mgr.test"


class Console:
    def __init__(self, service: Service, tokens: dict[str, str]) -> None:
        self.service = service
        self.tokens = tokens
        self.app = build(service, Auth(service.repo), mount)

    def client(self, who: str | None = None) -> httpx.AsyncClient:
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=BASE, follow_redirects=False
        )
        if who is not None:
            c.cookies.set(COOKIE, self.tokens[who], domain="mgr.test", path="/ui")
        return c


@pytest.fixture
async def console() -> Console:
    store = open_store("memory:")
    repo = Repository(store)
    repo.cluster_id = "c-" + "1" * 32
    service = Service(repo, ManagerSettings(), "memory", "t")
    for i in (1, 2, 3):
        await service.register(
            f"node-{i}",
            Registration(
                address="127.0.0.1",
                replica_port=9500 + i,
                disks=[DiskReport(name="disk-0", path=f"/d{i}", capacity_bytes=100 * GiB)],
            ),
        )
    await service.create_tenant(TenantCreate(name="blue"))
    await service.create_volume(VolumeCreate(name="pv-admin", size_bytes=GiB))
    await service.create_volume(VolumeCreate(name="pv-blue", size_bytes=GiB, tenant="blue"))
    tokens = TokenStore(store)
    made = {}
    for who, role, tenant in (
        ("admin", "admin", None),
        ("reader", "reader", None),
        ("blue", "operator", "blue"),
    ):
        made[who] = (await tokens.create(role, who, tenant=tenant))[1]
    return Console(service, made)


def csrf_of(html: str) -> str:
    m = re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', html)
    assert m, "no form token on the page"
    return m.group(1)


async def test_without_a_session_the_login_page_and_a_token_signs_in(console: Console) -> None:
    async with console.client() as c:
        r = await c.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        r = await c.get("/ui/volumes")
        assert r.status_code == 401 and 'name="token"' in r.text
        r = await c.post("/ui/login", data={"token": "chk_nonsense"})
        assert r.status_code == 401 and "sign-in refused" in r.text
        r = await c.post("/ui/login", data={"token": console.tokens["reader"]})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        for attr in ("HttpOnly", "SameSite=strict", "Secure", "Path=/ui"):
            assert attr.lower() in cookie.lower(), cookie
        r = await c.get("/ui/volumes")
        assert r.status_code == 200 and "pv-admin" in r.text and "reader/reader" in r.text
        # a login form posted from another site is refused
        r = await c.post(
            "/ui/login",
            data={"token": console.tokens["admin"]},
            headers={"origin": "https://evil.example"},
        )
        assert r.status_code == 403


async def test_a_reader_sees_no_action_and_is_refused_one(console: Console) -> None:
    async with console.client("reader") as c:
        page = (await c.get("/ui/volumes/pv-admin")).text
        assert (
            "Take snapshot" not in page and "Delete…" not in page and "Attach</button>" not in page
        )
        assert "Create a volume" not in (await c.get("/ui/volumes")).text
        r = await c.post(
            "/ui/volumes/pv-admin/snapshots", data={"name": "s1", "csrf": csrf_of(page)}
        )
        assert r.status_code == 403
        assert r.status_code == 403 and "may not" in r.text
        r = await c.get("/ui/volumes/new")
        assert r.status_code == 403
    assert await console.service.snapshots("pv-admin") == []


async def test_an_admin_creates_snapshots_attaches_and_deletes(console: Console) -> None:
    async with console.client("admin") as c:
        page = (await c.get("/ui/volumes/new")).text
        token = csrf_of(page)
        r = await c.post(
            "/ui/volumes", data={"name": "made", "size": "2", "unit": "GiB", "csrf": token}
        )
        assert r.status_code == 303 and r.headers["location"] == "/ui/volumes/made?done=created"
        vol = await console.service.volume("made")
        assert vol["size_bytes"] == 2 * GiB and vol["replicas_wanted"] == 3
        r = await c.post("/ui/volumes/made/snapshots", data={"name": "s1", "csrf": token})
        assert r.status_code == 303
        assert [s["name"] for s in await console.service.snapshots("made")] == ["s1"]
        r = await c.post("/ui/volumes/made/attach", data={"node": "node-2", "csrf": token})
        assert r.status_code == 303
        assert (await console.service.volume("made"))["attached_node"] == "node-2"
        page = (await c.get("/ui/volumes/made")).text
        assert "s1" in page and "node-2" in page
        # a refusal of the service is shown with its status: delete needs a detach first
        r = await c.post("/ui/volumes/made/delete", data={"confirm_name": "made", "csrf": token})
        assert r.status_code == 409 and "detach it first" in r.text
        r = await c.post("/ui/volumes/made/detach", data={"csrf": token})
        assert r.status_code == 303
        # the confirmation: the name must be typed
        assert "confirm_name" in (await c.get("/ui/volumes/made/confirm/delete")).text
        r = await c.post("/ui/volumes/made/delete", data={"confirm_name": "x", "csrf": token})
        assert r.status_code == 400
        r = await c.post("/ui/volumes/made/delete", data={"confirm_name": "made", "csrf": token})
        assert r.status_code == 303
        assert (await console.service.volume("made"))["state"] == "deleting"
        r = await c.post("/ui/volumes", data={"name": "Bad_Name", "size": "1", "csrf": token})
        assert r.status_code == 400 and "name" in r.text


async def test_every_post_needs_the_sessions_form_token(console: Console) -> None:
    async with console.client("admin") as c:
        token = csrf_of((await c.get("/ui/volumes/new")).text)
        for data in ({"name": "x1", "size": "1"}, {"name": "x1", "size": "1", "csrf": "00" * 32}):
            r = await c.post("/ui/volumes", data=data)
            assert r.status_code == 403 and "token" in r.text
        r = await c.post(
            "/ui/volumes",
            data={"name": "x1", "size": "1", "csrf": token},
            headers={"origin": "https://evil.example"},
        )
        assert r.status_code == 403
        # another session's token is not this one's
    async with console.client("blue") as other:
        r = await other.post("/ui/volumes", data={"name": "x1", "size": "1", "csrf": token})
        assert r.status_code == 403
    # htmx sends it as a header
    async with console.client("admin") as c:
        r = await c.post(
            "/ui/volumes", data={"name": "x1", "size": "1"}, headers={"x-csrf-token": token}
        )
        assert r.status_code == 303
    names = {v["name"] for v in await console.service.volumes()}
    assert "x1" in names


async def test_a_tenant_sees_only_its_own(console: Console) -> None:
    async with console.client("blue") as c:
        page = (await c.get("/ui/volumes")).text
        assert "pv-blue" in page and "pv-admin" not in page
        assert (await c.get("/ui/volumes/pv-admin")).status_code == 404
        assert "pv-admin" not in (await c.get("/ui/")).text
        assert (await c.get("/ui/nodes")).status_code == 403  # nodes are the provider's
        token = csrf_of((await c.get("/ui/volumes/pv-blue")).text)
        r = await c.post("/ui/volumes/pv-admin/snapshots", data={"name": "s", "csrf": token})
        assert r.status_code == 404
        r = await c.post("/ui/volumes", data={"name": "mine", "size": "1", "csrf": token})
        assert r.status_code == 303
    assert (await console.service.volume("mine"))["tenant"] == "blue"


async def test_pages_and_live_fragments(console: Console) -> None:
    async with console.client("admin") as c:
        for path in ("/ui/", "/ui/volumes", "/ui/nodes", "/ui/events", "/ui/volumes/pv-blue"):
            r = await c.get(path)
            assert r.status_code == 200, path
            assert "<main" in r.text and "htmx.min.js" in r.text
        assert "node-3" in (await c.get("/ui/nodes")).text
        assert "volume-created" in (await c.get("/ui/events")).text
        # a live fragment answers 204 when what the page holds is current
        r = await c.get("/ui/live/volumes/pv-blue")
        assert r.status_code == 200 and 'id="volume-live"' in r.text
        digest = re.search(r"\?v=([0-9a-f]{16})", r.text)
        assert digest is not None
        r = await c.get(f"/ui/live/volumes/pv-blue?v={digest.group(1)}")
        assert r.status_code == 204
        r = await c.get("/ui/live/volumes/pv-blue?v=0000000000000000")
        assert r.status_code == 200
        r = await c.get("/ui/static/htmx.min.js")
        assert r.status_code == 200 and "htmx" in r.text
        r = await c.get(
            "/ui/volumes?sort=size&order=desc&q=pv&per_page=25",
            headers={"hx-target": "volume-table"},
        )
        assert r.status_code == 200 and "<html" not in r.text and "2 volumes" in r.text


async def test_the_console_is_not_in_the_api_schema(console: Console) -> None:
    paths = console.app.openapi()["paths"]
    assert not [p for p in paths if p.startswith("/ui") or p == "/"]


async def test_bad_input_gets_a_clear_refusal(console: Console) -> None:
    async with console.client("admin") as c:
        token = csrf_of((await c.get("/ui/volumes/new")).text)
        for size, unit in (
            ("nan", "GiB"),
            ("inf", "GiB"),
            ("-1", "GiB"),
            ("1", "PiB"),
            ("x", "MiB"),
        ):
            r = await c.post(
                "/ui/volumes", data={"name": "bad", "size": size, "unit": unit, "csrf": token}
            )
            assert r.status_code == 400 and "size" in r.text, (size, unit, r.text[-300:])
        r = await c.post(
            "/ui/volumes", data={"name": "bad", "size": "1", "replicas": "two", "csrf": token}
        )
        assert r.status_code == 400
        r = await c.post(
            "/ui/volumes",
            content=b"name=" + b"x" * (64 << 10),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413
        r = await c.post("/ui/volumes", content=b"\xff\xfe=\x00", headers={"x-csrf-token": token})
        assert r.status_code == 400
        assert (await c.get("/ui/volumes/%2e%2e")).status_code == 404
        assert (await c.get("/ui/volumes?page=99999999999&per_page=-1&sort=%00")).status_code == 200
        assert (await c.get("/ui/volumes/pv-admin/confirm/format")).status_code == 404
        r = await c.post("/ui/nodes/node-1/explode", data={"csrf": token})
        assert r.status_code == 404
    assert "bad" not in {v["name"] for v in await console.service.volumes()}


async def test_console_answers_forbid_frames_and_foreign_scripts(console: Console) -> None:
    async with console.client("reader") as c:
        for path in ("/ui/", "/ui/login", "/ui/live/overview"):
            r = await c.get(path)
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
            assert (
                r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
            )
        r = await c.get("/api/v1/volumes")  # the API's answers are left as they were
        assert r.status_code == 401 and "content-security-policy" not in r.headers


async def test_cordon_and_drain_from_the_nodes_page(console: Console) -> None:
    async with console.client("admin") as c:
        page = (await c.get("/ui/nodes")).text
        assert "Cordon node-2" in page and "Drain node-2…" in page
        token = csrf_of(page)
        r = await c.post("/ui/nodes/node-2/cordon", data={"csrf": token})
        assert r.status_code == 303 and (await console.service.node("node-2"))["cordoned"]
        assert "Uncordon node-2" in (await c.get("/ui/nodes")).text
        assert "Drain node node-2?" in (await c.get("/ui/nodes/node-2/confirm/drain")).text
        r = await c.post("/ui/nodes/node-2/drain", data={"csrf": token})
        assert r.status_code == 303 and (await console.service.node("node-2"))["draining"]
        r = await c.post("/ui/nodes/node-2/uncordon", data={"csrf": token})
        node = await console.service.node("node-2")
        assert r.status_code == 303 and not node["cordoned"] and not node["draining"]
        r = await c.post("/ui/nodes/node-9/cordon", data={"csrf": token})
        assert r.status_code == 404
    async with console.client("reader") as c:
        page = (await c.get("/ui/nodes")).text
        assert "node-1" in page and "Cordon" not in page and "Drain" not in page
        r = await c.post("/ui/nodes/node-1/cordon", data={"csrf": csrf_of(page)})
        assert r.status_code == 403
    assert not (await console.service.node("node-1"))["cordoned"]


async def test_the_volume_fragment_draws_io_sparklines_from_heartbeats(console: Console) -> None:
    """The engine's counters in the heartbeats become the fragment's four sparklines, with
    their text alternative (the last value and the peak)."""
    async with console.client("admin") as c:
        r = await c.get("/ui/live/volumes/pv-blue")
        assert 'id="io-none"' in r.text and "io-sparks" not in r.text
        svc = console.service
        for reads in (0, 100, 300):
            io = {"read": reads, "write": 0, "read_bytes": reads * 4096, "written_bytes": 0}
            hb = Heartbeat(
                engines=[EngineReport(volume="pv-blue", epoch=1, running=True, status={"io": io})]
            )
            await svc.heartbeat("node-1", hb)
        rates = svc.io_history.rates("pv-blue")
        assert len(rates) == 2 and all(r is not None and r.read_iops > 0 for r in rates)
        assert rates[-1] is not None and rates[-1].write_iops == 0
        r = await c.get("/ui/live/volumes/pv-blue")
        assert r.status_code == 200 and 'class="io-sparks"' in r.text
        assert r.text.count('class="sparkline"') == 4
        assert re.search(r"read IOPS: now [0-9.]+, peak [0-9.]+", r.text)
        assert "write MB/s: now 0.0, peak 0.0" in r.text
        page = await c.get("/ui/volumes/pv-blue")
        assert page.text.count('class="sparkline"') == 5  # and the events per hour
