"""The decision matrix: per claim, its pattern and whether it fits the workloads."""

from __future__ import annotations

from audit_helpers import audit_paths

from cargohold.audit.engine import audit
from cargohold.audit.loader import ManifestLoader


def advice_rows(path: str) -> list[tuple[str, str, str, str]]:
    return [(a.claim, a.pattern, a.scenario, a.verdict) for a in audit_paths(path).advice]


def test_clean_stack_fits_the_matrix() -> None:
    assert advice_rows("clean") == [
        ("PVC assets", "distributed-rwx", "Static web assets", "fits"),
        (
            "volumeClaimTemplate data of StatefulSet pg",
            "dedicated-rwo",
            "Relational database",
            "fits",
        ),
        ("ephemeral volume cache of Job build", "ephemeral", "Build cache", "fits"),
    ]


def test_databases_on_rwx_do_not_fit() -> None:
    rows = advice_rows("rules/ch003/bad")
    assert rows == [
        ("PVC shared-db", "distributed-rwx", "Relational database", "mismatch"),
        (
            "volumeClaimTemplate db of StatefulSet mongo",
            "distributed-rwx",
            "Database / datastore",
            "mismatch",
        ),
    ]
    note = audit_paths("rules/ch003/bad").advice[0].note
    assert note == (
        "for Deployment shop/mysql the matrix recommends RWO block + snapshot "
        "(strong consistency; fast point-in-time recovery)"
    )


def test_queues_read_only_sharing_unknown_and_unused_claims() -> None:
    assert advice_rows("rules/ch005/bad.yaml") == [
        ("volumeClaimTemplate logs of StatefulSet kafka", "dedicated-rwo", "Message queue", "fits")
    ]
    assert ("PVC assets", "shared-read-only", "general", "unknown") in advice_rows(
        "rules/ch009/good.yaml"
    )
    assert advice_rows("rules/ch006/good.yaml") == [
        ("PVC ledger", "dedicated-rwo", "unused", "unknown"),
        ("PVC cache", "dedicated-rwo", "unused", "unknown"),
    ]


def test_ml_training_wants_shared_file_storage_and_log_shippers_want_none() -> None:
    text = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: datasets}
spec: {accessModes: [ReadWriteOnce]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: train}
spec:
  parallelism: 1
  template:
    spec:
      containers:
      - {name: t, image: pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime}
      volumes:
      - {name: d, persistentVolumeClaim: {claimName: datasets}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: fluent-bit}
spec:
  template:
    spec:
      containers:
      - {name: f, image: cr.fluentbit.io/fluent/fluent-bit:3.1}
      volumes:
      - name: buffer
        ephemeral:
          volumeClaimTemplate:
            spec: {accessModes: [ReadWriteOncePod]}
"""
    result = audit(ManifestLoader().load_text(text, "ml.yaml"))
    assert [(a.claim, a.pattern, a.scenario, a.verdict) for a in result.advice] == [
        ("PVC datasets", "dedicated-rwo", "ML training", "mismatch"),
        ("ephemeral volume buffer of DaemonSet fluent-bit", "ephemeral", "Log aggregation", "fits"),
    ]
