"""``cargohold audit``: a storage-pattern auditor for Kubernetes manifests and clusters.

It reads manifests (files, directories, stdin, kustomize output) and, optionally, a live
cluster (read-only), joins the objects (a PVC in one file, the StatefulSet that mounts it
in another), runs the rules of ``catalog.RULES`` and reports findings as a table, JSON or
SARIF, with the seed's decision-matrix advice per PVC. It stands apart from the data plane:
nothing here imports ``cargohold.replica``, ``store`` or ``protocol``.

Layout, top-down::

    cli.audit_cmd -> engine -> checks/* -> inventory -> workloads -> manifest
                             \\-> matrix, ignores        knowledge (data tables)
    inputs:  loader (files, stdin), kustomize, cluster (the only kubernetes import)
    outputs: report (table, JSON), sarif; docs renders docs/audit.md's rule section
    settings (CARGOHOLD_AUDIT_* tunables), errors (all exit code 2)
"""

from cargohold.audit.catalog import RULES, RULES_BY_ID
from cargohold.audit.engine import audit, run
from cargohold.audit.errors import AuditError, ClusterError, InputError, KustomizeError
from cargohold.audit.inventory import Inventory
from cargohold.audit.loader import ManifestLoader
from cargohold.audit.manifest import Manifest
from cargohold.audit.model import Advice, AuditResult, Finding, Location, ObjectRef, Rule, Severity

__all__ = [
    "RULES",
    "RULES_BY_ID",
    "Advice",
    "AuditError",
    "AuditResult",
    "ClusterError",
    "Finding",
    "InputError",
    "Inventory",
    "KustomizeError",
    "Location",
    "Manifest",
    "ManifestLoader",
    "ObjectRef",
    "Rule",
    "Severity",
    "audit",
    "run",
]
