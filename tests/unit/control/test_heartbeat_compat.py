"""The heartbeat exchange across adjacent versions (cargohold/control/model.py ``Message``):
an agent runs what it understands of a newer manager's assignments, and a manager takes a
newer agent's heartbeat, instead of rejecting every message that carries a field it does
not know (a soak with a manager restarted on newer code than its agents found the agents
skipping every engine assignment). Stored records and API requests stay strict."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cargohold.agent.manager_link import Complaints, parse_assignments
from cargohold.control.model import EngineReport, Heartbeat, Volume
from cargohold.control.service import VolumeCreate

ENGINE = {
    "volume": "data",
    "epoch": 2,
    "size_bytes": 1 << 30,
    "replicas": ["data-r1@10.0.0.1:9500"],
    "local": "data-r1",
    "purpose": "attach",
}


def test_an_agent_runs_an_assignment_with_fields_it_does_not_know() -> None:
    say = Complaints()
    a = parse_assignments(
        {
            "engines": [{**ENGINE, "a_field_of_a_newer_manager": {"x": 1}}],
            "replicas": [
                {"id": "data-r1", "volume": "data", "size_bytes": 1, "disk_path": "/d", "new": 1}
            ],
            "heartbeat_interval": 2.0,
            "something_else": True,
        },
        say,
    )
    assert [e.volume for e in a.engines] == ["data"] and a.engines[0].epoch == 2
    assert [r.id for r in a.replicas] == ["data-r1"]
    assert not say.said  # nothing skipped, nothing complained about


def test_a_wrong_known_field_is_still_skipped_and_named() -> None:
    say = Complaints()
    a = parse_assignments({"engines": [{**ENGINE, "epoch": "two"}]}, say)
    assert a.engines == []
    assert any("epoch" in s for s in say.said)


def test_a_manager_takes_a_heartbeat_with_fields_it_does_not_know() -> None:
    hb = Heartbeat.model_validate(
        {
            "replica_port": 9500,
            "engines": [{"volume": "data", "epoch": 2, "running": True, "gpu": "none"}],
            "from_the_future": [1, 2],
        }
    )
    assert hb.engines == [EngineReport(volume="data", epoch=2, running=True)]


def test_records_and_requests_stay_strict() -> None:
    with pytest.raises(ValidationError):
        VolumeCreate.model_validate({"name": "data", "size_bytes": 1 << 30, "replcas": 3})
    with pytest.raises(ValidationError):
        Volume.model_validate({"name": "data", "size_bytes": 1, "replicas_wanted": 1, "x": 1})
