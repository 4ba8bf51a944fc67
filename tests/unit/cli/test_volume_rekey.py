"""``volume rekey`` (cli/volume_key_cmd.py) and the encryption line of ``volume get``
(cli/volume_cmd.py): the options it takes together, the body it sends, and how the data-key
generations and a rotation's progress read (never a key)."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from cargohold.cli.main import app
from cargohold.cli.volume_cmd import encryption_text
from cargohold.control.client import ManagerClient

ENC = {"id": "ab" * 16, "provider": "file", "key_ref": "default", "shredded": False}


def test_the_options_it_takes_together() -> None:
    r = CliRunner().invoke(app, ["volume", "rekey", "v", "--dir", "/nonexistent"])
    assert r.exit_code != 0 and "--data-key" in r.output
    r = CliRunner().invoke(
        app, ["volume", "rekey", "v", "--key", "a", "--kms-key", "b", "--dir", "/nonexistent"]
    )
    assert r.exit_code != 0 and "at most one" in r.output


def test_the_body_it_sends(monkeypatch: Any) -> None:
    sent: list[tuple[str, Any]] = []
    monkeypatch.setattr(ManagerClient, "_post", lambda self, path, body: sent.append((path, body)))
    c = ManagerClient.__new__(ManagerClient)
    c.rekey("v", data_key=True)
    c.rekey("v", key="k2", data_key=True)
    c.rekey("v", kms_key="alias/x")
    assert [b for _, b in sent] == [
        {"data_key": True},
        {"key": "k2", "data_key": True},
        {"kms_key": "alias/x"},
    ]


def test_the_encryption_line_shows_generations_and_the_rotation() -> None:
    assert encryption_text({**ENC, "generations": [{"generation": 1}]}) == (
        f"file:default, id {'ab' * 16}"
    )
    running = {
        **ENC,
        "generations": [
            {"generation": 2, "kept_for": ""},
            {"generation": 1, "kept_for": "snapshot nightly"},
        ],
        "rotation": {
            "state": "running",
            "generation": 2,
            "progress": 0.4,
            "engine_state": "running",
        },
    }
    text = encryption_text(running)
    assert "data key generations 2; 1 for snapshot nightly" in text
    assert text.endswith("rotation to generation 2: 40% (running)")
    waiting = {**running, "rotation": {"state": "waiting", "generation": 2}}
    assert "waiting (runs at the next attach)" in encryption_text(waiting)
    done = {
        **ENC,
        "generations": [{"generation": 2}],
        "rotation": {"state": "finished", "generation": 2},
    }
    assert encryption_text(done).endswith("data key generations 2, rotated to generation 2")
