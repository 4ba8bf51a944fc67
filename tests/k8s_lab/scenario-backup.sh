#!/bin/bash
: "${LAB:?set LAB to the lab folder}"
# Backups through VolumeSnapshots in a real Kubernetes: run inside ../shared/k8s-lab after
# `lab.sh all` (copy it next to the lab's scenario.sh). Prints PASS/FAIL per check.
set -uo pipefail
LAB=$LAB
export KUBECONFIG=$LAB/admin.kubeconfig
NS=scenario
pass=0; fail=0
ok() { echo "PASS: $*"; pass=$((pass+1)); }
ko() { echo "FAIL: $*"; fail=$((fail+1)); }
check() { local desc=$1; shift; if "$@"; then ok "$desc"; else ko "$desc"; fi; }
until_true() { local t=$1; shift; for _ in $(seq 1 "$t"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done; return 1; }
jp() { kubectl -n $NS get "$1" -o jsonpath="$2" 2>/dev/null; }
KUBELET=0; curl -sf http://127.0.0.1:10248/healthz >/dev/null 2>&1 && KUBELET=1
SCHED=0; curl -sfk https://127.0.0.1:10259/healthz >/dev/null 2>&1 && SCHED=1
echo "kubelet=$KUBELET scheduler=$SCHED"

kubectl delete ns $NS --wait=true --timeout=120s >/dev/null 2>&1
kubectl create ns $NS >/dev/null
pvc() { # name size [sc] [datasource-yaml]
  cat <<EOT | kubectl apply -f - >/dev/null
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1, namespace: $NS}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ${3:-cargohold}
  resources: {requests: {storage: $2}}
${4:-}
EOT
}
pod() { # name pvc command [nodeName]
  cat <<EOT | kubectl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS}
spec:
  ${4:+nodeName: $4}
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: k8slab/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "$3; sleep 36000"]
    volumeMounts: [{name: v, mountPath: /data}]
  volumes:
  - name: v
    persistentVolumeClaim: {claimName: $2}
EOT
}
podlog() { cat "$LAB"/kubelet/pod-logs/${NS}_$1_*/c/0.log /var/log/pods/${NS}_$1_*/c/0.log 2>/dev/null || true; }
bound() { [ "$(jp pvc/$1 '{.status.phase}')" = Bound ]; }


# backups through VolumeSnapshots (deploy/examples/backups): a target "nfs" in the manager, a
# VolumeSnapshot of class cargohold-backup-nfs, a PVC restored from it, its data compared
C="$LAB/cargohold/.venv/bin/cargohold"
export CARGOHOLD_DIR=$LAB/cluster
rm -rf "$LAB/backups"; mkdir -p "$LAB/backups"
rm -f "$LAB/nfs.key"
"$C" backup-target delete nfs >/dev/null 2>&1
check "backup target added with the CLI" "$C" backup-target add nfs "file://$LAB/backups" --generate-key "$LAB/nfs.key"
kubectl apply -k "$LAB/cargohold/deploy/examples/backups" >/dev/null
pvc bk-a 256Mi
check "PVC Bound" until_true 60 bound bk-a
pod bk-writer bk-a "dd if=/dev/urandom of=/data/blob bs=1M count=8 && sync && sha256sum /data/blob && echo WROTE" node-1
wrote() { podlog bk-writer | grep -q WROTE; }
check "writer pod wrote 8 MiB" until_true 120 wrote
SHA=$(podlog bk-writer | grep '/data/blob' | awk '{print $4}')
kubectl -n $NS delete pod bk-writer --wait=true --timeout=60s >/dev/null
cat <<EOT | kubectl apply -f - >/dev/null
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: bk-snap, namespace: $NS}
spec:
  volumeSnapshotClassName: cargohold-backup-nfs
  source: {persistentVolumeClaimName: bk-a}
EOT
ready() { [ "$(jp volumesnapshot/bk-snap '{.status.readyToUse}')" = true ]; }
check "backup VolumeSnapshot readyToUse" until_true 120 ready
echo "  snapshot handle: $(kubectl get volumesnapshotcontent -o jsonpath='{.items[*].status.snapshotHandle}')"
check "the manager lists the backup" sh -c "'$C' backup list -o json | grep -q bk-pvc"
pvc bk-restore 256Mi cargohold "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: bk-snap}"
check "PVC restored from the backup Bound" until_true 120 bound bk-restore
pod bk-reader bk-restore "sha256sum /data/blob && echo READ" node-1
read_ok() { podlog bk-reader | grep -q READ; }
check "reader pod on the restored volume" until_true 120 read_ok
got=$(podlog bk-reader | grep '/data/blob' | awk '{print $4}')
check "restored data equals written data ($SHA)" test -n "$SHA" -a "$SHA" = "$got"
kubectl -n $NS delete pod --all --wait=true --timeout=60s >/dev/null 2>&1
kubectl -n $NS delete volumesnapshot --all --wait=true --timeout=60s >/dev/null 2>&1
kubectl -n $NS delete pvc --all --wait=true --timeout=60s >/dev/null 2>&1
check "the backup outlives its VolumeSnapshot (deletionPolicy Retain)" sh -c "'$C' backup list -o json | grep -q bk-pvc"
echo "$pass passed, $fail failed"
[ $fail = 0 ]
