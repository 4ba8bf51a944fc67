"""``cargohold job create``'s options into the API's job spec (cli/job_cmd.py): durations,
retention, selector; bad input is a usage error (exit 2) before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from cargohold.cli import job_cmd
from cargohold.cli.main import app
from cargohold.errors import ConfigError


def test_durations() -> None:
    assert job_cmd.parse_duration("90", "--deadline") == 90.0
    assert job_cmd.parse_duration("30m", "--deadline") == 1800.0
    assert job_cmd.parse_duration("7d", "--keep-within") == 7 * 86400.0
    assert job_cmd.parse_duration("2w", "--keep-within") == 14 * 86400.0
    assert job_cmd.parse_duration("0", "--max-jitter", zero=True) == 0.0
    for bad in ("0", "soon", "-5m", "5y"):
        with pytest.raises(ConfigError, match="is not a duration"):
            job_cmd.parse_duration(bad, "--deadline")


def test_create_sends_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    class Client:
        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def create_job(self, spec: dict[str, Any]) -> dict[str, Any]:
            sent.append(spec)
            return spec

    monkeypatch.setattr(job_cmd.ManagerClient, "discover", lambda api, dir: Client())
    args = [
        "job", "create", "nightly", "--kind", "backup", "--target", "s3", "--cron",
        "30 2 * * *", "--volume", "a", "--volume", "b", "--selector", "app=db",
        "--keep-last", "3", "--keep-within", "7d", "--keep-monthly", "12", "--deadline", "4h",
        "-o", "json",
    ]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (spec,) = sent
    assert spec["retention"] == {"keep_last": 3, "keep_within": 7 * 86400.0, "monthly": 12}
    assert spec["selector"] == {"volumes": ["a", "b"], "labels": {"app": "db"}}
    assert (spec["kind"], spec["target"], spec["deadline"]) == ("backup", "s3", 4 * 3600.0)
    assert job_cmd.retention_text(spec["retention"]) == "last 3, within 7d, monthly 12"
    r = CliRunner().invoke(app, [*args[:-2], "--deadline", "whenever"])
    assert r.exit_code == 2 and len(sent) == 1
