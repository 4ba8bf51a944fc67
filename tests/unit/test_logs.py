"""Daemons own their wiring (issue #15, item 2): one logging setup for every process, the
CLI modules only parse arguments, no circle of imports inside the replica package."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import grimp
import pytest

from cargohold.logs import parse_level, start_line

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cargohold"


def _logged(level: str | None, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` after ``setup_logging`` in a fresh interpreter (logging is per process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CARGOHOLD_LOG", None)
    if level is not None:
        env["CARGOHOLD_LOG"] = level
    prog = "import logging\nfrom cargohold.logs import setup_logging\n" + code
    return subprocess.run(
        [sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_level_comes_from_cargohold_log_and_lines_have_one_format():
    code = (
        "setup_logging()\n"
        "logging.getLogger('cargohold.engine').debug('deep')\n"
        "logging.getLogger('cargohold.engine').info('said')\n"
    )
    default = _logged(None, code)
    assert default.returncode == 0 and "said" in default.stderr and "deep" not in default.stderr
    line = default.stderr.strip().splitlines()[-1]
    assert line.endswith(" INFO cargohold.engine: said"), line
    for given in ("DEBUG", "debug", "10"):  # any case, or a number
        out = _logged(given, code)
        assert "DEBUG cargohold.engine: deep" in out.stderr, (given, out.stderr)
    quiet = _logged("WARNING", code)
    assert quiet.stderr == ""


def test_a_bad_cargohold_log_is_named_and_does_not_stop_the_process():
    out = _logged("chatty", "setup_logging()\nlogging.getLogger('cargohold').info('on')\n")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "CARGOHOLD_LOG='chatty' is not a log level" in out.stderr
    assert "INFO cargohold: on" in out.stderr  # logs at INFO


def test_quiet_libraries_log_warnings_only():
    code = (
        "setup_logging(quiet=['httpx'])\n"
        "logging.getLogger('httpx').info('a request')\n"
        "logging.getLogger('httpx').warning('a problem')\n"
    )
    out = _logged("INFO", code)
    assert "a request" not in out.stderr and "WARNING httpx: a problem" in out.stderr


@pytest.mark.parametrize(
    ("text", "level"),
    [("INFO", 20), ("warning", 20 + 10), (" Error ", 40), ("5", 5), ("loud", None), ("", None)],
)
def test_parse_level(text, level):
    assert parse_level(text) == level


def test_start_line():
    line = start_line("agent starts", "python -m cargohold engine --volume v")
    assert line.startswith(b"--- ") and line.endswith(
        b" agent starts: python -m cargohold engine --volume v\n"
    )


def _calls(path: pathlib.Path) -> set[str]:
    """Dotted names called or referenced in a module, e.g. ``logging.basicConfig``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names.add(f"{node.value.id}.{node.attr}")
    return names


def test_logging_is_set_up_in_one_place():
    setups = sorted(
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if "logging.basicConfig" in _calls(p) or "logging.StreamHandler" in _calls(p)
    )
    assert setups == ["cargohold/logs.py"]


@pytest.mark.parametrize("command", ["engine_cmd", "replica_cmd", "nbd_cmd"])
def test_the_daemons_commands_only_parse_arguments(command):
    """Event loops, signals and memory tuning belong to the daemon modules."""
    used = _calls(PACKAGE / "cli" / f"{command}.py")
    wiring = {n for n in used if n.split(".")[0] in {"uvloop", "signal", "memtune", "asyncio"}}
    if command == "replica_cmd":  # its client commands run one request in a loop of their own
        wiring.discard("asyncio.run")
    assert wiring == set()


def test_no_circle_of_imports_inside_the_replica_package():
    graph = grimp.build_graph("cargohold")
    modules = sorted(graph.find_descendants("cargohold.replica"))
    circles = [
        (a, b)
        for i, a in enumerate(modules)
        for b in modules[i + 1 :]
        if graph.find_shortest_chain(a, b) and graph.find_shortest_chain(b, a)
    ]
    assert circles == []


def test_an_engine_process_stays_lean_with_its_daemon_module():
    code = (
        "import sys\n"
        "import cargohold.cli.engine_cmd, cargohold.engine.daemon, cargohold.logs\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'typer', 'pydantic', 'numpy', 'rich', 'httpx'}))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]", out.stdout
