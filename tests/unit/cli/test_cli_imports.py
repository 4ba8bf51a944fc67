"""The ``cargohold`` command imports only what the command it runs needs (cli/main.py's
``_COMMANDS``; docs/benchmarks.md, "CLI start-up"): an everyday client command does not
load the manager's models, the web framework, the launcher or the auditor, and a command's
modules are all named in the table, so none is missing when only its own are loaded.

Module sets, not milliseconds: they do not move with the machine's load."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from typing import Any

import typer

import cargohold.cli
from cargohold.cli import main

# never needed to ask the manager for a list
HEAVY = [
    "fastapi",
    "uvicorn",
    "cargohold.control.model",
    "cargohold.control.repository",
    "cargohold.audit",
    "cargohold.launcher",
    "cargohold.replica.client",
    "asyncio",
    "yaml",
]

RUN = """
import json, sys
from cargohold.cli.main import app
sys.argv = ["cargohold", *ARGS]
try:
    app()
except SystemExit as e:
    code = e.code
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


def _run(*args: str) -> dict[str, Any]:
    """Run ``cargohold ARGS`` as the ``cargohold`` script does, in a process of its own;
    -> its exit code and every module it imported on the way."""
    p = subprocess.run(
        [sys.executable, "-c", RUN.replace("ARGS", repr(list(args)))],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return json.loads(p.stdout.splitlines()[-1])


def _commands(modules: list[str]) -> set[str]:
    return {m.removeprefix("cargohold.cli.") for m in modules if m.endswith("_cmd")}


def test_volume_list_imports_only_what_it_needs() -> None:
    # no manager answers there: the command gets as far as asking (exit 3), so the imports
    # of its run (discovery, credentials, the HTTP client) are counted too
    got = _run("volume", "list", "--api", "unix:/nonexistent/cargohold/api.sock")
    assert got["exit"] == 3
    assert [m for m in HEAVY if m in got["modules"]] == []
    assert _commands(got["modules"]) == set(main._COMMANDS["volume"])


def test_version_imports_no_command_module_nor_http_client() -> None:
    got = _run("version")
    assert got["exit"] in (0, None)
    assert _commands(got["modules"]) == set()
    assert [m for m in [*HEAVY, "httpx", "rich.table"] if m in got["modules"]] == []


def _defined_in(info: Any) -> set[str]:
    """The modules whose functions make up a registered command or group (recursively)."""
    if getattr(info, "typer_instance", None) is None:  # a command
        return {info.callback.__module__}
    sub = info.typer_instance
    out = {sub.registered_callback.callback.__module__} if sub.registered_callback else set()
    for child in [*sub.registered_commands, *sub.registered_groups]:
        out |= _defined_in(child)
    return out


def test_every_command_module_is_in_the_table_under_its_command() -> None:
    """A module that adds a command (or adds to a group) but is missing from ``_COMMANDS``
    would never load (or its commands would be missing when the group loads alone)."""
    for mod in pkgutil.iter_modules(cargohold.cli.__path__):
        importlib.import_module(f"cargohold.cli.{mod.name}")
    registered: dict[str, set[str]] = {}
    for info in [*main.app.registered_commands, *main.app.registered_groups]:
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        registered.setdefault(name, set()).update(_defined_in(info))
    assert list(registered) and set(registered) == set(main._COMMANDS)
    for name, modules in registered.items():
        listed = {f"cargohold.cli.{m}" for m in main._COMMANDS[name]} | {main.__name__}
        assert modules <= listed, f"{name}: {sorted(modules - listed)} missing in _COMMANDS"
