"""Numbers and tables the docs state and the code owns: a doc that drifts fails here.

Each test names the doc and the code it compares; fix whichever is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

from cargohold.control.settings import ManagerSettings
from cargohold.errors import STATUS_TO_ERROR

ROOT = Path(__file__).resolve().parents[2]


def _read(rel: str) -> str:
    return (ROOT / rel).read_text()


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading``."""
    after = text[text.index(heading) :]
    rows = []
    started = False
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header row


def test_replica_wire_status_table_matches_the_error_classes():
    """docs/formats/replica-wire.md "Status codes" against errors.STATUS_TO_ERROR."""
    rows = _table_rows(_read("docs/formats/replica-wire.md"), "## Status codes")
    doc = {int(code): cls.strip("`") for code, cls, *_ in rows if code != "0"}
    code = {status: cls.__name__ for status, cls in STATUS_TO_ERROR.items()}
    assert doc == code


def test_every_status_maps_back_to_the_class_that_sent_it():
    for status, cls in STATUS_TO_ERROR.items():
        assert cls.status == status


def test_manager_settings_table_matches_the_settings():
    """docs/control-plane.md "Manager settings" against control/settings.py: every setting
    documented once, with its default."""
    rows = _table_rows(_read("docs/control-plane.md"), "## Manager settings")
    doc = {var.strip("`"): default.split()[0] for var, default, *_ in rows}  # "604800.0 (7 days)"
    fields = ManagerSettings.defaults()
    code = {f"CARGOHOLD_MANAGER_{name.upper()}": str(d) for name, d in fields.items()}
    assert doc == code


def test_setting_values_quoted_in_prose_are_the_defaults():
    """Every "`setting` (N s)" in the docs about a manager setting gives its default."""
    defaults = ManagerSettings.defaults()
    seen = 0
    for path in sorted((ROOT / "docs").rglob("*.md")):
        for name, value in re.findall(r"`([a-z_]+)` \(([0-9.]+) s\)", path.read_text()):
            if name in defaults:
                seen += 1
                assert float(value) == defaults[name], f"{path.name}: {name} ({value} s)"
    assert seen >= 3  # the pattern still finds what it is meant to


def test_the_heartbeat_interval_in_the_architecture_picture():
    m = re.search(r"heartbeat every ([0-9.]+) s", _read("docs/architecture.md"))
    assert m is not None
    assert float(m.group(1)) == ManagerSettings.defaults()["heartbeat_interval"]


def test_readme_counts_the_fault_scenarios():
    from tests.e2e.fault_matrix import SCENARIOS

    m = re.search(r"fault matrix of (\d+) scenarios", " ".join(_read("README.md").split()))
    assert m is not None, "README no longer says how many fault scenarios there are"
    assert int(m.group(1)) == len(SCENARIOS)
