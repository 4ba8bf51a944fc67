"""The manager's read grants for clones (control/grant_signer.py) and how the agent hands
one to the engine (agent/engine_link.operation_request)."""

from __future__ import annotations

from cargohold.agent.engine_link import operation_request
from cargohold.control.grant_signer import GrantSigner
from cargohold.control.model import OperationAssignment, OperationKind
from cargohold.security import grants
from cargohold.security.identity import Identity, Role


def test_one_grant_per_operation_until_half_spent(pki):
    signer = GrantSigner(pki.dir("manager", "m1"), ttl=600)
    g = signer.clone("op-1", pki.cluster, "clone", "src", "s1")
    assert g is not None
    assert signer.clone("op-1", pki.cluster, "clone", "src", "s1") == g  # same revision
    assert signer.clone("op-2", pki.cluster, "clone", "src", "s1") != g
    with open(pki.dir("replica", "node-1") + "/ca.crt", "rb") as f:
        checked = grants.verify(g, f.read(), None, pki.cluster)
    assert (checked.engine, checked.volume, checked.snapshot) == ("clone", "src", "s1")
    assert checked.signer == Identity(pki.cluster, Role.MANAGER, "m1")
    signer._cache["op-1"] = (g, checked.not_before + 200)  # less than half its life left
    assert signer.clone("op-1", pki.cluster, "clone", "src", "s1") != g


def test_without_a_key_there_is_no_grant(tmp_path, caplog):
    assert GrantSigner(tmp_path).clone("op-1", "c", "clone", "src", "s1") is None
    assert "cannot make the read grant" in caplog.text


def test_the_agent_passes_the_grant_to_the_engine():
    op = OperationAssignment(
        id="op-1",
        kind=OperationKind.CLONE,
        volume="clone",
        args={"source": "src-r1@127.0.0.1:1", "snapshot": "s1", "grant": "chg1.a.b.c"},
    )
    assert operation_request(op)["grant"] == "chg1.a.b.c"
    op.args.pop("grant")
    assert "grant" not in operation_request(op)  # a plaintext manager's clone
