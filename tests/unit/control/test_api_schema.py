"""Live answers of the manager's API against its published OpenAPI schema.

A real app (cargohold/control/api.py) over the in-memory state store, driven through the
simulated cluster (sim.py) into the states scripts see — volumes detached, attached with
an engine and RW replicas, degraded with a node down, being deleted, released; snapshots,
operations, errors of every declared status — and every answer body is validated with
jsonschema against the schema the route declares for that status (docs/api/openapi.json
is the same schema: test_api.py keeps them equal). Every route must be exercised."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import jsonschema
import pytest

from cargohold.control.api import build
from cargohold.control.model import Heartbeat
from cargohold.control.service import SnapshotCreate
from cargohold.keys.providers import Keyring, MemoryProvider
from tests.unit.control.sim import Sim

GiB = 1 << 30


class Checked:
    """An HTTP client that validates every answer against the app's own OpenAPI schema."""

    def __init__(self, client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
        self.client, self.spec = client, spec
        self.seen: set[tuple[str, str, str]] = set()  # (method, template, status)

    async def __call__(
        self, method: str, template: str, expect: int, body: Any = None, **params: Any
    ) -> Any:
        path_params = {k: v for k, v in params.items() if "{" + k + "}" in template}
        query = {k: v for k, v in params.items() if k not in path_params}
        r = await self.client.request(
            method, template.format(**path_params), json=body, params=query or None
        )
        assert r.status_code == expect, f"{method} {template}: {r.status_code} {r.text}"
        op = self.spec["paths"][template][method.lower()]
        declared = op["responses"].get(str(r.status_code))
        assert declared is not None, f"{method} {template} answered undeclared {r.status_code}"
        schema = declared["content"]["application/json"]["schema"]
        jsonschema.validate(
            r.json(),
            {**schema, "components": self.spec["components"]},
            cls=jsonschema.Draft202012Validator,
        )
        assert schema != {}, f"{method} {template} {r.status_code}: the answer is untyped"
        self.seen.add((method.lower(), template, str(r.status_code)))
        return r.json()


@pytest.fixture
async def world(monkeypatch):  # type: ignore[no-untyped-def]
    sim = Sim(monkeypatch, nodes=4, node_down_after=5)
    await sim.start()
    app = build(sim.service)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield sim, Checked(c, app.openapi())


async def test_every_answer_fits_the_published_schema(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim, call = world
    V, N, S, OP = (
        "/api/v1/volumes/{volume}",
        "/api/v1/nodes/{node}",
        "/api/v1/volumes/{volume}/snapshots/{snapshot}",
        "/api/v1/operations/{op}",
    )
    await call("GET", "/healthz", 200)
    await call("GET", "/livez", 200)
    await call("GET", "/api/v1/status", 200)
    await call("GET", "/api/v1/nodes", 200)
    await call("GET", N, 200, node="node-1")
    await call("GET", N, 404, node="nope")
    body = {"address": "127.0.0.1", "replica_port": 9600, "disks": []}
    await call("PUT", N, 200, body, node="node-9")
    await call("PUT", N, 422, {"address": 1}, node="node-9")
    await call("POST", N + "/heartbeat", 200, Heartbeat().model_dump(), node="node-9")
    await call("POST", N + "/heartbeat", 422, {"replicas": "no"}, node="node-9")
    await call("POST", N + "/cordon", 200, node="node-9")
    await call("POST", N + "/uncordon", 200, node="node-9")
    await call("POST", N + "/drain", 200, node="node-9")
    await call("POST", N + "/cordon", 404, node="nope")
    await call("GET", "/api/v1/disks", 200)
    disk = {"name": "ssd-1", "path": "/var/lib/cargohold/ssd", "capacity_bytes": GiB}
    await call("POST", N + "/disks", 201, disk, node="node-1")
    await call("POST", N + "/disks", 409, disk, node="node-1")
    await call("POST", N + "/disks", 404, disk, node="nope")

    # volumes in every state
    await call("POST", "/api/v1/volumes", 201, {"name": "data", "size_bytes": GiB})
    await call("POST", "/api/v1/volumes", 409, {"name": "data", "size_bytes": GiB})
    await call("POST", "/api/v1/volumes", 422, {"name": "Bad", "size_bytes": 7})
    huge = {"name": "huge", "size_bytes": 200 << 40, "replicas": 1}
    await call("POST", "/api/v1/volumes", 507, huge)
    await call(
        "POST", "/api/v1/volumes", 404, {"name": "c", "size_bytes": GiB, "source": {"volume": "x"}}
    )
    await sim.step(rounds=2)
    v = await call("GET", V, 200, volume="data")
    assert v["state"] == "detached" and v["robustness"] == "healthy"
    await call("GET", V, 404, volume="nope")
    v = await call("POST", V + "/attach", 202, {"node": v["replicas"][0]["node"]}, volume="data")
    await call("POST", V + "/attach", 409, {"node": "node-4"}, volume="data")
    await call("POST", V + "/attach", 404, {"node": "node-1"}, volume="nope")
    await call("POST", V + "/attach", 422, {"node": "node-1", "colour": 1}, volume="data")
    await sim.step(rounds=3)
    v = await call("GET", V, 200, volume="data")
    assert v["state"] == "attached" and v["endpoint"] and v["engine"]["running"]
    assert {r["mode"] for r in v["replicas"]} == {"RW"}
    await call("GET", "/api/v1/attachments", 200)
    await call("GET", V + "/replicas", 200, volume="data")
    await call("GET", V + "/replicas", 404, volume="nope")
    await call("GET", "/api/v1/replicas", 200)
    await call("DELETE", V, 409, volume="data")

    # snapshots and operations
    op = await call("POST", V + "/snapshots", 202, {"name": "s1"}, volume="data")
    await call("POST", V + "/snapshots", 409, {"name": "s1"}, volume="data")
    await call("POST", V + "/snapshots", 404, {"name": "s1"}, volume="nope")
    await call("GET", OP, 200, op=op["id"])
    await call("GET", OP, 404, op="op-nope")
    await call("GET", "/api/v1/operations", 200, volume="data")
    await sim.step(rounds=3)
    snaps = await call("GET", V + "/snapshots", 200, volume="data")
    assert snaps[0]["state"] == "ready"
    await call("GET", V + "/snapshots", 404, volume="nope")
    M = S + "/metadata"  # a page of changed-block metadata: an operation
    await call("POST", M, 202, {"offset": 0, "max_results": 10}, volume="data", snapshot="s1")
    await call("POST", M, 404, {"base": "s-nope"}, volume="data", snapshot="s1")
    await call("POST", M, 422, {"offset": -1}, volume="data", snapshot="s1")
    await call("POST", S + "/revert", 409, volume="data", snapshot="s1")  # attached
    await call("POST", V + "/expand", 202, {"size_bytes": 2 * GiB}, volume="data")
    qos = {"qos": {"max_iops": 1000, "burst_seconds": 1.0}}
    v = await call("PATCH", V, 200, qos, volume="data")
    limits = {k: x for k, x in v["qos"]["limits"].items() if x is not None}  # others: null
    assert limits == {"max_iops": 1000, "burst_seconds": 1.0}
    await call("PATCH", V, 422, {"qos": {"max_iops": 5}}, volume="data")
    await call("PATCH", V, 404, qos, volume="nope")
    await call("POST", V + "/expand", 400, {"size_bytes": GiB // 2}, volume="data")
    # an encrypted volume: its engine's agent fetches the data key; a rewrap (docs/keys.md)
    keks = {"default": b"k" * 32, "k2": b"j" * 32}
    sim.service.keyring = Keyring([MemoryProvider(keks, name="file")])
    sealed = {"name": "sealed", "size_bytes": GiB, "encrypted": True, "replicas": 1}
    ev = await call("POST", "/api/v1/volumes", 201, sealed)
    assert ev["encryption"]["provider"] == "file" and "wrapped_key" not in ev["encryption"]
    await call("POST", "/api/v1/volumes", 409, {**sealed, "name": "sealed-2", "key": "nope"})
    await call("POST", "/api/v1/volumes", 422, {**sealed, "key": "a", "kms_key": "b"})
    await sim.step(rounds=2)
    await call("POST", V + "/attach", 202, {"node": ev["replicas"][0]["node"]}, volume="sealed")
    await sim.step(rounds=3)
    eng = (await call("GET", V, 200, volume="sealed"))["engine"]
    DK = V + "/data-key"
    ask = {"node": eng["node"], "epoch": eng["epoch"]}
    got = await call("POST", DK, 200, ask, volume="sealed")
    assert got["encryption_id"] == ev["encryption"]["id"] and len(got["data_key"]) == 44
    other = next(n for n in sim.nodes if n != eng["node"])
    await call("POST", DK, 403, {**ask, "node": other}, volume="sealed")
    await call("POST", DK, 409, {**ask, "epoch": eng["epoch"] + 1}, volume="sealed")
    await call("POST", DK, 409, ask, volume="data")  # not encrypted
    await call("POST", DK, 404, ask, volume="nope")
    await call("POST", DK, 422, {"node": "Bad"}, volume="sealed")
    ev = await call("POST", V + "/rekey", 200, {"key": "k2"}, volume="sealed")
    assert ev["encryption"]["key_ref"] == "k2" and ev["encryption"]["rekeyed_at"]
    await call("POST", V + "/rekey", 422, {}, volume="sealed")
    await call("POST", V + "/rekey", 409, {"key": "k2"}, volume="data")
    await call("POST", V + "/rekey", 404, {"key": "k2"}, volume="nope")
    await call("POST", V + "/detach", 202, volume="sealed")
    await call("POST", V + "/expand", 404, {"size_bytes": GiB}, volume="nope")
    await call("DELETE", S, 202, volume="data", snapshot="s1")
    await call("DELETE", S, 404, volume="data", snapshot="s1-nope")
    # group snapshots
    GS, G = "/api/v1/group-snapshots", "/api/v1/group-snapshots/{group}"
    await call("POST", GS, 202, {"name": "g1", "volumes": ["data"]})
    await call("POST", GS, 409, {"name": "g1", "volumes": ["data", "other"]})
    await call("POST", GS, 404, {"name": "g2", "volumes": ["nope"]})
    await call("POST", GS, 422, {"name": "g2", "volumes": []})
    await call("DELETE", G, 409, group="g1")  # still being taken
    for _ in range(20):
        await sim.step()
        if (await sim.service.group_snapshot("g1"))["state"] == "ready":
            break
    assert [g["state"] for g in await call("GET", GS, 200)] == ["ready"]
    await call("GET", G, 200, group="g1")
    await call("GET", G, 404, group="g-nope")
    await call("DELETE", G, 202, group="g1")
    await call("DELETE", G, 404, group="g-nope")

    # a node down: degraded, a replica failed
    node = next(r["node"] for r in v["replicas"] if r["node"] != v["attached_node"])
    sim.nodes[node].alive = False
    await sim.step(seconds=3, rounds=3)
    v = await call("GET", V, 200, volume="data")
    assert v["robustness"] == "degraded"
    assert "failed" in {r["state"] for r in v["replicas"]}
    await call("GET", "/api/v1/status", 200)
    await call("GET", "/api/v1/nodes", 200)

    # detach, retain and release, delete
    await call("POST", V + "/detach", 202, volume="data")
    await call("POST", V + "/detach", 404, volume="nope")
    await call("POST", V + "/recover-epoch", 200, volume="data")
    await call("POST", V + "/recover-epoch", 404, volume="nope")
    await sim.step(rounds=3)
    await call("POST", S + "/revert", 404, volume="data", snapshot="s1-nope")
    await sim.service.create_snapshot("data", SnapshotCreate(name="s2"))
    await sim.step(rounds=4)
    await call("POST", S + "/revert", 202, volume="data", snapshot="s2")
    await call("POST", S + "/revert", 404, volume="nope", snapshot="s2")
    await call("DELETE", V, 202, volume="data")
    await call("GET", V, 200, volume="data")  # deleting
    await call("DELETE", V, 404, volume="nope")
    await call("DELETE", V, 422, volume="data", purge="maybe")
    keep = {"name": "keep", "size_bytes": GiB, "replicas": 2, "reclaim_policy": "Retain"}
    await call("POST", "/api/v1/volumes", 201, keep)
    await sim.step(rounds=2)
    v = await call("DELETE", V, 202, volume="keep")
    assert v["state"] == "released"
    await call("POST", V + "/attach", 409, {"node": "node-1"}, volume="keep")
    await call("GET", "/api/v1/volumes", 200)

    # an orphan (on a disk, in no record): listed, deleted by an operator; the events
    ghost = {"replicas": [{"id": "ghost-r1a2b3c", "volume": "ghost", "size_bytes": GiB}]}
    await call("POST", N + "/heartbeat", 200, ghost, node="node-9")
    assert [o["id"] for o in await call("GET", "/api/v1/orphans", 200)] == ["ghost-r1a2b3c"]
    adopt = "/api/v1/orphans/adopt"
    plan = await call("POST", adopt, 200, {"volume": "ghost", "dry_run": True})
    assert plan["dry_run"] and [r["id"] for r in plan["replicas"]] == ["ghost-r1a2b3c"]
    await call("POST", adopt, 404, {"volume": "nobody"})
    await call("POST", adopt, 409, {"volume": "keep"})  # has records: never merged into
    await call("POST", adopt, 422, {"volume": "Bad Name"})
    orphan = "/api/v1/orphans/{node}/{replica}"
    await call("DELETE", orphan, 200, node="node-9", replica="ghost-r1a2b3c")
    await call("DELETE", orphan, 404, node="node-9", replica="ghost-r1a2b3c")
    kinds = {e["kind"] for e in await call("GET", "/api/v1/events", 200)}
    assert {"orphan-found", "orphan-deleted"} <= kinds
    # what happened to the volumes so far is in the event log too (issue 20), by volume
    assert {"volume-created", "volume-attached", "snapshot-created"} <= kinds, kinds
    assert "replica-failed" in kinds, kinds
    only = await call("GET", "/api/v1/events", 200, volume="data", limit=3)
    assert 0 < len(only) <= 3 and {e["volume"] for e in only} == {"data"}
    newest = only[-1]["at"]
    assert await call("GET", "/api/v1/events", 200, volume="data", since=newest) == []
    await call("GET", "/api/v1/events", 422, limit=0)
    # /metrics: the text exposition, not JSON (issue 20; control/metrics.py)
    r = await call.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'cargohold_volumes{robustness="degraded",state="deleting"} 1.0' in r.text
    assert 'cargohold_node_up{node="node-2"} 0.0' in r.text  # the node the test stopped
    assert 'cargohold_events_total{kind="replica-failed"} 1.0' in r.text
    assert (
        'cargohold_api_request_duration_seconds_count{code="2xx",method="GET",route="/api/v1/events"}'
        in r.text
    )
    call.seen.add(("get", "/metrics", "200"))

    # tenants: made, listed, a volume of theirs, the quota refusing, refused deletion
    t = await call("POST", "/api/v1/tenants", 201, {"name": "team-a", "quota_bytes": GiB})
    assert t["used_bytes"] == 0 and t["quota_bytes"] == GiB
    await call("POST", "/api/v1/tenants", 409, {"name": "team-a"})
    await call("POST", "/api/v1/tenants", 422, {"name": "Team A"})
    v = await call(
        "POST", "/api/v1/volumes", 201, {"name": "ta", "size_bytes": GiB, "tenant": "team-a"}
    )
    assert v["tenant"] == "team-a"
    await call(
        "POST", "/api/v1/volumes", 507, {"name": "tb", "size_bytes": 4096, "tenant": "team-a"}
    )
    assert [t["name"] for t in await call("GET", "/api/v1/tenants", 200)] == ["team-a"]
    quota = "/api/v1/tenants/{tenant}/quota"
    t = await call("PUT", quota, 200, {"quota_bytes": None}, tenant="team-a")
    assert t["quota_bytes"] is None and t["used_bytes"] == GiB and t["volumes"] == 1
    await call("PUT", quota, 404, {"quota_bytes": 1}, tenant="nobody")
    await call("GET", "/api/v1/tenants/{tenant}", 200, tenant="team-a")
    await call("GET", "/api/v1/tenants/{tenant}", 404, tenant="nobody")
    await call("DELETE", "/api/v1/tenants/{tenant}", 409, tenant="team-a")
    await call("POST", "/api/v1/tenants", 201, {"name": "team-b"})
    await call("DELETE", "/api/v1/tenants/{tenant}", 200, tenant="team-b")
    # bearer tokens: made (the token shown once), listed without it, deleted
    made = await call("POST", "/api/v1/tokens", 201, {"role": "reader", "name": "ci"})
    assert made["token"].startswith("chk_")
    listed = await call("GET", "/api/v1/tokens", 200)
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    await call("POST", "/api/v1/tokens", 422, {"role": "agent", "name": "node-1"})
    await call("DELETE", "/api/v1/tokens/{token_id}", 200, token_id=made["id"])
    await call("DELETE", "/api/v1/tokens/{token_id}", 404, token_id=made["id"])
    # recurring jobs: made, refused, run now (the runner steps once), listed, deleted
    await _jobs(sim, call)
    # joining, certificates, node and disk removal (control/enrollment.py)
    await _enrollment(sim, call)
    # backup targets, backups, a restore (control/service_backups.py)
    await _backups(sim, call, monkeypatch)

    # every route, each with its success answer, was checked
    routes = {
        (m, p, code)
        for p, ops in call.spec["paths"].items()
        for m, o in ops.items()
        for code in o["responses"]
        if code.startswith("2") and not p.endswith("/scrub")  # the scrub route: not ours
    }
    missing = routes - call.seen
    assert not missing, f"routes never exercised: {sorted(missing)}"


async def _jobs(sim: Sim, call: Checked) -> None:
    from cargohold.control.job_actions import ServiceActions
    from cargohold.control.job_runner import JobRunner
    from cargohold.control.jobs import JobStore

    vols = [v["name"] for v in await call("GET", "/api/v1/volumes", 200)]
    body = {
        "name": "hourly",
        "kind": "snapshot",
        "cron": "0 * * * *",
        "retention": {"keep_last": 2, "daily": 7},
        "selector": {"volumes": vols[:1]},
    }
    made = await call("POST", "/api/v1/jobs", 201, body)
    assert made["runs"] == [] and made["enabled"] is True
    await call("POST", "/api/v1/jobs", 409, body)
    await call("POST", "/api/v1/jobs", 400, {**body, "name": "x", "cron": "hourly"})
    await call("POST", "/api/v1/jobs", 400, {**body, "name": "x", "retention": {}})
    await call("POST", "/api/v1/jobs", 422, {**body, "name": "x", "kind": "rsync"})
    await call("POST", "/api/v1/jobs/{job}/run", 202, job="hourly")
    await JobRunner(JobStore(sim.repo.store), ServiceActions(sim.service), sim.clock).run_once()
    got = await call("GET", "/api/v1/jobs/{job}", 200, job="hourly")
    assert [r["volume"] for r in got["runs"]] == vols[:1]
    assert [j["name"] for j in await call("GET", "/api/v1/jobs", 200)] == ["hourly"]
    await call("GET", "/api/v1/jobs/{job}", 404, job="nope")
    await call("DELETE", "/api/v1/jobs/{job}", 200, job="hourly")
    await call("DELETE", "/api/v1/jobs/{job}", 404, job="hourly")


async def test_every_route_declares_typed_answers_and_its_errors(world) -> None:  # type: ignore[no-untyped-def]
    _, call = world
    for path, ops in call.spec["paths"].items():
        if path.endswith("/scrub"):
            continue
        for method, op in ops.items():
            ok = [c for c in op["responses"] if c.startswith("2")]
            assert len(ok) == 1, (method, path)
            if path == "/metrics":  # Prometheus's text exposition, not JSON
                assert (
                    "text/plain; version=0.0.4; charset=utf-8" in op["responses"]["200"]["content"]
                )
                continue
            schema = op["responses"][ok[0]]["content"]["application/json"]["schema"]
            assert schema != {} and schema.get("additionalProperties") is not True, (method, path)
            if path.startswith("/api/"):
                assert "503" in op["responses"], (method, path)
            for code in ("404", "409", "422", "503", "507"):
                if code in op["responses"]:
                    ref = op["responses"][code]["content"]["application/json"]["schema"]
                    assert ref == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)


async def _enrollment(sim: Sim, call: Checked) -> None:
    import tempfile

    from cargohold.security.ca import CertificateAuthority, make_csr, new_key
    from cargohold.security.identity import Identity, Role

    def csr() -> str:
        return make_csr(Identity("pending", Role.AGENT, "x"), new_key()).decode()

    N = "/api/v1/nodes/{node}"
    body = {"node": "node-7", "address": "127.0.0.1", "token": "chk_x", "csr": csr()}
    await call("POST", "/api/v1/join-tokens", 409, {"uses": 1})  # no CA: --ca-dir
    with tempfile.TemporaryDirectory() as d:
        sim.service.ca = CertificateAuthority.create(f"{d}/ca", "c1")
        made = await call("POST", "/api/v1/join-tokens", 201, {"ttl_seconds": 60, "uses": 2})
        assert [t["id"] for t in await call("GET", "/api/v1/join-tokens", 200)] == [made["id"]]
        await call("POST", "/api/v1/join", 422, body)  # no replica_csr
        join = {**body, "token": made["token"], "replica_csr": csr()}
        creds = await call("POST", "/api/v1/join", 200, join)
        assert "BEGIN CERTIFICATE" in creds["cert"]
        await call(
            "POST", "/api/v1/join", 401, {**join, "token": "chk_" + "0" * 12 + "_" + "A" * 43}
        )
        await call(
            "POST", N + "/certificates", 200, {"csr": csr(), "replica_csr": csr()}, node="node-1"
        )
        await call(
            "POST", N + "/certificates", 404, {"csr": csr(), "replica_csr": csr()}, node="gone"
        )
        engine = N + "/engine-certificates"
        await call("POST", engine, 403, {"volume": "nobody", "csr": csr()}, node="node-1")
        from cargohold.control.model import EngineSpec, Volume, keys

        spec = EngineSpec(node="node-1", epoch=1)
        vol = Volume(name="enc", size_bytes=GiB, replicas_wanted=1, engine=spec)
        await sim.service.repo.store.put(keys.volume("enc"), vol.model_dump_json().encode())
        await call("POST", engine, 200, {"volume": "enc", "csr": csr()}, node="node-1")
        await call("POST", engine, 403, {"volume": "enc", "csr": csr()}, node="node-3")
        await sim.service.repo.store.delete(keys.volume("enc"))
        await call("DELETE", "/api/v1/join-tokens/{token_id}", 200, token_id=made["id"])
        await call("DELETE", "/api/v1/join-tokens/{token_id}", 404, token_id=made["id"])
        disk = {"name": "spare", "path": "/var/lib/cargohold/spare", "capacity_bytes": GiB}
        await call("POST", N + "/disks", 400, {**disk, "path": "/etc"}, node="node-4")
        await call("POST", N + "/disks", 201, disk, node="node-4")
        D = N + "/disks/{disk}"
        await call("POST", D + "/drain", 200, node="node-4", disk="spare")
        await call("DELETE", D, 200, node="node-4", disk="spare")
        await call("DELETE", D, 404, node="node-4", disk="spare")
        used = (await sim.service.repo.replicas())[0]
        await call("DELETE", D, 409, node=used.node, disk=used.disk)
        await call("DELETE", N, 409, node=used.node)
        await call("DELETE", N, 200, node="node-7")  # joined, never ran anything
        await call("DELETE", N, 404, node="node-7")
        sim.service.ca = None


async def _backups(sim: Sim, call: Checked, monkeypatch: pytest.MonkeyPatch) -> None:
    from cargohold.control.service_backups import BackupCalls
    from tests.unit.control.backup_twin import KEY, OTHER_KEY, TwinTargets

    twins = TwinTargets()
    monkeypatch.setattr(BackupCalls, "open_backup_repository", staticmethod(twins))
    sim.op_result = twins.engine_result
    T, B = "/api/v1/backup-targets/{target}", "/api/v1/backups/{backup}"
    body = {"name": "s3", "url": "s3://b/p", "access_key": "ak", "secret_key": "sk"}
    await call("POST", "/api/v1/backup-targets", 201, {**body, "repository_key": KEY})
    await call("POST", "/api/v1/backup-targets", 409, {**body, "repository_key": KEY})
    bad = {**body, "name": "s4", "repository_key": OTHER_KEY}
    await call("POST", "/api/v1/backup-targets", 400, bad)
    await call("POST", "/api/v1/backup-targets", 422, {**body, "repository_key": "xx"})
    assert [t["name"] for t in await call("GET", "/api/v1/backup-targets", 200)] == ["s3"]
    await call("GET", T, 200, target="s3")
    await call("GET", T, 404, target="nope")
    await call("POST", "/api/v1/volumes", 201, {"name": "bk", "size_bytes": GiB})
    await sim.step(rounds=2)
    op = await call("POST", "/api/v1/volumes/{volume}/backups", 202, {"target": "s3"}, volume="bk")
    bid = op["args"]["backup"]
    await call("POST", "/api/v1/volumes/{volume}/backups", 404, {"target": "no"}, volume="bk")
    await call("DELETE", B, 409, backup=bid)
    await sim.step(rounds=6)
    b = await call("GET", B, 200, backup=bid)
    assert b["state"] == "succeeded"
    await call("GET", B, 404, backup="bk-nope")
    assert [x["id"] for x in await call("GET", "/api/v1/backups", 200, volume="bk")] == [bid]
    synced = await call("POST", T + "/sync", 200, target="s3")
    assert synced["imported"] == []
    await call("POST", T + "/gc", 200, target="s3")
    assert (await call("POST", T + "/export-key", 200, target="s3"))["repository_key"] == KEY
    await call("POST", T + "/export-key", 404, target="nope")
    v = await call(
        "POST",
        "/api/v1/volumes",
        201,
        {"name": "bk2", "size_bytes": GiB, "source": {"backup": bid}},
    )
    assert v["state"] == "restoring"
    await call("DELETE", T, 409, target="s3")
    await sim.step(rounds=8)
    # a standby of volume bk (docs/disaster-recovery.md), then its activation
    SB, V = "/api/v1/standby-volumes", "/api/v1/volumes/{volume}"
    v = await call("POST", SB, 201, {"name": "bk-dr", "target": "s3", "source_volume": "bk"})
    assert v["standby"]["state"] == "applying" and v["standby"]["lag"]["backups"] >= 1
    await call("POST", SB, 404, {"name": "bk-dr2", "target": "s3", "source_volume": "nope"})
    await call("POST", SB, 409, {"name": "bk-dr", "target": "s3", "source_volume": "bk"})
    await call("POST", SB, 422, {"name": "Bad", "target": "s3", "source_volume": "bk"})
    await call("POST", V + "/activate", 409, volume="bk2")  # not a standby
    await call("POST", V + "/activate", 404, volume="nope")
    v = await call("POST", V + "/activate", 202, volume="bk-dr")
    assert v["standby"]["state"] == "activating"
    await call("DELETE", V, 202, volume="bk-dr")
    await sim.step(rounds=4)
    for r in twins.repos.values():  # the deleted standby's pin: expired
        r.pins.clear()
    await call("DELETE", B, 200, backup=bid)
    await call("DELETE", T, 200, target="s3")
    await call("DELETE", T, 404, target="s3")


def _patterns(node: object) -> set[str]:
    if isinstance(node, dict):
        out = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
        for v in node.values():
            out |= _patterns(v)
        return out
    if isinstance(node, list):
        return set().union(*map(_patterns, node)) if node else set()
    return set()


def test_every_string_pattern_means_the_same_to_python_and_to_pydantic():
    """The schema's regexes are read by Python's ``re`` (schemathesis, hypothesis) and by
    pydantic's Rust engine (the manager): the two differ on ``\\s`` for U+001C..U+001F,
    which once made a schema-valid KMS key id a 422 (and schemathesis once sent one with
    U+0085, which ECMA-262's ``\\s`` does not count: the KMS pattern spells them out). Every pattern of the API's schema
    must accept and refuse the same characters under both."""
    import re

    from pydantic import Field, TypeAdapter, ValidationError

    from cargohold.control.openapi import schema

    patterns = _patterns(schema())
    from cargohold.control.requests import KMS_KEY_PATTERN

    assert KMS_KEY_PATTERN in patterns
    for pattern in sorted(patterns):
        rust: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=pattern)])
        for c in range(0x3100):
            text = "a" + chr(c) + "a"  # inside a name: anchors and classes both matter
            try:
                rust.validate_python(text)
                ok = True
            except ValidationError:
                ok = False
            assert ok == (re.search(pattern, text) is not None), (pattern, hex(c))
