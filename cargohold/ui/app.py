"""The console's routes: pages, their live fragments and the actions (docs/ui.md).

``mount(app, service)`` adds them to the manager's FastAPI app (before ``add_security``,
which checks every route declares a permission). Pages read through the same ``Service``
calls as the REST API, with the signed-in identity: a tenant sees only its own volumes, and
an action is refused (403) to a role without its permission. Actions are form POSTs
(htmx sends them in place; without scripts they still work), each checked for its form
token and origin (csrf.py), then redirected (303) to the page that shows the result.
The routes are not in the OpenAPI schema (``include_in_schema=False``): they are not API.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from cargohold.control.api_errors import http_status
from cargohold.control.auth import Auth, public
from cargohold.control.model import NodeState
from cargohold.control.requests import AttachRequest, ExpandRequest, SnapshotCreate, VolumeCreate
from cargohold.control.service import Service
from cargohold.control.tenancy import human, only_visible
from cargohold.control.views import volume_view
from cargohold.errors import CargoholdError, InvalidArgument, Unauthenticated
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission
from cargohold.ui import csrf, listing, session
from cargohold.ui.conditions import conditions
from cargohold.ui.io_sparks import io_sparks
from cargohold.ui.session import COOKIE, MAX_AGE, PATH, Viewer, viewer
from cargohold.ui.sparkline import per_bucket, svg
from cargohold.ui.tree import snapshot_tree

HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 << 10  # a console form is a few fields

Status = Annotated[Viewer, Depends(viewer(Permission.STATUS_READ))]
Read = Annotated[Viewer, Depends(viewer(Permission.VOLUMES_READ))]
Write = Annotated[Viewer, Depends(viewer(Permission.VOLUMES_WRITE))]
Attach = Annotated[Viewer, Depends(viewer(Permission.VOLUMES_ATTACH))]
NodesRead = Annotated[Viewer, Depends(viewer(Permission.NODES_READ))]
NodesWrite = Annotated[Viewer, Depends(viewer(Permission.NODES_WRITE))]
Public = Annotated[Identity, Depends(public())]


def _when(t: float | None) -> str:
    if not t:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC"


def _size(n: int | None) -> str:
    return human(int(n or 0))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(when=_when, size=_size, pct=_pct)
templates.env.globals.update(Permission=Permission, urlencode=urlencode)


class Console:
    """The pages, bound to one ``Service``."""

    def __init__(self, s: Service) -> None:
        self.s = s

    # --- helpers -----------------------------------------------------------------------
    def page(self, request: Request, v: Viewer, name: str, code: int = 200, **ctx: Any) -> Response:
        """``name`` rendered for ``v``: the login page when nobody is signed in, 403 when
        the route's permission is missing."""
        if v.ident is None:
            return login_page(request, v.why, status=401)
        if not v.allowed:
            return templates.TemplateResponse(
                request,
                "forbidden.html",
                {"v": v, "need": str(v.need), "nav": ""},
                status_code=403,
            )
        return templates.TemplateResponse(request, name, {"v": v, **ctx}, status_code=code)

    def fragment(self, request: Request, v: Viewer, name: str, **ctx: Any) -> Response:
        """A live fragment: 204 (htmx leaves the page as it is) when the digest the page
        holds (``?v=``) is the fragment's, so an unchanged poll moves no HTML."""
        if v.ident is None or not v.allowed:
            return Response(status_code=286)  # htmx: stop polling (the page shows why on reload)
        body = templates.get_template(name).render({"v": v, "request": request, **ctx})
        digest = hashlib.sha256(body.encode()).hexdigest()[:16]
        if request.query_params.get("v") == digest:
            return Response(status_code=204)
        return HTMLResponse(body.replace("__DIGEST__", digest))

    async def form(self, request: Request, v: Viewer) -> dict[str, str] | Response:
        """The POST's fields, or the answer refusing it (no session, no permission, a bad
        form token or origin, too large a body)."""
        if v.ident is None:
            return login_page(request, v.why, status=401)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return self.error(request, v, 413, "the form is too large")
        fields = {k: vals[-1] for k, vals in parse_qs(body.decode("utf-8", "replace")).items()}
        if not session.csrf_ok(request, v, fields.get(csrf.FIELD)):
            return self.error(
                request, v, 403, "the form's token is stale or missing: reload the page"
            )
        if not v.allowed:
            return self.error(request, v, 403, f"{v.name} may not do this (needs {v.need})")
        return fields

    def error(self, request: Request, v: Viewer, status: int, message: str) -> Response:
        return templates.TemplateResponse(
            request,
            "error.html",
            {"v": v, "status": status, "message": message, "nav": ""},
            status_code=status,
        )

    def failed(self, request: Request, v: Viewer, e: Exception) -> Response:
        if isinstance(e, ValidationError):
            msg = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}"
                for err in e.errors(include_url=False)[:3]
            )
            return self.error(request, v, 400, msg)
        assert isinstance(e, CargoholdError)
        return self.error(request, v, http_status(e), str(e))

    # --- overview -------------------------------------------------------------------------
    async def overview_data(self, v: Viewer) -> dict[str, Any]:
        """The overview's figures, from one read of each kind of record: the counts as
        ``ClusterCalls.status`` makes them (a tenant's of its own volumes; nodes and
        capacity are the cluster's), and the conditions. Provisioned is each volume's size
        times the replicas it wants (not read from the replica records: 3 per volume, the
        page's largest read by far; the nodes page sums them per disk)."""
        s, who = self.s, v.ident
        vols = only_visible(who, await s.repo.volumes())
        nodes = await s.repo.nodes()
        disks = await s.repo.disks()
        allocated = sum(x.size_bytes * x.replicas_wanted for x in vols if not x.deleting)
        counts = {"total": len(vols), "healthy": 0, "degraded": 0, "faulted": 0, "attached": 0}
        for x in vols:
            if x.robustness.value in counts:
                counts[x.robustness.value] += 1
            counts["attached"] += x.attach_node is not None
        node_counts = {st.value: 0 for st in NodeState}
        for n in nodes:
            node_counts[n.state.value] += 1
        status = {
            "backend": s.backend,
            "manager": s.manager_id,
            "leader": await s.repo.store.leader("manager"),
            "nodes": node_counts,
            "volumes": counts,
            "capacity_bytes": sum(d.capacity_bytes for d in disks),
            "allocated_bytes": allocated,
        }
        see_nodes = v.may(Permission.NODES_READ)
        events = await s.events(who)
        hourly = per_bucket((e["at"] for e in events), time.time(), 3600, 24)
        return {
            "status": status,
            "conditions": conditions(vols, nodes if see_nodes else [], disks if see_nodes else []),
            "nodes": [n.view() for n in sorted(nodes, key=lambda n: n.name)] if see_nodes else [],
            "events": list(reversed(events[-10:])),
            "spark": svg(hourly, f"events per hour, last 24 hours: {sum(hourly)} in all"),
            "see_nodes": see_nodes,
        }

    # --- volumes ----------------------------------------------------------------------
    async def volume_page(self, v: Viewer, q: listing.VolumeQuery) -> dict[str, Any]:
        """One page of the volumes the caller may see: records filtered and sorted, views
        made of the page's volumes only."""
        s = self.s
        page = listing.select(only_visible(v.ident, await s.repo.volumes()), q)
        nodes = {n.name: n for n in await s.repo.nodes()}
        reps = await asyncio.gather(*(s.repo.replicas(vol.name) for vol in page.items))
        rows = [volume_view(vol, r, nodes) for vol, r in zip(page.items, reps, strict=True)]
        return {"q": q, "page": page, "rows": rows}

    async def volume_data(self, v: Viewer, name: str) -> dict[str, Any]:
        s, who = self.s, v.ident
        vol = await s.volume(name, who)
        snaps = await s.snapshots(name, who)
        clones = [x.model_dump() for x in only_visible(who, await s.repo.clones_of(name))]
        backups = await s.backups(who, volume=name) if v.may(Permission.BACKUPS_READ) else None
        events = await s.events(who, volume=name)
        ops = sorted(await s.operations(name, who), key=lambda o: o["created_at"])[-8:]
        hourly = per_bucket((e["at"] for e in events), time.time(), 3600, 24)
        node_names = (
            [n.name for n in await s.repo.nodes() if n.down_since is None]
            if v.may(Permission.NODES_READ)
            else []
        )
        return {
            "vol": vol,
            "snaps": snaps,
            "tree": snapshot_tree(snaps, clones),
            "backups": backups,
            "events": list(reversed(events[-15:])),
            "ops": list(reversed(ops)),
            "io": io_sparks(name, s.io_history.rates(name, time.time())),
            "spark": svg(hourly, f"events of {name} per hour, last 24 hours: {sum(hourly)}"),
            "node_names": node_names,
        }

    async def nodes_data(self) -> dict[str, Any]:
        s = self.s
        nodes = sorted(await s.nodes(), key=lambda n: n["name"])
        disks = await s.repo.disks()
        used: dict[tuple[str, str], int] = {}
        count: dict[str, int] = {}
        for r in await s.repo.replicas():
            if not r.deleting:
                used[(r.node, r.disk)] = used.get((r.node, r.disk), 0) + r.size_bytes
                count[r.node] = count.get(r.node, 0) + 1
        by_node: dict[str, list[dict[str, Any]]] = {}
        for d in sorted(disks, key=lambda d: (d.node, d.name)):
            row = {**d.model_dump(), "allocated_bytes": used.get((d.node, d.name), 0)}
            by_node.setdefault(d.node, []).append(row)
        return {"nodes": nodes, "disks": by_node, "replicas": count}


def login_page(request: Request, why: str = "", status: int = 200) -> Response:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"v": None, "why": why, "next": request.url.path, "nav": ""},
        status_code=status,
    )


# Every console answer: scripts, styles and forms of this origin only, never in a frame
# (clickjacking), no MIME sniffing, no referrer to other sites.
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class ConsoleHeaders:
    """ASGI middleware: ``HEADERS`` on every answer under /ui (static files keep their
    caching: they change only with the manager's version)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if not path.startswith("/ui") or path.startswith("/ui/static/"):
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message.get("type") == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, sending)


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _size_field(text: str, unit: str) -> int:
    """A size typed in a form (a number of ``unit``: MiB or GiB) -> bytes."""
    try:
        n = float(text)
    except ValueError:
        raise InvalidArgument(f"size: {text!r} is not a number") from None
    mult = {"MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}.get(unit)
    if mult is None or not 0 < n <= 256 * 1024**4 / mult:
        raise InvalidArgument(f"size: {text} {unit} is not a size")
    return int(n * mult) // 4096 * 4096


def mount(app: FastAPI, s: Service) -> None:
    """Add the console to the manager's ``app`` (its routes, static files, / -> /ui/)."""
    c = Console(s)
    app.state.ui_csrf_key = csrf.new_key()
    r = APIRouter(include_in_schema=False)  # plain routes: forms, not JSON bodies

    @r.get("/", response_class=RedirectResponse)
    async def root(who: Public) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    @r.get("/ui", response_class=RedirectResponse)
    async def ui_root(who: Public) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    # --- signing in and out ------------------------------------------------------------
    @r.get("/ui/login", response_class=HTMLResponse)
    async def login(request: Request, who: Public) -> Response:
        return login_page(request)

    @r.post("/ui/login", response_class=HTMLResponse)
    async def do_login(request: Request, who: Public) -> Response:
        """The token typed in is checked like an API bearer token; the session cookie
        holds it (module docstring of session.py)."""
        if not csrf.same_origin(
            request.headers.get("origin"),
            request.headers.get("referer"),
            request.headers.get("host"),
        ):
            return login_page(request, "refused: the form came from another site", 403)
        body = (await request.body())[:MAX_FORM_BYTES]
        token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[-1].strip()
        auth: Auth = request.app.state.auth
        if auth.repo is None:
            return _redirect("/ui/")  # a --plaintext manager: everybody is admin already
        try:
            await auth.tokens.identify(token, auth.repo.cluster_id)
        except Unauthenticated as e:
            return login_page(request, f"sign-in refused: {e}", 401)
        resp = _redirect("/ui/")
        resp.set_cookie(
            COOKIE,
            token,
            max_age=MAX_AGE,
            path=PATH,
            httponly=True,
            secure=request.url.scheme == "https",
            samesite="strict",
        )
        return resp

    @r.post("/ui/logout", response_class=HTMLResponse)
    async def logout(request: Request, who: Public) -> Response:
        resp = _redirect("/ui/login")
        resp.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
        return resp

    # --- pages ----------------------------------------------------------------------------
    @r.get("/ui/", response_class=HTMLResponse)
    async def overview(request: Request, v: Status) -> Response:
        if v.ident is None or not v.allowed:
            return c.page(request, v, "overview.html")
        return c.page(request, v, "overview.html", nav="overview", **await c.overview_data(v))

    @r.get("/ui/live/overview", response_class=HTMLResponse)
    async def overview_live(request: Request, v: Status) -> Response:
        if v.ident is None or not v.allowed:
            return c.fragment(request, v, "overview_live.html")
        return c.fragment(request, v, "overview_live.html", **await c.overview_data(v))

    @r.get("/ui/volumes", response_class=HTMLResponse)
    async def volumes(request: Request, v: Read) -> Response:
        q = listing.VolumeQuery.parse(request.query_params)
        if v.ident is None or not v.allowed:
            return c.page(request, v, "volumes.html")
        data = await c.volume_page(v, q)
        if request.headers.get("hx-target") == "volume-table":  # the filter form, in place
            return c.fragment(request, v, "volume_table.html", **data)
        return c.page(request, v, "volumes.html", nav="volumes", **data)

    @r.get("/ui/live/volumes", response_class=HTMLResponse)
    async def volumes_live(request: Request, v: Read) -> Response:
        if v.ident is None or not v.allowed:
            return c.fragment(request, v, "volume_table.html")
        data = await c.volume_page(v, listing.VolumeQuery.parse(request.query_params))
        return c.fragment(request, v, "volume_table.html", **data)

    @r.get("/ui/volumes/new", response_class=HTMLResponse)
    async def new_volume(request: Request, v: Write) -> Response:
        return c.page(request, v, "volume_new.html", nav="volumes", form={})

    @r.post("/ui/volumes", response_class=HTMLResponse)
    async def create_volume(request: Request, v: Write) -> Response:
        f = await c.form(request, v)
        if isinstance(f, Response):
            return f
        try:
            req = VolumeCreate(
                name=f.get("name", "").strip(),
                size_bytes=_size_field(f.get("size", ""), f.get("unit", "GiB")),
                replicas=int(f["replicas"]) if f.get("replicas") else None,
            )
            await s.create_volume(req, v.ident)
        except (CargoholdError, ValidationError, ValueError) as e:
            if isinstance(e, ValueError) and not isinstance(e, ValidationError):
                e = InvalidArgument(f"replicas: {e}")
            return c.failed(request, v, e)
        return _redirect(f"/ui/volumes/{quote(req.name)}?done=created")

    @r.get("/ui/volumes/{volume}", response_class=HTMLResponse)
    async def volume(request: Request, volume: str, v: Read) -> Response:
        if v.ident is None or not v.allowed:
            return c.page(request, v, "volume.html")
        try:
            data = await c.volume_data(v, volume)
        except CargoholdError as e:
            return c.failed(request, v, e)
        return c.page(
            request, v, "volume.html", nav="volumes", done=request.query_params.get("done"), **data
        )

    @r.get("/ui/live/volumes/{volume}", response_class=HTMLResponse)
    async def volume_live(request: Request, volume: str, v: Read) -> Response:
        if v.ident is None or not v.allowed:
            return c.fragment(request, v, "volume_live.html")
        try:
            vol = await s.volume(volume, v.ident)
        except CargoholdError:
            return Response(status_code=286)  # gone: stop polling
        io = io_sparks(volume, s.io_history.rates(volume, time.time()))
        return c.fragment(request, v, "volume_live.html", vol=vol, io=io)

    @r.get("/ui/volumes/{volume}/confirm/{action}", response_class=HTMLResponse)
    async def confirm(request: Request, volume: str, action: str, v: Read) -> Response:
        """The confirmation step of a destructive action (delete, detach)."""
        if action not in ("delete", "detach"):
            return c.error(request, v, 404, f"no action {action}")
        if v.ident is None or not v.allowed:
            return c.page(request, v, "confirm.html")
        try:
            vol = await s.volume(volume, v.ident)
        except CargoholdError as e:
            return c.failed(request, v, e)
        need = Permission.VOLUMES_WRITE if action == "delete" else Permission.VOLUMES_ATTACH
        return c.page(request, v, "confirm.html", nav="volumes", vol=vol, action=action, need=need)

    async def act(request: Request, v: Viewer, volume: str, what: str, call: Any) -> Response:
        f = await c.form(request, v)
        if isinstance(f, Response):
            return f
        try:
            await call(f)
        except (CargoholdError, ValidationError) as e:
            return c.failed(request, v, e)
        return _redirect(f"/ui/volumes/{quote(volume)}?done={what}")

    @r.post("/ui/volumes/{volume}/expand", response_class=HTMLResponse)
    async def expand(request: Request, volume: str, v: Write) -> Response:
        async def call(f: dict[str, str]) -> None:
            size = _size_field(f.get("size", ""), f.get("unit", "GiB"))
            await s.expand(volume, ExpandRequest(size_bytes=size), v.ident)

        return await act(request, v, volume, "expand", call)

    @r.post("/ui/volumes/{volume}/snapshots", response_class=HTMLResponse)
    async def snapshot(request: Request, volume: str, v: Write) -> Response:
        async def call(f: dict[str, str]) -> None:
            await s.create_snapshot(volume, SnapshotCreate(name=f.get("name", "").strip()), v.ident)

        return await act(request, v, volume, "snapshot", call)

    @r.post("/ui/volumes/{volume}/clone", response_class=HTMLResponse)
    async def clone(request: Request, volume: str, v: Write) -> Response:
        made: list[str] = []

        async def call(f: dict[str, str]) -> None:
            src = await s.volume(volume, v.ident)
            source: dict[str, str] = {"volume": volume}
            if f.get("snapshot"):
                source["snapshot"] = f["snapshot"]
            req = VolumeCreate.model_validate(
                {
                    "name": f.get("name", "").strip(),
                    "size_bytes": src["size_bytes"],
                    "replicas": src["replicas_wanted"],
                    "source": source,
                }
            )
            await s.create_volume(req, v.ident)
            made.append(req.name)

        answer = await act(request, v, volume, "clone", call)
        if made and answer.status_code == 303:
            return _redirect(f"/ui/volumes/{quote(made[0])}?done=created")
        return answer

    @r.post("/ui/volumes/{volume}/attach", response_class=HTMLResponse)
    async def attach(request: Request, volume: str, v: Attach) -> Response:
        async def call(f: dict[str, str]) -> None:
            req = AttachRequest(node=f.get("node", "").strip(), read_only="read_only" in f)
            await s.attach(volume, req, v.ident)

        return await act(request, v, volume, "attach", call)

    @r.post("/ui/volumes/{volume}/detach", response_class=HTMLResponse)
    async def detach(request: Request, volume: str, v: Attach) -> Response:
        async def call(f: dict[str, str]) -> None:
            await s.detach(volume, v.ident, force="force" in f)

        return await act(request, v, volume, "detach", call)

    @r.post("/ui/volumes/{volume}/delete", response_class=HTMLResponse)
    async def delete(request: Request, volume: str, v: Write) -> Response:
        f = await c.form(request, v)
        if isinstance(f, Response):
            return f
        if f.get("confirm_name") != volume:
            return c.error(request, v, 400, f"type the volume's name ({volume}) to delete it")
        try:
            await s.delete_volume(volume, "purge" in f, v.ident)
        except CargoholdError as e:
            return c.failed(request, v, e)
        return _redirect(f"/ui/volumes?{urlencode({'q': volume})}")

    # --- nodes -----------------------------------------------------------------------------
    @r.get("/ui/nodes", response_class=HTMLResponse)
    async def nodes(request: Request, v: NodesRead) -> Response:
        if v.ident is None or not v.allowed:
            return c.page(request, v, "nodes.html")
        return c.page(
            request,
            v,
            "nodes.html",
            nav="nodes",
            done=request.query_params.get("done"),
            **await c.nodes_data(),
        )

    @r.get("/ui/live/nodes", response_class=HTMLResponse)
    async def nodes_live(request: Request, v: NodesRead) -> Response:
        if v.ident is None or not v.allowed:
            return c.fragment(request, v, "node_table.html")
        return c.fragment(request, v, "node_table.html", **await c.nodes_data())

    @r.get("/ui/nodes/{node}/confirm/drain", response_class=HTMLResponse)
    async def confirm_drain(request: Request, node: str, v: NodesWrite) -> Response:
        try:
            n = await s.node(node)
        except CargoholdError as e:
            return c.failed(request, v, e)
        return c.page(request, v, "confirm_drain.html", nav="nodes", node=n)

    @r.post("/ui/nodes/{node}/{action}", response_class=HTMLResponse)
    async def node_action(request: Request, node: str, action: str, v: NodesWrite) -> Response:
        f = await c.form(request, v)
        if isinstance(f, Response):
            return f
        try:
            if action == "cordon":
                await s.cordon(node, True)
            elif action == "uncordon":
                await s.cordon(node, False)
            elif action == "drain":
                await s.drain(node)
            else:
                return c.error(request, v, 404, f"no node action {action}")
        except CargoholdError as e:
            return c.failed(request, v, e)
        return _redirect(f"/ui/nodes?done={action}")

    # --- events ----------------------------------------------------------------------------
    @r.get("/ui/events", response_class=HTMLResponse)
    async def events(request: Request, v: Read) -> Response:
        if v.ident is None or not v.allowed:
            return c.page(request, v, "events.html")
        volume = request.query_params.get("volume", "").strip()[:63] or None
        page = listing.paginate(
            list(reversed(await s.events(v.ident, volume=volume))),
            _int(request.query_params.get("page"), 1),
            100,
        )
        return c.page(request, v, "events.html", nav="events", page=page, volume=volume or "")

    app.include_router(r)
    app.add_middleware(ConsoleHeaders)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")


def _int(text: str | None, default: int) -> int:
    try:
        return int(text or default)
    except ValueError:
        return default
