"""docs/configuration.md's table of environment variables is generated from the settings
classes (cargohold.settings_doc); this fails when the checked-in table is stale, and when
cargohold reads a CARGOHOLD_* variable that no settings class declares."""

from __future__ import annotations

import re
from pathlib import Path

from cargohold import logs
from cargohold.settings import ProcessSettings
from cargohold.settings_doc import SETTINGS, render

ROOT = Path(__file__).resolve().parents[2]
NOT_SETTINGS = {
    "CARGOHOLD_WORKER",  # set by the replica server for its workers
    # a backup target's S3 credentials for the CLI (secrets: docs/backups.md, never settings)
    "CARGOHOLD_BACKUP_ACCESS_KEY",
    "CARGOHOLD_BACKUP_SECRET_KEY",
}
NOT_SETTINGS_PREFIXES = ("CARGOHOLD_FAULT_PAUSE_",)  # a test hook, documented apart


def test_the_checked_in_configuration_table_is_current() -> None:
    checked_in = (ROOT / "docs/configuration.md").read_text()
    assert render(checked_in) == checked_in, (
        "docs/configuration.md is stale: python -m cargohold.settings_doc docs/configuration.md"
    )


def test_every_variable_is_declared_once_with_a_description() -> None:
    seen: dict[str, str] = {}
    for cls in SETTINGS:
        assert cls.component, cls.__name__
        for var, _kind, _default, description in cls.variables():
            assert var.startswith("CARGOHOLD_") and var not in seen, (var, seen.get(var))
            assert description, var
            seen[var] = cls.__name__


def test_every_variable_the_code_names_is_in_the_table() -> None:
    declared = {var for cls in SETTINGS for var, *_ in cls.variables()}
    named: set[str] = set()
    for path in (ROOT / "cargohold").rglob("*.py"):
        named |= set(re.findall(r"\"(CARGOHOLD_[A-Z_]*[A-Z])\"", path.read_text()))
    named = {n for n in named if n not in NOT_SETTINGS and not n.startswith(NOT_SETTINGS_PREFIXES)}
    assert named <= declared, sorted(named - declared)


def test_the_process_wide_variables_are_the_ones_logs_and_memtune_read() -> None:
    assert ProcessSettings.variable("log") == logs.LOG_ENV
    assert ProcessSettings.defaults()["log"] == logs.DEFAULT_LEVEL
    memtune = (ROOT / "cargohold/memtune.py").read_text()
    assert f'"{ProcessSettings.variable("malloc_tune")}", "1"' in memtune
    assert f'"{ProcessSettings.variable("gc_default")}", "0"' in memtune
