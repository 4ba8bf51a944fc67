"""cargohold.settings: arguments, then CARGOHOLD_* variables, then defaults; bad values are
ConfigErrors that name the field or variable and the rule; the engine's settings load
without pydantic (one engine per attached volume: memory)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from cargohold.errors import ConfigError
from cargohold.settings import EngineSettings, ReplicaServerSettings


def test_defaults_arguments_and_environment(monkeypatch):
    assert EngineSettings().replica_timeout == 5.0 and EngineSettings().local_reads is True
    monkeypatch.setenv("CARGOHOLD_ENGINE_REPLICA_TIMEOUT", "2.5")
    monkeypatch.setenv("CARGOHOLD_ENGINE_LOCAL_READS", "off")
    monkeypatch.setenv("CARGOHOLD_REPLICA_DISKS", "/a, /b")
    s = EngineSettings(min_replicas=2)
    assert (s.replica_timeout, s.local_reads, s.min_replicas) == (2.5, False, 2)
    assert EngineSettings(replica_timeout=1).replica_timeout == 1.0  # arguments win
    assert ReplicaServerSettings().disks == ["/a", "/b"]
    monkeypatch.setenv("CARGOHOLD_REPLICA_DISKS", '["/c"]')
    assert ReplicaServerSettings().disks == ["/c"]
    assert ReplicaServerSettings(disks=["/x"], port=0).port == 0


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"replica_timeout": 0}, "replica_timeout: 0.0 must be greater than 0"),
        ({"min_replicas": 0}, "min_replicas: 0 must be at least 1"),
        ({"scrub_window": 4097}, "scrub_window: 4097 must be a multiple of 4096"),
        ({"min_replicas": "two"}, "min_replicas: 'two'"),
        ({"local_reads": "maybe"}, "expected true or false"),
        ({"replica_timout": 1}, "unknown setting(s) replica_timout"),
        ({"min_replicas": True}, "expected an integer"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(given, says):
    with pytest.raises(ConfigError) as e:
        EngineSettings(**given)
    assert says in str(e.value)


def test_a_bad_variable_is_named(monkeypatch):
    monkeypatch.setenv("CARGOHOLD_REPLICA_PORT", "70000")
    with pytest.raises(ConfigError, match="CARGOHOLD_REPLICA_PORT: 70000 must be at most 65535"):
        ReplicaServerSettings()


def test_settings_are_frozen_comparable_and_picklable():
    s = EngineSettings(rebuild_bandwidth=5)
    with pytest.raises(AttributeError):
        s.rebuild_bandwidth = 6  # type: ignore[misc]
    assert s == EngineSettings(rebuild_bandwidth=5) and s != EngineSettings()
    assert pickle.loads(pickle.dumps(s)) == s  # the replica server hands them to workers
    assert "rebuild_bandwidth=5" in repr(s)


def test_an_engine_process_loads_neither_typer_nor_pydantic_nor_numpy():
    code = (
        "import sys; sys.argv = ['cargohold', 'engine', '--help']\n"
        "import cargohold.cli.engine_cmd, cargohold.engine.volume, cargohold.engine.control\n"
        "import cargohold.engine.scrubber, cargohold.frontend.nbd_server\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'pydantic', 'numpy', 'rich', 'httpx'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
