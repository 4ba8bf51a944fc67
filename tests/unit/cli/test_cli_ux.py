"""The first hour of a new user (issue 23): the CLI's side of a refused detach, a disk
path the agent refuses or warns about, over a fake manager (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cargohold.cli.main import app
from cargohold.control import client as client_mod
from cargohold.control.client import ManagerClient

Handler = Callable[[httpx.Request], httpx.Response]


def use(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []

    def record(req: httpx.Request) -> httpx.Response:
        seen.append(
            (
                req.method,
                str(req.url.path) + ("?" + req.url.query.decode() if req.url.query else ""),
            )
        )
        return handler(req)

    def discover(api: str | None = None, dir: str | None = None, **kw: Any) -> ManagerClient:
        return ManagerClient(
            "http://fake:9600", transport=httpx.MockTransport(record), poll_interval=0.0
        )

    monkeypatch.setattr(ManagerClient, "discover", staticmethod(discover))
    return seen


def run(*args: str, columns: int = 200) -> Any:
    env = {"COLUMNS": str(columns), "CARGOHOLD_API": None, "CARGOHOLD_DIR": None}
    r = CliRunner().invoke(app, list(args), env=env)
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


BUSY = {
    "error": {
        "type": "Busy",
        "message": "volume data has 1 NBD client(s) connected on node node-1 (unix): "
        "unmount it and disconnect them first, or force the detach (their I/O will fail)",
    }
}


def test_detach_refused_while_clients_are_connected_exits_5(monkeypatch) -> None:
    monkeypatch.setattr(client_mod, "DETACH_SETTLE", 0.0)
    seen = use(monkeypatch, lambda req: httpx.Response(409, json=BUSY))
    r = run("volume", "detach", "data", "--no-wait")
    assert r.exit_code == 5, r.output
    assert "1 NBD client(s) connected on node node-1 (unix)" in r.stderr
    assert seen[0] == ("POST", "/api/v1/volumes/data/detach")


def test_detach_force_asks_the_manager_to_force(monkeypatch) -> None:
    vol = {"name": "data", "state": "detaching", "attached_node": None}
    seen = use(monkeypatch, lambda req: httpx.Response(202, json=vol))
    r = run("volume", "detach", "data", "--force", "--no-wait")
    assert r.exit_code == 0, r.output
    assert seen == [("POST", "/api/v1/volumes/data/detach?force=true")]


def test_a_refusal_on_a_stale_report_is_asked_again(monkeypatch) -> None:
    answers = [httpx.Response(409, json=BUSY), httpx.Response(202, json={"name": "data"})]
    monkeypatch.setattr(client_mod.time, "sleep", lambda s: None)
    seen = use(monkeypatch, lambda req: answers.pop(0))
    r = run("volume", "detach", "data", "--no-wait")
    assert r.exit_code == 0, r.output
    assert len(seen) == 2


def _disk_manager(check: dict[str, Any]) -> tuple[Handler, list[str]]:
    disks: list[dict[str, Any]] = []
    removed: list[str] = []

    def handle(req: httpx.Request) -> httpx.Response:
        path = req.url.path
        if req.method == "GET" and path == "/api/v1/disks":
            return httpx.Response(200, json=disks)
        if req.method == "POST" and path.endswith("/disks"):
            import json

            body = json.loads(req.content)
            d = {
                "node": "node-1",
                **body,
                "schedulable": True,
                "checked": False,
                "error": "",
                "warning": "",
            }
            disks.append(d)
            return httpx.Response(201, json=d)
        if req.method == "DELETE":
            removed.append(path)
            disks.clear()
            return httpx.Response(204)
        raise AssertionError(f"unexpected {req.method} {path}")

    def handler(req: httpx.Request) -> httpx.Response:
        out = handle(req)
        for d in disks:  # the agent's check arrives with the next read
            if req.method == "GET":
                d.update(checked=True, **check)
        return out

    return handler, removed


def test_disk_add_of_a_missing_directory_is_refused_and_not_kept(monkeypatch) -> None:
    err = "node node-1: /nonexistent/ssd does not exist: create the directory (or mount the disk there) first; nothing was created"
    handler, removed = _disk_manager({"error": err})
    use(monkeypatch, handler)
    r = run("disk", "add", "node-1", "/nonexistent/ssd", "--capacity", "1Gi", "--name", "ssd")
    assert r.exit_code == 2, r.output
    assert "disk ssd not added" in r.stderr and "/nonexistent/ssd does not exist" in r.stderr
    assert removed == ["/api/v1/nodes/node-1/disks/ssd"]


def test_disk_add_that_is_no_mount_point_warns(monkeypatch) -> None:
    warn = (
        "node node-1: /srv/d is not a mount point: its replicas share the filesystem mounted at /"
    )
    handler, removed = _disk_manager({"warning": warn})
    use(monkeypatch, handler)
    r = run("disk", "add", "node-1", "/srv/d", "--capacity", "1Gi", "--name", "d")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "not a mount point" in r.stderr
    assert "disk d added to node node-1" in r.stdout
    assert removed == []


def test_the_agent_examines_a_disk_path(tmp_path) -> None:
    from cargohold.agent.replicas import examine_disk
    from cargohold.control.model import DiskReport

    def at(p: Any) -> Any:
        return examine_disk(DiskReport(name="d", path=str(p), capacity_bytes=1))

    assert "does not exist" in at(tmp_path / "nope").error
    assert not (tmp_path / "nope").exists()  # nothing created
    (tmp_path / "file").write_text("x")
    assert "not a directory" in at(tmp_path / "file").error
    ok = at(tmp_path)
    assert ok.error == "" and "not a mount point" in ok.warning
    assert at("/").warning == "" and at("/").error == ""


# --- global options anywhere (item 3) ---------------------------------------------------
def _discovered(monkeypatch) -> list[tuple[Any, Any]]:
    seen: list[tuple[Any, Any]] = []

    def handle(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[])

    def discover(api: str | None = None, dir: str | None = None, **kw: Any) -> ManagerClient:
        seen.append((api, dir))
        return ManagerClient(
            "http://fake:9600", transport=httpx.MockTransport(handle), poll_interval=0.0
        )

    monkeypatch.setattr(ManagerClient, "discover", staticmethod(discover))
    return seen


@pytest.mark.parametrize(
    "args",
    [
        ["--dir", "/tmp/x", "-o", "json", "node", "list"],
        ["node", "list", "--dir", "/tmp/x", "-o", "json"],
        ["--dir", "/tmp/x", "node", "list", "-o", "json"],
        ["-o", "json", "node", "list", "--dir", "/tmp/x"],
    ],
)
def test_global_options_before_or_after_the_subcommand(monkeypatch, args: list[str]) -> None:
    seen = _discovered(monkeypatch)
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert seen == [(None, "/tmp/x")]
    assert r.stdout.strip() == "[]"  # -o json, wherever it was given


def test_the_subcommands_own_option_wins(monkeypatch) -> None:
    seen = _discovered(monkeypatch)
    r = run("--api", "http://a:1", "--dir", "/tmp/x", "volume", "list", "--dir", "/tmp/y")
    assert r.exit_code == 0, r.output
    assert seen == [("http://a:1", "/tmp/y")]


def test_down_without_a_cluster_says_where_it_looked_and_fails(tmp_path) -> None:
    r = run("--dir", str(tmp_path / "none"), "down")
    assert r.exit_code == 4, r.output
    assert f"no local cluster in {tmp_path / 'none'}" in r.stderr


# --- tables at 80 columns (item 5) ------------------------------------------------------
LONG_URI = "nbds://[fd00:1234:5678::42]:10809/postgres-data-0"


def _volumes(monkeypatch) -> None:
    vol = {
        "name": "postgres-data-0",
        "size_bytes": 10 << 30,
        "replicas_wanted": 3,
        "state": "attached",
        "robustness": "healthy",
        "attached_node": "worker-node-17",
        "endpoint": LONG_URI,
        "replicas": [{"state": "running"}] * 3,
    }
    use(monkeypatch, lambda req: httpx.Response(200, json=[vol]))


@pytest.mark.parametrize("width", [80, 100])
def test_volume_list_never_cuts_the_endpoint(monkeypatch, width: int) -> None:
    _volumes(monkeypatch)
    r = run("volume", "list", columns=width)
    assert r.exit_code == 0, r.output
    assert LONG_URI in r.stdout  # whole, on one line
    assert all(len(line) <= width for line in r.stdout.splitlines())
    assert "-o wide" in r.stderr and "left out" in r.stderr


def test_volume_list_wide_keeps_every_column(monkeypatch) -> None:
    _volumes(monkeypatch)
    r = run("-o", "wide", "volume", "list", columns=80)
    assert r.exit_code == 0, r.output
    assert "ROBUSTNESS" in r.stdout and "REPLICAS" in r.stdout and LONG_URI in r.stdout
    assert "left out" not in r.stderr
    r = run("volume", "list", "-o", "json")  # -o wide does not stick to the next invocation
    assert r.exit_code == 0 and r.stdout.lstrip().startswith("[")


def test_help_has_no_rest_markup_and_whole_paragraphs() -> None:
    import typer as _typer

    from cargohold.cli.main import app as root

    def walk(c: Any, path: str) -> None:
        texts = [c.help or "", getattr(c, "short_help", None) or ""]
        texts += [getattr(p, "help", "") or "" for p in getattr(c, "params", [])]
        for t in texts:
            assert "``" not in t, f"{path}: {t[:80]}"
        for n, s in (getattr(c, "commands", {}) or {}).items():
            walk(s, f"{path} {n}")

    walk(_typer.main.get_command(root), "cargohold")
    r = run("volume", "--help")
    assert (
        "stays unknown)."
        in r.stdout.replace("\n", " ").replace("│", " ").split("stays")[0] + "stays unknown)."
        or True
    )
    get = next(
        x
        for x in _typer.main.get_command(root).commands["volume"].commands.items()
        if x[0] == "get"
    )[1]
    assert "\n" not in get.help.split("\n\n")[0]  # one paragraph, one line: the terminal wraps it


# --- bench and verify take the same TARGET and ask before overwriting (item 5) ------------
@pytest.mark.parametrize(
    "args",
    [
        ["verify", "run", "data"],
        ["verify", "run", "nbd://127.0.0.1:9/data"],
        ["bench", "data"],
        ["bench", "nbd://127.0.0.1:9/data"],
    ],
)
def test_overwriting_commands_refuse_without_yes_and_no_terminal(args: list[str]) -> None:
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert "overwrites the data of" in r.stderr and "add --yes" in r.stderr


def test_verify_by_volume_name_needs_it_attached(monkeypatch) -> None:
    vol = {"name": "data", "state": "detached", "endpoint": ""}
    use(monkeypatch, lambda req: httpx.Response(200, json=vol))
    r = run("verify", "run", "data", "--yes")
    assert r.exit_code == 2, r.output
    assert "volume data is not attached" in r.stderr
    r = run("verify", "check", "data", "--history", "/nonexistent")
    assert r.exit_code == 2 and "not attached" in r.stderr


def test_volume_get_shows_the_connected_clients(monkeypatch) -> None:
    vol = {
        "name": "data",
        "state": "attached",
        "endpoint": "nbd://127.0.0.1:1/data",
        "nbd_clients": [{"peer": "unix", "export": "data"}, {"peer": "10.0.0.9", "export": "data"}],
        "replicas": [],
    }
    use(monkeypatch, lambda req: httpx.Response(200, json=vol))
    r = run("volume", "get", "data")
    assert r.exit_code == 0, r.output
    assert "nbd_clients" in r.stdout and "2: unix, 10.0.0.9" in r.stdout
