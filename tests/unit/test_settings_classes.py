"""One test per settings class (cargohold.settings_doc.SETTINGS): its environment variable
overrides the default, an argument (a CLI flag) wins over the variable, and a bad value is a
ConfigError naming the variable and the rule, not a traceback from inside a daemon."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cargohold.agent.settings import AgentSettings
from cargohold.audit.settings import AuditSettings
from cargohold.cli.settings import CliSettings
from cargohold.control.settings import ClientSettings, ManagerSettings
from cargohold.csi.settings import CsiSettings
from cargohold.errors import ConfigError
from cargohold.launcher.settings import LauncherSettings
from cargohold.settings import (
    EngineSettings,
    NBDSettings,
    ProcessSettings,
    ReplicaServerSettings,
)
from cargohold.settings_doc import SETTINGS

# class, field, variable's text, value it gives, a bad text (None: any text is good), error
CASES = [
    (ProcessSettings, "log", "debug", "debug", None, ""),
    (ManagerSettings, "node_down_after", "600", 600.0, "-1", "must be greater than 0"),
    (ManagerSettings, "default_replicas", "2", 2, "three", "'three'"),
    (AgentSettings, "trash_grace", "60", 60.0, "a day", "'a day'"),
    (AgentSettings, "disks", "/mnt/a:1GiB,/mnt/b", [("/mnt/a", 1 << 30), ("/mnt/b", None)], "", ""),
    (AgentSettings, "replica_port", "9501", 9501, "70000", "must be at most 65535"),
    (EngineSettings, "min_replicas", "2", 2, "0", "must be at least 1"),
    (NBDSettings, "max_connections", "8", 8, "many", "expected an integer"),
    (ReplicaServerSettings, "workers", "4", 4, "65", "must be at most 64"),
    (CsiSettings, "timeout", "30", 30.0, "0", "must be greater than 0"),
    (CsiSettings, "controller", "true", True, "maybe", "expected true or false"),
    (ClientSettings, "api", "unix:/run/m.sock", "unix:/run/m.sock", None, ""),
    (LauncherSettings, "etcd", "/opt/etcd", "/opt/etcd", None, ""),
    (CliSettings, "manager_init", "yes", True, "perhaps", "expected true or false"),
    (AuditSettings, "page_size", "100", 100, "0", "must be at least 1"),
]


def test_every_settings_class_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(SETTINGS)


@pytest.mark.parametrize(
    ("cls", "name", "text", "value", "bad", "says"),
    CASES,
    ids=[f"{c[0].__name__}.{c[1]}" for c in CASES],
)
def test_the_variable_overrides_the_default_and_a_bad_one_is_named(
    monkeypatch: pytest.MonkeyPatch, cls, name, text, value, bad, says
) -> None:
    var = cls.variable(name)
    monkeypatch.delenv(var, raising=False)
    default = cls.defaults()[name]
    assert getattr(cls(), name) == default != value
    monkeypatch.setenv(var, text)
    assert getattr(cls(), name) == value
    assert getattr(cls(**{name: default}), name) == default  # the argument (a flag) wins
    if bad:
        monkeypatch.setenv(var, bad)
        with pytest.raises(ConfigError) as e:
            cls()
        assert str(e.value).startswith(f"{var}: ") and says in str(e.value), str(e.value)


def test_agent_disks_keep_a_colon_in_a_path_and_a_short_heartbeat_is_named(monkeypatch) -> None:
    monkeypatch.setenv("CARGOHOLD_AGENT_DISKS", "/mnt/a:lots:of")
    assert AgentSettings().disks == [("/mnt/a:lots:of", None)]  # a ':' in the path
    monkeypatch.setenv("CARGOHOLD_AGENT_HEARTBEAT", "0.01")
    with pytest.raises(ConfigError, match=r"CARGOHOLD_AGENT_HEARTBEAT: 0\.01 must be at least"):
        AgentSettings()


def test_optional_numbers_may_be_unset_or_empty(monkeypatch) -> None:
    monkeypatch.setenv("CARGOHOLD_AGENT_REPLICA_PORT", "")
    assert AgentSettings().replica_port is None
    assert AgentSettings(replica_port=None).replica_port is None


# --- the CLI: flags win over variables, a bad variable is one line and exit 2 -----------
runner = CliRunner()


def _app():
    from cargohold.cli.main import app

    return app


def test_agent_flags_win_and_variables_fill_the_rest(monkeypatch, tmp_path) -> None:
    import cargohold.agent.agent as agent_mod

    seen: list[AgentSettings] = []

    class Stop(Exception):
        pass

    def fake_agent(config):
        seen.append(config)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(agent_mod, "Agent", fake_agent)
    monkeypatch.setenv("CARGOHOLD_AGENT_TRASH_GRACE", "60")
    monkeypatch.setenv("CARGOHOLD_AGENT_ZONE", "zone-env")
    monkeypatch.setenv("CARGOHOLD_AGENT_ADDRESS", "127.0.0.9")
    args = ["agent", "--node", "n1", "--api", "unix:/x", "--dir", str(tmp_path)]
    result = runner.invoke(_app(), [*args, "--zone", "zone-flag"])
    assert result.exit_code == 2 and "stopped by the test" in result.output
    (config,) = seen
    assert (config.zone, config.trash_grace, config.address) == ("zone-flag", 60.0, "127.0.0.9")
    monkeypatch.setenv("CARGOHOLD_AGENT_TRASH_GRACE", "a day")
    result = runner.invoke(_app(), args)
    assert result.exit_code == 2
    assert "CARGOHOLD_AGENT_TRASH_GRACE: 'a day'" in result.output
    assert "Traceback" not in result.output and len(seen) == 1
    monkeypatch.delenv("CARGOHOLD_AGENT_TRASH_GRACE")
    monkeypatch.delenv("CARGOHOLD_AGENT_ADDRESS")
    result = runner.invoke(_app(), args)
    assert result.exit_code == 2 and "give --address or CARGOHOLD_AGENT_ADDRESS" in result.output


def test_csi_bad_variable_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("CARGOHOLD_CSI_TIMEOUT", "soon")
    args = ["csi", "--endpoint", "unix:///tmp/x.sock", "--node-id", "n1", "--node"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 2
    assert "error: CARGOHOLD_CSI_TIMEOUT: 'soon'" in result.output
    monkeypatch.delenv("CARGOHOLD_CSI_TIMEOUT")
    result = runner.invoke(_app(), ["csi", "--node-id", "n1", "--node"])
    assert result.exit_code == 2 and "give --endpoint or CARGOHOLD_CSI_ENDPOINT" in result.output


def test_manager_bad_variable_is_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CARGOHOLD_MANAGER_NODE_DOWN_AFTER", "soon")
    args = [
        "manager",
        "--state",
        f"sqlite:{tmp_path}/s.db",
        "--unix",
        str(tmp_path / "s"),
        "--plaintext",
    ]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 2
    assert "CARGOHOLD_MANAGER_NODE_DOWN_AFTER: 'soon'" in result.output
