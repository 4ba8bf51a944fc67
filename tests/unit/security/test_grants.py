"""Read grants (security/grants.py) and the policy around them (policy.grant_allows): a
grant made by a manager of the cluster verifies; an expired, forged, tampered, foreign,
revoked or non-manager one is refused with a reason; a grant never allows a write."""

from __future__ import annotations

import time

import pytest

from cargohold.errors import InvalidArgument, PermissionDenied
from cargohold.security import grants, policy
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role

CLUSTER = "c-grants"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority.create(tmp_path_factory.mktemp("grants") / "ca", CLUSTER)


def make(ca, role=Role.MANAGER, name="m1", **kw):  # type: ignore[no-untyped-def]
    issued = ca.issue(Identity(ca.cluster, role, name))
    args = {"engine": "clone", "volume": "src", "snapshot": "s1", **kw}
    return grants.issue(
        issued.key,
        issued.cert,
        ca.cluster,
        args["engine"],
        args["volume"],
        args["snapshot"],
        ttl=kw.get("ttl", 600),
        now=kw.get("now"),
    )


def check(ca, token, **kw):  # type: ignore[no-untyped-def]
    return grants.verify(
        token, ca.trust_pem(), ca.crl_pem(), kw.get("cluster", CLUSTER), kw.get("now")
    )


def test_a_managers_grant_verifies_and_says_what_it_grants(ca):
    g = check(ca, make(ca))
    assert (g.cluster, g.engine, g.volume, g.snapshot) == (CLUSTER, "clone", "src", "s1")
    assert g.signer == Identity(CLUSTER, Role.MANAGER, "m1")
    assert g.not_after - g.not_before == 600


def test_an_expired_grant_is_refused(ca):
    old = make(ca, now=time.time() - 7200, ttl=3600)
    with pytest.raises(PermissionDenied, match="expired"):
        check(ca, old)
    with pytest.raises(PermissionDenied, match="expired"):  # the same grant later on
        check(ca, make(ca, ttl=60), now=time.time() + 120)


def test_forged_and_tampered_grants_are_refused(ca):
    other = CertificateAuthority.create(ca.dir.parent / "other-ca", CLUSTER)  # same cluster name
    with pytest.raises(PermissionDenied, match="no trusted CA"):
        check(ca, make(other))
    head, payload, sig, signer = make(ca).split(".")
    forged_payload = grants._b64(
        grants._unb64(payload, "p").replace(b'"volume": "src"', b'"volume": "vip"')
    )
    with pytest.raises(PermissionDenied, match="signature"):
        check(ca, ".".join([head, forged_payload, sig, signer]))
    # a valid signature of another grant on this payload
    _, _, sig2, _ = make(ca, volume="other").split(".")
    with pytest.raises(PermissionDenied, match="signature"):
        check(ca, ".".join([head, payload, sig2, signer]))


def test_only_a_manager_of_this_cluster_signs_grants(ca):
    for role, name in ((Role.ENGINE, "clone"), (Role.AGENT, "node-1"), (Role.ADMIN, "root")):
        with pytest.raises(PermissionDenied, match="not a manager"):
            check(ca, make(ca, role=role, name=name))
    with pytest.raises(PermissionDenied):
        check(ca, make(ca), cluster="another-cluster")


def test_a_revoked_managers_grant_is_refused(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "ca", CLUSTER)
    issued = ca.issue(Identity(CLUSTER, Role.MANAGER, "gone"))
    token = grants.issue(issued.key, issued.cert, CLUSTER, "clone", "src", "s1")
    assert check(ca, token).signer.name == "gone"  # type: ignore[union-attr]
    ca.revoke(issued.serial, "manager removed")
    with pytest.raises(PermissionDenied, match="revoked"):
        check(ca, token)


@pytest.mark.parametrize(
    "token",
    [
        None,
        17,
        "",
        "chg1",
        "chg1.a.b",
        "chg2.a.b.c",
        "chg1.!!!.b.c",
        "x" * 9000,
        "chg1." + grants._b64(b"[1]") + ".AA.AA",
        "chg1." + grants._b64(b'{"v": 9}') + ".AA.AA",
    ],
)
def test_malformed_grants_are_bad_requests(ca, token):
    with pytest.raises(InvalidArgument, match="grant"):
        check(ca, token)


def test_the_policy_a_grant_allows_reads_of_its_snapshot_and_nothing_else(ca):
    g = check(ca, make(ca))
    clone = Identity(CLUSTER, Role.ENGINE, "clone")
    for op in ("HELLO", "LIST", "OPEN", "CLOSE", "INFO", "SNAPSHOT_LIST"):
        assert policy.grant_allows(clone, g, op, "src"), op
    for op in ("EXPORT", "EXTENTS", "READ"):
        assert policy.grant_allows(clone, g, op, "src", "s1"), op
        assert not policy.grant_allows(clone, g, op, "src", None), op  # the live head
        assert not policy.grant_allows(clone, g, op, "src", "s2"), op
    never = ("WRITE", "TRIM", "WRITE_ZEROES", "FLUSH", "SNAPSHOT_CREATE", "SNAPSHOT_DELETE",
             "SNAPSHOT_REVERT", "CREATE", "DELETE", "IMPORT", "REPAIR", "MARK_CURRENT",
             "EXPAND", "SCRUB", "CHANGED", "CHECKSUMS", "STATS")  # fmt: skip
    for op in never:
        assert not policy.grant_allows(clone, g, op, "src", "s1"), op
    assert not policy.grant_allows(clone, g, "OPEN", "another")  # another volume
    for who in (
        Identity(CLUSTER, Role.ENGINE, "someone-else"),
        Identity(CLUSTER, Role.ENGINE, "clone", "tenant-a"),
        Identity("c-other", Role.ENGINE, "clone"),
        Identity(CLUSTER, Role.REPLICA, "clone"),
    ):
        assert not policy.grant_allows(who, g, "OPEN", "src"), who
    assert policy.lists_replica(clone, "src", g) and not policy.lists_replica(clone, "src")
    assert not policy.lists_replica(clone, "another", g)


def test_the_checked_in_sample_decodes_and_verifies():
    """docs/formats/replica-wire.md, "Read grants": the sample and its CA."""
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "data"
    token = (data / "read-grant-sample.txt").read_text().strip()
    prefix, payload, _, _ = token.split(".")
    fields = grants._payload(grants._unb64(payload, "payload"))
    assert prefix == "chg1" and fields["v"] == 1 and fields["access"] == "read"
    assert fields["exp"] - fields["nbf"] == 3600
    g = grants.verify(
        token,
        (data / "read-grant-sample-ca.crt").read_bytes(),
        None,
        "c-sample",
        now=fields["nbf"] + 1,
    )
    assert (g.engine, g.volume, g.snapshot) == ("pvc-clone", "pvc-source", "clone-pvc-clone-1a2b")
    assert g.signer == Identity("c-sample", Role.MANAGER, "manager-1")
    with pytest.raises(PermissionDenied, match="expired"):  # an hour later
        trust = (data / "read-grant-sample-ca.crt").read_bytes()
        grants.verify(token, trust, None, "c-sample", now=fields["exp"] + 1)
