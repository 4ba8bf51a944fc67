"""Every rule against its corpus: bad examples give exactly these findings, good ones none.

The corpus lives in tests/data/audit/rules/chNNN/. Each bad example is audited alone and
must produce exactly the listed (rule, object, field, file, line) rows, no more, no fewer;
each good example must produce no finding at all, from any rule.
"""

from __future__ import annotations

import pytest
from audit_helpers import DATA, audit_paths, row

from cargohold.audit.catalog import RULES, RULES_BY_ID
from cargohold.audit.checks import CHECKS
from cargohold.audit.engine import audit
from cargohold.audit.loader import ManifestLoader

BAD: dict[str, list[tuple[str, str, str, str, int | None]]] = {
    "rules/ch001/bad.yaml": [
        ("CH001", "StorageClass gp3-immediate", "volumeBindingMode", "rules/ch001/bad.yaml", 9),
        ("CH001", "StorageClass local-unset", "volumeBindingMode", "rules/ch001/bad.yaml", 14),
        ("CH001", "StorageClass nfs-two-zones", "volumeBindingMode", "rules/ch001/bad.yaml", 27),
    ],
    "rules/ch001/multizone.yaml": [
        ("CH001", "StorageClass nfs", "volumeBindingMode", "rules/ch001/multizone.yaml", 21),
    ],
    "rules/ch002/bad.yaml": [
        ("CH002", "StorageClass fast", "reclaimPolicy", "rules/ch002/bad.yaml", 2),
        ("CH002", "StorageClass standard", "reclaimPolicy", "rules/ch002/bad.yaml", 11),
    ],
    "rules/ch003/bad": [
        (
            "CH003",
            "StatefulSet shop/mongo",
            "spec.volumeClaimTemplates[0].spec.accessModes",
            "rules/ch003/bad/databases.yaml",
            75,
        ),
        (
            "CH003",
            "PersistentVolumeClaim shop/shared-db",
            "spec.accessModes",
            "rules/ch003/bad/pvc.yaml",
            8,
        ),
        (
            "CH003",
            "PersistentVolumeClaim shop/shared-db",
            "spec.accessModes",
            "rules/ch003/bad/pvc.yaml",
            8,
        ),
    ],
    "rules/ch004/bad.yaml": [
        (
            "CH004",
            "Deployment app",
            "spec.template.spec.securityContext",
            "rules/ch004/bad.yaml",
            23,
        ),
        (
            "CH004",
            "StatefulSet search",
            "spec.template.spec.securityContext",
            "rules/ch004/bad.yaml",
            47,
        ),
        (
            "CH004",
            "CronJob export",
            "spec.jobTemplate.spec.template.spec.securityContext",
            "rules/ch004/bad.yaml",
            72,
        ),
    ],
    "rules/ch005/bad.yaml": [
        ("CH005", "StorageClass gp3", "provisioner", "rules/ch005/bad.yaml", 6),
    ],
    "rules/ch006/bad.yaml": [
        (
            "CH006",
            "PersistentVolumeClaim payments/ledger",
            "spec.accessModes",
            "rules/ch006/bad.yaml",
            15,
        ),
        (
            "CH006",
            "StatefulSet vault",
            "spec.volumeClaimTemplates[0].spec.accessModes",
            "rules/ch006/bad.yaml",
            65,
        ),
        ("CH006", "PersistentVolumeClaim keys", "spec.accessModes", "rules/ch006/bad.yaml", 77),
    ],
    "rules/ch007/bad.yaml": [
        (
            "CH007",
            "Deployment kube-system/ebs-csi-controller",
            "spec.template.spec.containers[0].resources",
            "rules/ch007/bad.yaml",
            18,
        ),
        (
            "CH007",
            "Deployment kube-system/ebs-csi-controller",
            "spec.template.spec.containers[1].resources",
            "rules/ch007/bad.yaml",
            20,
        ),
        (
            "CH007",
            "DaemonSet kube-system/ebs-csi-node",
            "spec.template.spec.containers[0].resources",
            "rules/ch007/bad.yaml",
            42,
        ),
    ],
    "rules/ch008/bad.yaml": [
        ("CH008", "StorageClass db-ssd", "allowVolumeExpansion", "rules/ch008/bad.yaml", 2),
    ],
    "rules/ch009/bad.yaml": [
        (
            "CH009",
            "Deployment web/web",
            "spec.template.spec.volumes[0].persistentVolumeClaim.claimName",
            "rules/ch009/bad.yaml",
            33,
        ),
        (
            "CH009",
            "DaemonSet web/agent",
            "spec.template.spec.volumes[0].persistentVolumeClaim.claimName",
            "rules/ch009/bad.yaml",
            64,
        ),
        (
            "CH009",
            "Pod web/producer",
            "spec.volumes[0].persistentVolumeClaim.claimName",
            "rules/ch009/bad.yaml",
            90,
        ),
        (
            "CH009",
            "Job web/consumer",
            "spec.template.spec.volumes[0].persistentVolumeClaim.claimName",
            "rules/ch009/bad.yaml",
            108,
        ),
    ],
    "rules/ch010/bad.yaml": [
        ("CH010", "Pod cache", "spec.volumes[0].emptyDir", "rules/ch010/bad.yaml", 14),
        (
            "CH010",
            "CronJob build",
            "spec.jobTemplate.spec.template.spec.volumes[1].emptyDir",
            "rules/ch010/bad.yaml",
            35,
        ),
    ],
    "rules/ch011/bad.yaml": [
        ("CH011", "StorageClass keep-forever", "reclaimPolicy", "rules/ch011/bad.yaml", 7),
    ],
    "rules/ch012/bad.yaml": [
        ("CH012", "VolumeSnapshotClass fast-snapshots", "driver", "rules/ch012/bad.yaml", 15),
    ],
    "rules/ch013/bad.yaml": [
        ("CH013", "StorageClass payments", "parameters", "rules/ch013/bad.yaml", 9),
        ("CH013", "StorageClass ceph-rbd", "parameters", "rules/ch013/bad.yaml", 20),
    ],
    "rules/ch014/bad.yaml": [
        ("CH014", "PersistentVolumeClaim data", "spec", "rules/ch014/bad.yaml", 20),
        (
            "CH014",
            "StatefulSet queue",
            "spec.volumeClaimTemplates[0].spec",
            "rules/ch014/bad.yaml",
            45,
        ),
    ],
    "rules/ch015/bad.yaml": [
        ("CH015", "Deployment blog", "spec.strategy", "rules/ch015/bad.yaml", 15),
        ("CH015", "Deployment wiki", "spec.strategy", "rules/ch015/bad.yaml", 46),
    ],
    "rules/ch016/bad.yaml": [
        (
            "CH016",
            "PersistentVolumeClaim media/media",
            "spec.accessModes",
            "rules/ch016/bad.yaml",
            8,
        ),
        (
            "CH016",
            "PersistentVolumeClaim media/node-logs",
            "spec.accessModes",
            "rules/ch016/bad.yaml",
            58,
        ),
    ],
}

GOOD = [
    "rules/ch001/good.yaml",
    "rules/ch002/good.yaml",
    "rules/ch003/good",
    "rules/ch004/good.yaml",
    "rules/ch005/good.yaml",
    "rules/ch006/good.yaml",
    "rules/ch007/good.yaml",
    "rules/ch008/good.yaml",
    "rules/ch009/good.yaml",
    "rules/ch010/good.yaml",
    "rules/ch011/good.yaml",
    "rules/ch012/good.yaml",
    "rules/ch013/good.yaml",
    "rules/ch014/good.yaml",
    "rules/ch015/good.yaml",
    "rules/ch016/good.yaml",
    "clean",
]


@pytest.mark.parametrize("path", sorted(BAD))
def test_bad_examples_give_exactly_these_findings(path: str) -> None:
    result = audit_paths(path)
    assert sorted(row(f) for f in result.findings) == sorted(BAD[path])
    assert result.suppressed == ()


@pytest.mark.parametrize("path", GOOD)
def test_good_examples_give_no_findings(path: str) -> None:
    result = audit_paths(path)
    assert [row(f) for f in result.findings] == []
    assert result.warnings == ()


def test_every_rule_has_a_bad_and_a_good_example() -> None:
    bad_rules = {r[0] for rows in BAD.values() for r in rows}
    good_dirs = {p.split("/")[1].upper() for p in GOOD if p.startswith("rules/")}
    assert bad_rules == set(RULES_BY_ID) == good_dirs
    for rule in RULES:
        assert (DATA / "rules" / rule.id.lower()).is_dir()


def test_rule_table_and_checks_match_one_to_one() -> None:
    assert set(CHECKS) == set(RULES_BY_ID)
    assert [r.id for r in RULES] == sorted(RULES_BY_ID)
    for rule in RULES:
        assert rule.title and rule.why and rule.fix and rule.example, rule.id


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_the_documented_example_triggers_its_rule(rule) -> None:
    manifests = ManifestLoader().load_text(rule.example, f"{rule.id}.yaml")
    fired = {f.rule_id for f in audit(manifests).findings}
    assert rule.id in fired


def test_messages_name_what_is_wrong() -> None:
    by_object = {str(f.object): f.message for f in audit_paths("rules/ch003/bad").findings}
    assert (
        "mounted read-write by its own database pods (image mongo:7.0)"
        in by_object["StatefulSet shop/mongo"]
    )
    messages = {f.message for f in audit_paths("rules/ch009/bad.yaml").findings}
    assert (
        "DaemonSet runs one pod per node, all mounting ReadWriteOncePod PVC agent-state; "
        "only one pod at a time can use it, the others stay Pending" in messages
    )
    assert any("is also mounted by Job web/consumer" in m for m in messages)
