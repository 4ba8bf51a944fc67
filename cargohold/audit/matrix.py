"""The seed's decision matrix as advice: per claim, its storage pattern and whether it fits.

``engine`` calls ``advise()`` once per audit. Each claim follows one of four patterns
(ephemeral, dedicated RWO, shared read-only, distributed RWX). Each workload that mounts it
is matched to a matrix row (relational database, message queue, ML training, ...) by its
images and app labels; the row says which patterns fit. Advice is informational: it never
changes the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass

from cargohold.audit import knowledge
from cargohold.audit.inventory import Inventory, Mount
from cargohold.audit.manifest import format_path
from cargohold.audit.model import Advice
from cargohold.audit.workloads import ROX, RWX, Claim, Workload

EPHEMERAL = "ephemeral"
DEDICATED_RWO = "dedicated-rwo"
SHARED_READ_ONLY = "shared-read-only"
DISTRIBUTED_RWX = "distributed-rwx"


@dataclass(frozen=True)
class Scenario:
    """One row of the decision matrix."""

    name: str
    label: str
    tokens: frozenset[str]
    fits: frozenset[str]
    approach: str
    why: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "relational-database",
        "Relational database",
        knowledge.RELATIONAL_TOKENS,
        frozenset({DEDICATED_RWO}),
        "RWO block + snapshot",
        "strong consistency; fast point-in-time recovery",
    ),
    Scenario(
        "message-queue",
        "Message queue",
        knowledge.QUEUE_TOKENS,
        frozenset({DEDICATED_RWO}),
        "RWO + replication",
        "single writer per partition; replication for HA",
    ),
    Scenario(
        "datastore",
        "Database / datastore",
        knowledge.DATASTORE_TOKENS,
        frozenset({DEDICATED_RWO}),
        "RWO block + snapshot",
        "exclusive access to its files; replicate in the application",
    ),
    Scenario(
        "ml-training",
        "ML training",
        knowledge.ML_TOKENS,
        frozenset({DISTRIBUTED_RWX, SHARED_READ_ONLY}),
        "RWX high-performance file system",
        "parallel reads and writes across many pods",
    ),
    Scenario(
        "log-aggregation",
        "Log aggregation",
        knowledge.LOG_SHIPPER_TOKENS,
        frozenset({EPHEMERAL}),
        "ephemeral + centralized",
        "pods write to local disk; a shipper sends logs to central storage",
    ),
    Scenario(
        "build-cache",
        "Build cache",
        knowledge.BUILD_CACHE_TOKENS,
        frozenset({EPHEMERAL}),
        "emptyDir (Memory) or ephemeral volume",
        "ultra-low latency; nothing worth keeping",
    ),
    Scenario(
        "static-assets",
        "Static web assets",
        knowledge.STATIC_WEB_TOKENS,
        frozenset({SHARED_READ_ONLY, DISTRIBUTED_RWX}),
        "read-only RWX file or ConfigMap",
        "shared read access; latency not critical",
    ),
)


def scenario_of(workload: Workload) -> Scenario | None:
    """The matrix row a workload belongs to, or ``None`` when nothing says which."""
    found = workload.app_tokens
    for scenario in SCENARIOS:
        if found & scenario.tokens:
            return scenario
    return None


def pattern_of(claim: Claim, mounts: list[Mount]) -> str:
    if claim.source == "ephemeral":
        return EPHEMERAL
    modes = set(claim.access_modes)
    writable = any(m.writable for m in mounts)
    if ROX in modes or (RWX in modes and mounts and not writable):
        return SHARED_READ_ONLY
    if RWX in modes:
        return DISTRIBUTED_RWX
    return DEDICATED_RWO


def advise(inv: Inventory) -> list[Advice]:
    return [_advice(claim, mounts) for claim, mounts in inv.claim_mounts()]


def _advice(claim: Claim, mounts: list[Mount]) -> Advice:
    pattern = pattern_of(claim, mounts)
    workloads: list[Workload] = []
    for m in mounts:
        if not any(m.workload is w for w in workloads):
            workloads.append(m.workload)
    rows = [(w, scenario_of(w)) for w in workloads]
    known = [(w, s) for w, s in rows if s is not None]
    misfits = [(w, s) for w, s in known if pattern not in s.fits]
    if not workloads:
        scenario, recommended, verdict = "unused", "-", "unknown"
        note = "no workload in the inputs mounts it"
    elif not known:
        scenario, recommended, verdict = "general", "-", "unknown"
        note = "no matrix row matches the workload's images or labels"
    elif misfits:
        w, s = misfits[0]
        scenario, recommended, verdict = s.label, s.approach, "mismatch"
        note = f"for {w} the matrix recommends {s.approach} ({s.why})"
    else:
        _, s = known[0]
        scenario, recommended, verdict = s.label, s.approach, "fits"
        note = s.why
    return Advice(
        claim=claim.describe(),
        object=claim.ref(),
        field=format_path(claim.path),
        location=claim.manifest.location(claim.path),
        pattern=pattern,
        workloads=tuple(str(w) for w in workloads),
        scenario=scenario,
        recommended=recommended,
        verdict=verdict,
        note=note,
    )
