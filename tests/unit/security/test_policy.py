"""Identities, tokens and the authorization rules (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.errors import InvalidArgument, Unauthenticated
from cargohold.security import policy, tokens
from cargohold.security.identity import Identity, Role, from_peercert
from cargohold.security.policy import Permission

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)


@given(names, st.sampled_from(list(Role)), names, st.none() | names)
def test_identity_uri_round_trip(cluster, role, name, tenant):
    ident = Identity(cluster, role, name, tenant)
    assert Identity.from_uri(ident.uri) == ident
    assert from_peercert({"subjectAltName": [("URI", ident.uri), ("DNS", "x")]}) == ident


@given(st.text(max_size=80))
def test_garbage_uris_are_refused_cleanly(text):
    try:
        Identity.from_uri(text)
    except InvalidArgument:
        pass


def test_peercert_without_one_identity_is_nobody():
    a = Identity("c", Role.AGENT, "n1").uri
    b = Identity("c", Role.AGENT, "n2").uri
    assert from_peercert(None) is None
    assert from_peercert({"subjectAltName": [("DNS", "n1")]}) is None
    assert from_peercert({"subjectAltName": [("URI", a), ("URI", b)]}) is None
    assert from_peercert({"subjectAltName": [("URI", "cargohold://c/wizard/x")]}) is None
    with pytest.raises(InvalidArgument):
        Identity("c", Role.AGENT, "../etc")


def test_tokens():
    t = tokens.new_token()
    assert tokens.token_id(t.token) == t.id
    assert tokens.matches(t.token, t.digest)
    assert not tokens.matches(t.token + "x", t.digest)
    assert t.token not in t.digest
    for bad in ("", "Bearer x", "chk_123", t.token[:-1]):
        with pytest.raises(Unauthenticated):
            tokens.token_id(bad)


def test_roles():
    admin = Identity("c", Role.ADMIN, "alice")
    reader = Identity("c", Role.READER, "bob")
    csi = Identity("c", Role.CSI, "k8s-a", tenant="team-a")
    agent = Identity("c", Role.AGENT, "node-1")
    assert all(policy.allowed(admin, p) for p in Permission if p is not Permission.HEARTBEAT)
    assert not policy.allowed(admin, Permission.HEARTBEAT)
    assert policy.allowed(reader, Permission.VOLUMES_READ)
    assert not policy.allowed(reader, Permission.VOLUMES_WRITE)
    assert policy.allowed(csi, Permission.VOLUMES_ATTACH)
    assert policy.allowed(csi, Permission.NODES_READ)  # topology and attachment need nodes
    tenant_reader = Identity("c", Role.READER, "carol", tenant="team-a")
    assert not policy.allowed(tenant_reader, Permission.NODES_READ)  # people of a tenant do not
    assert not policy.allowed(csi, Permission.TENANTS)
    assert policy.allowed(agent, Permission.HEARTBEAT)
    assert not policy.allowed(agent, Permission.VOLUMES_WRITE)
    assert policy.sees(csi, "team-a") and not policy.sees(csi, "team-b")
    assert not policy.sees(csi, None)
    assert policy.sees(admin, "team-b")


def test_replica_wire_rules():
    eng = Identity("c", Role.ENGINE, "vol-a")
    agent = Identity("c", Role.AGENT, "node-1")
    admin = Identity("c", Role.ADMIN, "alice")
    assert policy.replica_op_allowed(eng, "OPEN", "vol-a")
    assert not policy.replica_op_allowed(eng, "OPEN", "vol-b")
    assert not policy.replica_op_allowed(eng, "DELETE", "vol-a")
    assert not policy.replica_op_allowed(eng, "CREATE", "vol-a")
    assert policy.replica_op_allowed(agent, "DELETE", "vol-b")
    assert not policy.replica_op_allowed(admin, "OPEN", "vol-a")  # people go through the API
    assert policy.lists_replica(eng, "vol-a") and not policy.lists_replica(eng, "vol-b")
