"""Sizes the Kubernetes way (issue 23, item 4): one parser (cargohold.settings.parse_size,
re-exported by cli/units.py) for every size the CLI, the agent's --disk and settings read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cargohold.agent.settings import parse_disk
from cargohold.cli.main import app
from cargohold.cli.units import format_size, parse_size, positive_size
from cargohold.errors import ConfigError
from cargohold.settings import BINARY_UNITS, MAX_SIZE

Ki, Mi, Gi, Ti = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("10Gi", 10 * Gi),
        ("10GiB", 10 * Gi),
        ("10gib", 10 * Gi),
        ("10Ki", 10 * Ki),
        ("512Mi", 512 * Mi),
        ("2Ti", 2 * Ti),
        ("1.5Gi", 3 * Gi // 2),
        ("0.5Ki", 512),
        ("4096", 4096),
        ("4096B", 4096),
        (" 10 Gi ", 10 * Gi),
        ("1e3", 1000),
        ("0", 0),
    ],
)
def test_kubernetes_spellings_and_bytes(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["10G", "10GB", "10gb", "10M", "10MB", "10k", "10K", "1T", "1TB"])
def test_ambiguous_units_are_refused_with_a_hint_never_read_as_binary(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_size(text, "--size")
    msg = str(e.value)
    assert msg.startswith("--size: ") and "ambiguous" in msg
    unit = text.rstrip("bB").upper()[-1]
    assert f"{text.rstrip('bB')[:-1]}{unit}i" in msg  # the hint: 10Gi


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("inf", "cannot read"),
        ("nan", "cannot read"),
        ("Infinity", "cannot read"),
        ("-1Gi", "negative"),
        ("-5", "negative"),
        ("", "cannot read"),
        ("lots", "cannot read"),
        ("1.3", "whole number"),
        ("3Zi", "unknown unit"),
        ("8Ei", "too large"),
        ("1e999999999", "too large"),
        ("1Gi2", "cannot read"),
    ],
)
def test_garbage_is_one_line_naming_the_option(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_size(text, "--size")
    assert str(e.value).startswith("--size: ") and why in str(e.value)
    assert "\n" not in str(e.value)


def test_positive_size_names_the_option() -> None:
    with pytest.raises(ConfigError, match="--capacity must be more than 0 bytes"):
        positive_size("0Gi", "--capacity")


@given(st.integers(min_value=0, max_value=MAX_SIZE - 1))
def test_format_then_parse_is_the_identity(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(
    st.integers(min_value=0, max_value=1 << 20),
    st.sampled_from(sorted(BINARY_UNITS)),
    st.sampled_from(["", "B"]),
)
def test_number_and_unit(k: int, unit: str, b: str) -> None:
    n = k * BINARY_UNITS[unit]
    if n >= MAX_SIZE:
        with pytest.raises(ConfigError):
            parse_size(f"{k}{unit}{b}")
    else:
        assert parse_size(f"{k}{unit}{b}") == n
        assert parse_size(format_size(n)) == n


def test_format_size_is_short() -> None:
    assert format_size(10 * Gi) == "10Gi"
    assert format_size(1536) == "1.5Ki"
    assert format_size(1000) == "1000"


def test_disk_capacity_that_looks_like_a_size_is_never_taken_for_a_path() -> None:
    assert parse_disk("/mnt/ssd0:500Gi") == ("/mnt/ssd0", 500 * Gi)
    assert parse_disk("/mnt/a:b") == ("/mnt/a:b", None)
    with pytest.raises(ConfigError, match="ambiguous"):
        parse_disk("/mnt/ssd0:500G")


@pytest.mark.parametrize("size", ["inf", "nan", "-1", "10G", "0"])
def test_the_cli_says_one_line_and_exits_2_without_a_traceback(size: str) -> None:
    r = CliRunner().invoke(
        app, ["volume", "create", "db", "--size", size, "--api", "http://127.0.0.1:9"]
    )
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    assert r.stderr.count("\n") == 1 and "--size" in r.stderr
