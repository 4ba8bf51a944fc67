"""The QoS options of ``volume create`` / ``volume update`` (cli/volume_qos.py): read as the
CSI parameters are, a merge patch (none/0 removes a limit), errors that name the option;
``volume get``'s qos line."""

from __future__ import annotations

import sys

import pytest

from cargohold.cli.volume_qos import qos_from_options, qos_text
from cargohold.errors import ConfigError


def test_options_become_a_merge_patch() -> None:
    got = qos_from_options("10k", None, None, "100Mi", None, "none", "2s")
    assert got == {
        "max_iops": 10_000,
        "max_bandwidth": 100 << 20,
        "max_write_bandwidth": None,
        "burst_seconds": 2.0,
    }
    assert qos_from_options(*[None] * 7) == {}


def test_a_bad_option_is_named() -> None:
    with pytest.raises(ConfigError, match=r"--max-read-iops: max_read_iops='3' is not valid"):
        qos_from_options(None, "3", None, None, None, None, None)


def test_the_qos_line_shows_limits_changes_and_throttling() -> None:
    assert qos_text(None) == ""
    q = {
        "limits": {"max_iops": 1000, "max_bandwidth": None},
        "applied": {"max_iops": 500},
        "throttled_requests_total": 12,
        "throttled_seconds_total": 0.4,
    }
    text = qos_text(q)
    assert text.startswith("max_iops=1000 (engine applies max_iops=500: changing)")
    assert "throttled 12 requests (0.4 s waited)" in text
    assert qos_text({"limits": {}, "applied": None}) == "unlimited"


def test_the_qos_line_shows_a_fair_share_and_the_weight_options() -> None:
    q = {
        "limits": {"weight": 300},
        "applied": {"weight": 300, "max_iops": 300},
        "fair_iops": 300,
        "throttled_requests_total": 5,
        "throttled_seconds_total": 0.1,
    }
    text = qos_text(q)
    assert text.startswith("weight=300 (node busy: its fair share is 300 IOPS);"), text
    assert "changing" not in text
    got = qos_from_options(*[None] * 7, "300", "1k")
    assert got == {"weight": 300, "min_iops": 1000}
    with pytest.raises(ConfigError, match=r"--weight: weight='2000' is not valid: use an integer"):
        qos_from_options(*[None] * 7, "2000", None)
    assert qos_from_options(*[None] * 7, "none", None) == {"weight": None}


def test_the_qos_line_shows_a_bandwidth_fair_share() -> None:
    q = {
        "limits": {"weight": 300},
        "applied": {"weight": 300, "max_bandwidth": 50 << 20},
        "fair_bandwidth": 50 << 20,
        "throttled_requests_total": 5,
        "throttled_seconds_total": 0.1,
    }
    text = qos_text(q)
    assert "(node bandwidth busy: its fair share is 50Mi/s)" in text and "changing" not in text


def _options(command: str) -> dict[str, str]:
    """The QoS options of a ``cargohold volume`` command, as click sees them: flag -> help."""
    import typer.main

    from cargohold.cli.main import app

    group = typer.main.get_command(app)
    cmd = group.commands["volume"].commands[command]  # type: ignore[attr-defined]
    return {
        p.opts[0]: p.help or "" for p in cmd.params if getattr(p, "rich_help_panel", None) == "QoS"
    }


def test_create_and_update_take_the_same_qos_options_from_one_definition() -> None:
    from cargohold.qos_limits import LIMITS

    create, update = _options("create"), _options("update")
    assert create == update
    assert list(create) == [lim.flag for lim in LIMITS]
    assert (
        "100Mi = 100 MiB/s" in create["--max-bandwidth"]
        and "200M = 200 MB/s" in create["--max-bandwidth"]
    )


def test_the_qos_options_reach_the_command_as_one_merge_patch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from cargohold.cli.main import app  # first: it registers every command module

    cmd = sys.modules["cargohold.cli.volume_qos_cmd"]

    seen: dict = {}

    class Client:
        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            return False

        def update_volume(self, name, change):  # type: ignore[no-untyped-def]
            seen.update(name=name, change=change)
            return {"name": name, "qos": {"limits": {}, "applied": None}}

    monkeypatch.setattr(cmd.ManagerClient, "discover", lambda api, dir: Client())
    r = CliRunner().invoke(
        app,
        ["volume", "update", "db", "--max-bandwidth", "200M", "--weight", "50", "--burst", "none"],
    )
    assert r.exit_code == 0, r.output
    assert seen == {
        "name": "db",
        "change": {"max_bandwidth": 200_000_000, "burst_seconds": None, "weight": 50},
    }
    r = CliRunner().invoke(app, ["volume", "update", "db", "--max-bandwidth", "500k"])
    assert r.exit_code != 0 and "read as 500,000 bytes/s" in r.output, r.output


def test_the_agent_takes_a_node_bandwidth_as_a_quantity() -> None:
    from typer.testing import CliRunner

    from cargohold.cli.main import app

    r = CliRunner().invoke(app, ["agent", "--help"])
    assert r.exit_code == 0 and "--node-bandwidth" in r.output and "--node " in r.output, r.output
    r = CliRunner().invoke(app, ["agent", "--node", "n1", "--node-bandwidth", "fast"])
    assert r.exit_code == 2 and "not a bandwidth" in r.output, r.output


def test_the_qos_line_shows_the_engines_cpu_priority_only_when_lowered() -> None:
    q = {"limits": {"weight": 10}, "applied": {}, "nice": 10}
    assert "engine CPU priority: nice 10" in qos_text(q)
    assert "nice" not in qos_text({"limits": {}, "applied": {}, "nice": 0})
