"""The agent's side of joining (agent/enrollment.py) and the join-token command's
parsing (cli/join_cmd.py): the join file, when a certificate is due, the --ttl words."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from cargohold.agent import enrollment
from cargohold.cli.join_cmd import parse_ttl, write_join_file
from cargohold.errors import ConfigError
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role

CID = "c-" + "0" * 32


def test_the_join_file_round_trip(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", CID)
    f = tmp_path / "n.join"
    write_join_file(str(f), "chk_0123456789ab_" + "A" * 43, ca.trust_pem().decode())
    assert f.stat().st_mode & 0o777 == 0o600
    token, trust = enrollment.read_join_file(str(f))
    assert token == "chk_0123456789ab_" + "A" * 43
    assert trust.strip() == ca.trust_pem().strip()
    enrollment._trust_context(trust)  # loads


@pytest.mark.parametrize("text", ["", "hello\n", "-----BEGIN CERTIFICATE-----\n"])
def test_a_join_file_without_a_token_is_refused(tmp_path: Path, text: str) -> None:
    f = tmp_path / "bad"
    f.write_text(text)
    with pytest.raises(ConfigError, match="no join token"):
        enrollment.read_join_file(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        enrollment.read_join_file(str(tmp_path / "missing"))


def test_a_certificate_is_due_at_half_its_nominal_life(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", CID)
    ident = Identity(CID, Role.AGENT, "n1")
    ca.issue(ident, lifetime=dt.timedelta(hours=24)).write(tmp_path / "fresh")
    assert not enrollment.due(tmp_path / "fresh" / "tls.crt")
    ca.issue(ident, lifetime=dt.timedelta(seconds=600)).write(tmp_path / "short")
    assert not enrollment.due(tmp_path / "short" / "tls.crt")  # 5 minutes back-dated: not half
    assert enrollment.due(tmp_path / "short" / "tls.crt", at=1.0)  # some of it is gone
    ca.issue(ident, lifetime=dt.timedelta(seconds=1)).write(tmp_path / "gone")
    time.sleep(1.2)
    assert enrollment.due(tmp_path / "gone" / "tls.crt")
    assert enrollment.due(tmp_path / "nothing" / "tls.crt")


def test_ttl_words() -> None:
    assert [parse_ttl(t) for t in ("90", "90s", "30m", "1h", "7d", "1.5h")] == [
        90,
        90,
        1800,
        3600,
        7 * 86400,
        5400,
    ]
    for bad in ("", "0", "-1h", "soon", "1w"):
        with pytest.raises(ConfigError):
            parse_ttl(bad)
