#!/usr/bin/env bash
# Adds CSI snapshots to the running local cluster (make cluster-up):
#   - the VolumeSnapshot, VolumeSnapshotContent and VolumeSnapshotClass CRDs,
#     read at run time from the external-snapshotter client module in the Go
#     module cache (no copies in this repo);
#   - host processes talking to the API server through the cluster's kubeconfig,
#     each recorded in ~/.cache/kube-backup/cluster/csi/pids and stopped exactly
#     by csi-down.sh: the hostpath CSI driver (unix socket in the kubelet's
#     plugin dir), its kubelet registrar, csi-provisioner, csi-snapshotter and
#     snapshot-controller (no TCP listener at all);
#   - the CSIDriver object, StorageClass `csi-hostpath` and VolumeSnapshotClass
#     `csi-hostpath-snapclass`.
# Idempotent: when everything runs it says so. Stop with csi-down.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# Settings of the local cluster (paths, node name); read only.
# shellcheck source=../cluster/lib.sh disable=SC1091
. "$HERE/../cluster/lib.sh"
T0=$SECONDS

DRIVER=hostpath.csi.k8s.io
STORAGE_CLASS=csi-hostpath
SNAPSHOT_CLASS=csi-hostpath-snapclass
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.7.0}
export SNAPSHOTTER_VERSION
CSI_STATE=$STATE/csi
# lib.sh's start/stop/pid_of keep PIDs in $PIDS and logs in $LOGS: ours go apart.
PIDS=$CSI_STATE/pids
LOGS=$CSI_STATE/logs
COMPONENTS=(kb-csi-hostpath kb-csi-registrar csi-provisioner csi-snapshotter snapshot-controller)

if [ ! -f "$KUBECONFIG_PATH" ] || ! kubectl_ get --raw /readyz >/dev/null 2>&1; then
  die "the local cluster is not running (no API server behind $KUBECONFIG_PATH); run 'make cluster-up' first"
fi

# The kubelet's root dir: from the running kubelet's command line, else lib.sh's layout.
kubelet_root() {
  local pid arg prev=""
  if pid=$(pid_of_cluster kubelet); then
    while IFS= read -r -d '' arg; do
      case $arg in --root-dir=*) echo "${arg#--root-dir=}"; return ;; esac
      [ "$prev" = --root-dir ] && { echo "$arg"; return; }
      prev=$arg
    done <"/proc/$pid/cmdline"
  fi
  echo "$STATE/kubelet/root"
}
pid_of_cluster() { PIDS=$STATE/pids pid_of "$1"; }

KUBELET_ROOT=$(kubelet_root)
PLUGIN_DIR=$KUBELET_ROOT/plugins/$DRIVER
CSI_SOCK=$PLUGIN_DIR/csi.sock
REG_SOCK=$KUBELET_ROOT/plugins_registry/$DRIVER-reg.sock

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
  [ -S "$CSI_SOCK" ] && [ -S "$REG_SOCK" ]
}
driver_registered() {
  kubectl_ get csinode "$NODE_NAME" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw "$DRIVER"
}

if all_running && driver_registered; then
  echo "the CSI stack is already running (driver $DRIVER, StorageClass $STORAGE_CLASS, VolumeSnapshotClass $SNAPSHOT_CLASS)"
  exit 0
fi
if compgen -G "$PIDS/*.pid" >/dev/null; then
  log "found leftovers of an earlier CSI stack; stopping them first"
  "$HERE/csi-down.sh"
fi

# --- binaries and upstream CRDs ------------------------------------------------
BIN=$("$HERE/build.sh")
CRD_DIR=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/config/crd
[ -f "$CRD_DIR/snapshot.storage.k8s.io_volumesnapshots.yaml" ] || die "snapshot CRDs not found in $CRD_DIR"

mkdir -p "$PIDS" "$LOGS" "$CSI_STATE/data" "$PLUGIN_DIR" "$KUBELET_ROOT/plugins_registry"
# The driver's volumes belong to one cluster: a new cluster (new kube-system
# UID) starts with an empty data dir.
uid=$(kubectl_ get namespace kube-system -o jsonpath='{.metadata.uid}')
if [ "$(cat "$CSI_STATE/cluster-uid" 2>/dev/null)" != "$uid" ]; then
  rm -rf "$CSI_STATE/data"
  mkdir -p "$CSI_STATE/data"
  echo "$uid" >"$CSI_STATE/cluster-uid"
fi

cleanup_on_failure() {
  local rc=$?
  if ((rc != 0)); then
    echo "csi-up failed; stopping what it started (logs kept in $LOGS)" >&2
    KB_KEEP_LOGS=1 "$HERE/csi-down.sh" >&2 || true
  fi
}
trap cleanup_on_failure EXIT

# The group snapshot CRDs too: snapshot-controller v8.7 waits 30 s for them
# (VolumeGroupSnapshot is GA there) before it starts without them.
log "applying the snapshot CRDs ($SNAPSHOTTER_VERSION)"
crds=()
for kind in snapshot.storage.k8s.io_volumesnapshotclasses snapshot.storage.k8s.io_volumesnapshotcontents \
  snapshot.storage.k8s.io_volumesnapshots groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses \
  groupsnapshot.storage.k8s.io_volumegroupsnapshotcontents groupsnapshot.storage.k8s.io_volumegroupsnapshots; do
  [ -f "$CRD_DIR/$kind.yaml" ] || continue
  kubectl_ apply --server-side --force-conflicts -f "$CRD_DIR/$kind.yaml" >/dev/null
  crds+=("crd/${kind#*_}.${kind%%_*}")
done
kubectl_ wait --for condition=Established --timeout=30s "${crds[@]}" >/dev/null

kubectl_ apply --server-side --force-conflicts -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: $DRIVER
spec:
  attachRequired: false
  podInfoOnMount: false
  volumeLifecycleModes: [Persistent]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $STORAGE_CLASS
provisioner: $DRIVER
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: $SNAPSHOT_CLASS
driver: $DRIVER
deletionPolicy: Delete
EOF

# --- processes -------------------------------------------------------------------
log "starting the hostpath CSI driver ($CSI_SOCK)"
start kb-csi-hostpath "$BIN/kb-csi-hostpath" driver -driver-name "$DRIVER" \
  -endpoint "unix://$CSI_SOCK" -data-dir "$CSI_STATE/data" -node-id "$NODE_NAME"
wait_until "CSI driver socket" 30 kb-csi-hostpath test -S "$CSI_SOCK"

log "starting the kubelet registrar ($REG_SOCK)"
start kb-csi-registrar "$BIN/kb-csi-hostpath" registrar -driver-name "$DRIVER" \
  -csi-address "$CSI_SOCK" -registration-socket "$REG_SOCK"

log "starting csi-provisioner, csi-snapshotter, snapshot-controller"
start csi-provisioner "$BIN/csi-provisioner" --csi-address "$CSI_SOCK" --kubeconfig "$KUBECONFIG_PATH" \
  --leader-election=false --extra-create-metadata --timeout 60s --v 2
start csi-snapshotter "$BIN/csi-snapshotter" --csi-address "$CSI_SOCK" --kubeconfig "$KUBECONFIG_PATH" \
  --leader-election=false --extra-create-metadata --timeout 60s --v 2
start snapshot-controller "$BIN/snapshot-controller" --kubeconfig "$KUBECONFIG_PATH" \
  --leader-election=false --v 2

wait_until "driver $DRIVER registered with the kubelet (CSINode $NODE_NAME)" 60 kb-csi-registrar driver_registered
sleep 1
for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || fail_component "$c" "$c exited right after start"; done

trap - EXIT
log "CSI stack up in $((SECONDS - T0))s"
cat <<EOF
CSI snapshots are available on the local cluster
  StorageClass: $STORAGE_CLASS (provisioner $DRIVER)   VolumeSnapshotClass: $SNAPSHOT_CLASS
  state: $CSI_STATE   logs: $LOGS
  stop with: make csi-down
EOF
