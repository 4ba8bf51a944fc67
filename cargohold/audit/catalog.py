"""The rule table: id, severity, title, why it matters, the fix and a bad example per rule.

This list is the one place the rules are described. ``engine`` pairs each entry with the
check registered under its id (``checks/``); ``report`` and ``sarif`` take titles and rule
metadata from it; ``docs`` renders the rule section of docs/audit.md from it; the tests run
every ``example`` and expect its rule to fire. Ids CH001-CH010 follow the ten items of the
issue; CH011-CH016 split out second halves of items 2, 5 and 8 and add three more.
"""

from __future__ import annotations

from cargohold.audit.model import Rule, Severity

_SC_HEAD = """apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast
provisioner: csi.cargohold.io
"""

_PG = """---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: pg
spec:
  serviceName: pg
  selector:
    matchLabels: {app: pg}
  template:
    metadata:
      labels: {app: pg}
    spec:
      containers:
      - name: postgres
        image: postgres:16
        volumeMounts:
        - {name: data, mountPath: /var/lib/postgresql/data}
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: fast
      resources:
        requests: {storage: 50Gi}
"""


def _deployment(name: str, image: str, volumes: str, extra: str = "", replicas: int = 1) -> str:
    return f"""---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
{extra}  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: {name}
        image: {image}
        volumeMounts:
        - {{name: data, mountPath: /data}}
      volumes:
{volumes}"""


def _pvc(name: str, mode: str) -> str:
    return f"""---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  accessModes: [{mode}]
  storageClassName: fast
  resources:
    requests: {{storage: 10Gi}}
"""


_CLAIM_VOLUME = "      - name: data\n        persistentVolumeClaim: {claimName: shared}\n"

RULES: tuple[Rule, ...] = (
    Rule(
        id="CH001",
        severity=Severity.HIGH,
        title="Immediate volume binding on a zonal or multi-zone StorageClass",
        why=(
            "With Immediate binding the volume is created as soon as the PVC exists, in a zone "
            "picked without looking at the pod. The scheduler then has to place the pod in that "
            "zone; if its CPU, memory, affinity or taints say otherwise, the pod stays Pending "
            "with FailedScheduling (volume node affinity conflict) because a zonal disk cannot "
            "attach across zones."
        ),
        fix=(
            "Set volumeBindingMode: WaitForFirstConsumer so the volume is created where the "
            "first pod is scheduled. It cannot be changed on an existing class: create a new "
            "class and move claims to it."
        ),
        fix_yaml="volumeBindingMode: WaitForFirstConsumer",
        example=_SC_HEAD
        + "volumeBindingMode: Immediate\nreclaimPolicy: Delete\nallowVolumeExpansion: true\n",
        tags=("topology", "scheduling"),
    ),
    Rule(
        id="CH002",
        severity=Severity.MEDIUM,
        title="reclaimPolicy unset on a class used by stateful workloads",
        why=(
            "An unset reclaimPolicy means Delete: removing the PVC (a helm uninstall, a "
            "namespace deletion, a mistaken kubectl delete) deletes the volume and its data at "
            "once. For the data of stateful workloads that is rarely what the owner meant; it "
            "should be a written choice, not a default."
        ),
        fix=(
            "Set reclaimPolicy explicitly: Retain for data that must outlive its claim, Delete "
            "only for state you can rebuild."
        ),
        fix_yaml="reclaimPolicy: Retain",
        example=_SC_HEAD
        + "volumeBindingMode: WaitForFirstConsumer\nallowVolumeExpansion: true\n"
        + _PG,
        tags=("data-loss",),
    ),
    Rule(
        id="CH003",
        severity=Severity.CRITICAL,
        title="ReadWriteMany volume under a database",
        why=(
            "Database engines (PostgreSQL, MySQL, MongoDB, Redis, Kafka, etcd, Elasticsearch "
            "...) expect exclusive access to their files. A ReadWriteMany file volume lets a "
            "second pod or a stale one open the same data directory from another node, "
            "bypassing the engine's locks: split brain and corrupted data files. RWX file "
            "storage is also several times slower on fsync-heavy write-ahead logs."
        ),
        fix=(
            "Give each database instance its own ReadWriteOnce (or ReadWriteOncePod) block "
            "volume, e.g. via StatefulSet volumeClaimTemplates, and replicate with the "
            "database's own replication."
        ),
        fix_yaml=(
            "volumeClaimTemplates:\n- metadata:\n    name: data\n  spec:\n"
            "    accessModes: [ReadWriteOncePod]\n    resources:\n      requests:\n"
            "        storage: 50Gi"
        ),
        example=_pvc("shared", "ReadWriteMany")
        + _deployment("mysql", "mysql:8.4", _CLAIM_VOLUME, extra="  strategy: {type: Recreate}\n"),
        tags=("data-corruption", "access-modes"),
    ),
    Rule(
        id="CH004",
        severity=Severity.MEDIUM,
        title="Non-root pod mounts a PVC without fsGroup",
        why=(
            "A fresh volume's root directory belongs to root. A container running as another "
            "user gets Permission denied on its own data directory and crash-loops, often "
            "only on the first real deployment, because local tests ran as root."
        ),
        fix=(
            "Set securityContext.fsGroup in the pod spec: the kubelet makes the volume "
            "group-owned by that GID. Add fsGroupChangePolicy: OnRootMismatch for large volumes."
        ),
        fix_yaml=(
            "securityContext:\n  runAsUser: 1000\n  runAsNonRoot: true\n  fsGroup: 1000\n"
            "  fsGroupChangePolicy: OnRootMismatch"
        ),
        example=_pvc("shared", "ReadWriteOnce")
        + _deployment(
            "app",
            "example.com/app:1.0",
            _CLAIM_VOLUME + "      securityContext: {runAsUser: 1000, runAsNonRoot: true}\n",
            extra="  strategy: {type: Recreate}\n",
        ),
        tags=("permissions",),
    ),
    Rule(
        id="CH005",
        severity=Severity.MEDIUM,
        title="No VolumeSnapshotClass for a CSI driver used by stateful workloads",
        why=(
            "Without a VolumeSnapshotClass for the driver, no VolumeSnapshot of these volumes "
            "can be taken: no fast point-in-time copy before an upgrade, no rollback after a "
            "bad migration. Recovery falls back to file-level backups and takes hours instead "
            "of minutes."
        ),
        fix=(
            "Install the external-snapshotter CRDs and controller and create a "
            "VolumeSnapshotClass for the driver (check that the driver supports snapshots)."
        ),
        fix_yaml=(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata:\n"
            "  name: fast-snapshots\ndriver: csi.cargohold.io\ndeletionPolicy: Retain"
        ),
        example=_SC_HEAD
        + "volumeBindingMode: WaitForFirstConsumer\nreclaimPolicy: Delete\n"
        + "allowVolumeExpansion: true\n"
        + _PG,
        tags=("backup",),
    ),
    Rule(
        id="CH006",
        severity=Severity.MEDIUM,
        title="Sensitive workload on ReadWriteOnce instead of ReadWriteOncePod",
        why=(
            "ReadWriteOnce limits a volume to one node, not to one pod: any other pod "
            "scheduled to that node that names the claim can mount it too. For data marked "
            "sensitive, ReadWriteOncePod makes the API server and kubelet guarantee that a "
            "single pod has it."
        ),
        fix=(
            "Use accessModes: [ReadWriteOncePod] (GA since Kubernetes 1.29; CSI drivers only). "
            "Access modes cannot be changed on a bound claim: create a new claim and copy or "
            "restore the data."
        ),
        fix_yaml="accessModes: [ReadWriteOncePod]",
        example=_PG.replace(
            "metadata:\n  name: pg\n",
            'metadata:\n  name: pg\n  labels:\n    audit.cargohold.io/sensitive: "true"\n',
        ),
        tags=("security", "access-modes"),
    ),
    Rule(
        id="CH007",
        severity=Severity.MEDIUM,
        title="CSI pod container without resource requests and limits",
        why=(
            "CSI controller and node pods (the driver and its sidecars: csi-provisioner, "
            "csi-attacher, csi-resizer, csi-snapshotter, node-driver-registrar, livenessprobe) "
            "run every volume operation. Without requests they are the first to be evicted or "
            "starved under node pressure; without a memory limit a leak takes the node down. "
            "Either way, attach, mount and provision calls hang cluster-wide."
        ),
        fix=(
            "Give every container of CSI pods cpu and memory requests and a memory limit "
            "(a CPU limit is optional: it throttles, and throttled sidecars time out), and "
            "consider priorityClassName: system-cluster-critical."
        ),
        fix_yaml=(
            "resources:\n  requests:\n    cpu: 10m\n    memory: 32Mi\n  limits:\n    memory: 128Mi"
        ),
        example="""apiVersion: apps/v1
kind: Deployment
metadata:
  name: csi-controller
  namespace: kube-system
spec:
  selector:
    matchLabels: {app: csi-controller}
  template:
    metadata:
      labels: {app: csi-controller}
    spec:
      containers:
      - name: csi-provisioner
        image: registry.k8s.io/sig-storage/csi-provisioner:v5.1.0
""",
        tags=("reliability", "csi"),
    ),
    Rule(
        id="CH008",
        severity=Severity.LOW,
        title="allowVolumeExpansion unset on a class of a growing workload",
        why=(
            "Databases, queues and StatefulSets grow. When a volume fills up, expanding the "
            "PVC is the quick fix, but only classes with allowVolumeExpansion: true allow it; "
            "otherwise the way out is a new volume and a data copy, during an outage."
        ),
        fix=(
            "Set allowVolumeExpansion: true (the driver must support expansion); this field "
            "can be changed on an existing class."
        ),
        fix_yaml="allowVolumeExpansion: true",
        example=_SC_HEAD + "volumeBindingMode: WaitForFirstConsumer\nreclaimPolicy: Delete\n" + _PG,
        tags=("capacity",),
    ),
    Rule(
        id="CH009",
        severity=Severity.HIGH,
        title="Several pods share one ReadWriteOnce PVC",
        why=(
            "A ReadWriteOnce volume attaches to one node. Extra replicas (or other workloads) "
            "that mount the same claim either stay in ContainerCreating with Multi-Attach "
            "errors when scheduled elsewhere, or land on the same node and write the same "
            "files without coordination. ReadWriteOncePod claims refuse the second pod outright."
        ),
        fix=(
            "Give each replica its own volume: a StatefulSet with volumeClaimTemplates; or "
            "keep one replica; or, if the application really shares files safely, a "
            "ReadWriteMany class."
        ),
        fix_yaml=(
            "kind: StatefulSet\nspec:\n  replicas: 3\n  volumeClaimTemplates:\n"
            "  - metadata:\n      name: data\n    spec:\n      accessModes: [ReadWriteOnce]\n"
            "      resources:\n        requests:\n          storage: 10Gi"
        ),
        example=_pvc("shared", "ReadWriteOnce")
        + _deployment("web", "nginx:1.27", _CLAIM_VOLUME, replicas=3),
        tags=("scheduling", "data-corruption"),
    ),
    Rule(
        id="CH010",
        severity=Severity.MEDIUM,
        title="Memory-backed emptyDir without sizeLimit",
        why=(
            "emptyDir with medium: Memory is a tmpfs; everything written there is charged to "
            "the pod's memory. Without a sizeLimit a runaway cache or log fills RAM until the "
            "container is OOM-killed or, without memory limits, the node runs short."
        ),
        fix="Set emptyDir.sizeLimit (and a memory limit on the containers that write there).",
        fix_yaml="emptyDir:\n  medium: Memory\n  sizeLimit: 512Mi",
        example="""apiVersion: v1
kind: Pod
metadata:
  name: cache
spec:
  containers:
  - name: app
    image: nginx:1.27
    volumeMounts:
    - {name: scratch, mountPath: /tmp/cache}
  volumes:
  - name: scratch
    emptyDir:
      medium: Memory
""",
        tags=("memory",),
    ),
    Rule(
        id="CH011",
        severity=Severity.LOW,
        title="Retain reclaim policy without a documented cleanup policy",
        why=(
            "With Retain, deleting a PVC leaves the PV Released and the disk alive: the data "
            "is orphaned, the provider keeps billing, and nobody can rebind it without manual "
            "work. Teams expecting deletion find volumes years later; teams expecting safety "
            "do not know how to get the data back."
        ),
        fix=(
            "Document how released volumes are cleaned up or recovered, e.g. an annotation "
            "audit.cargohold.io/cleanup-policy on the class pointing to the runbook or job; "
            "use Delete for state you can rebuild."
        ),
        fix_yaml=(
            "metadata:\n  annotations:\n    audit.cargohold.io/cleanup-policy: "
            '"weekly job pv-reaper deletes Released PVs older than 30d; runbook: https://..."'
        ),
        example=_SC_HEAD
        + "volumeBindingMode: WaitForFirstConsumer\nreclaimPolicy: Retain\n"
        + "allowVolumeExpansion: true\n",
        tags=("cost", "data-lifecycle"),
    ),
    Rule(
        id="CH012",
        severity=Severity.INFO,
        title="Snapshot-capable driver without a snapshot schedule",
        why=(
            "A VolumeSnapshotClass makes snapshots possible, but nothing takes them unless "
            "something is scheduled. The recovery point is then whenever someone last "
            "remembered."
        ),
        fix=(
            "Schedule snapshots: a CronJob that creates VolumeSnapshots, a SnapshotSchedule "
            "(backube/snapscheduler), a velero Schedule or your database operator's scheduled "
            "backups. The auditor recognises these when they are in its inputs."
        ),
        fix_yaml=(
            "apiVersion: snapscheduler.backube/v1\nkind: SnapshotSchedule\nmetadata:\n"
            '  name: hourly\nspec:\n  schedule: "0 * * * *"\n  retention:\n    maxCount: 24'
        ),
        example=_SC_HEAD
        + "volumeBindingMode: WaitForFirstConsumer\nreclaimPolicy: Delete\n"
        + "allowVolumeExpansion: true\n---\n"
        + "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata:\n"
        + "  name: fast-snapshots\ndriver: csi.cargohold.io\ndeletionPolicy: Retain\n"
        + _PG,
        tags=("backup",),
    ),
    Rule(
        id="CH013",
        severity=Severity.HIGH,
        title="Sensitive data on a StorageClass without encryption",
        why=(
            "The class, or a namespace whose claims use it, is marked as holding sensitive "
            "data, but the class asks the driver for no encryption. Disks, snapshots and "
            "backups of these volumes are then readable by anyone who gets the raw blocks."
        ),
        fix=(
            'Turn on encryption in the class parameters (ebs: encrypted: "true" and '
            'kmsKeyId; ceph rbd: encrypted: "true"; cargohold: encrypted: "true"), in a new '
            "class, and move the claims to it."
        ),
        fix_yaml='parameters:\n  encrypted: "true"',
        example="""apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: payments
  labels:
    data-classification: confidential
provisioner: ebs.csi.aws.com
parameters:
  type: gp3
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
allowVolumeExpansion: true
""",
        tags=("security", "encryption"),
    ),
    Rule(
        id="CH014",
        severity=Severity.HIGH,
        title="PVC without storageClassName and no default StorageClass",
        why=(
            "A claim that names no class gets the default class. When the inputs define "
            "StorageClasses but none is marked default, such a claim is never provisioned and "
            "stays Pending, and so do the pods that mount it."
        ),
        fix=(
            "Set storageClassName on the claim (or the volumeClaimTemplate), or mark one class "
            'with the annotation storageclass.kubernetes.io/is-default-class: "true".'
        ),
        fix_yaml="spec:\n  storageClassName: fast",
        example=_SC_HEAD
        + "volumeBindingMode: WaitForFirstConsumer\nreclaimPolicy: Delete\n"
        + "allowVolumeExpansion: true\n---\n"
        + "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n"
        + "  accessModes: [ReadWriteOnce]\n  resources:\n    requests: {storage: 1Gi}\n",
        tags=("provisioning",),
    ),
    Rule(
        id="CH015",
        severity=Severity.MEDIUM,
        title="Single-replica Deployment with a ReadWriteOnce PVC and RollingUpdate",
        why=(
            "A RollingUpdate starts the new pod before stopping the old one. If the new pod "
            "lands on another node, it waits on a volume still attached to the old node "
            "(Multi-Attach error) and the rollout stalls; with ReadWriteOncePod it always does."
        ),
        fix="Use strategy type Recreate for Deployments that own a ReadWriteOnce volume, "
        "or turn the Deployment into a StatefulSet.",
        fix_yaml="spec:\n  strategy:\n    type: Recreate",
        example=_pvc("shared", "ReadWriteOnce")
        + _deployment("app", "example.com/app:1.0", _CLAIM_VOLUME),
        tags=("rollout",),
    ),
    Rule(
        id="CH016",
        severity=Severity.LOW,
        title="ReadWriteMany volume with several writers",
        why=(
            "Several pods write one ReadWriteMany file system. That is what RWX is for, but "
            "network file systems give weak locking and close-to-open consistency: unless "
            "the application coordinates its writers (or writes disjoint files), concurrent "
            "writes interleave or get lost."
        ),
        fix=(
            "Confirm the application handles concurrent writers (then suppress with the "
            "annotation audit.cargohold.io/ignore: CH016 on the PVC), or give each writer its "
            "own volume, or mount the shared volume readOnly where pods only read."
        ),
        fix_yaml=(
            "metadata:\n  annotations:\n    audit.cargohold.io/ignore: CH016  # writers use "
            "per-pod directories"
        ),
        example=_pvc("shared", "ReadWriteMany")
        + _deployment("uploader", "example.com/uploader:2.3", _CLAIM_VOLUME, replicas=3),
        tags=("data-corruption", "access-modes"),
    ),
)

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}
