"""The QoS options of ``volume create`` / ``volume update`` (cli/volume_qos.py): read as the
CSI parameters are, a merge patch (none/0 removes a limit), errors that name the option;
``volume get``'s qos line."""

from __future__ import annotations

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
