#!/usr/bin/env bash
# Stops what csi-up.sh started, by recorded PID only, and removes its sockets
# and the driver's mounts under the kubelet's dir.
#   csi-down.sh           stop the processes (CRDs, classes and snapshots stay)
#   csi-down.sh --purge   first delete every VolumeSnapshot (while the
#                         controllers still run), then stop, then remove the
#                         classes, the CSIDriver, the CRDs and the driver's data
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../cluster/lib.sh disable=SC1091
. "$HERE/../cluster/lib.sh"

DRIVER=hostpath.csi.k8s.io
CSI_STATE=$STATE/csi
PIDS=$CSI_STATE/pids
[ -d "$CSI_STATE" ] || { echo "no CSI state in $CSI_STATE"; exit 0; }

api_up() { [ -f "$KUBECONFIG_PATH" ] && kubectl_ get --raw /readyz >/dev/null 2>&1; }

if [ "${1:-}" = --purge ] && api_up; then
  log "deleting all VolumeSnapshots and PVCs of class csi-hostpath"
  kubectl_ delete volumesnapshots --all -A --wait=true --timeout=60s >/dev/null 2>&1
  for pvc in $(kubectl_ get pvc -A -o jsonpath='{range .items[?(@.spec.storageClassName=="csi-hostpath")]}{.metadata.namespace}/{.metadata.name}{" "}{end}' 2>/dev/null); do
    kubectl_ -n "${pvc%%/*}" delete pvc "${pvc#*/}" --wait=false >/dev/null 2>&1
  done
fi

for c in snapshot-controller csi-snapshotter csi-provisioner kb-csi-registrar kb-csi-hostpath; do
  stop "$c" 10
done

# Sockets and the driver's bind mounts below the kubelet dir.
for dir in "$STATE/kubelet/root" /var/lib/kubelet; do
  rm -f "$dir/plugins_registry/$DRIVER-reg.sock" "$dir/plugins/$DRIVER/csi.sock" 2>/dev/null
done
if [ -d "$CSI_STATE/data/volumes" ]; then
  # A mount whose source is one of our volume dirs (mountinfo field 4 is the root
  # inside the source filesystem, so compare by the target's device+inode instead).
  while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null
  done < <(awk '$5 ~ /kubernetes.io~csi/ {print $5}' /proc/self/mountinfo | while read -r t; do
    for v in "$CSI_STATE"/data/volumes/*; do
      [ -d "$v" ] && [ "$(stat -c %d:%i "$t" 2>/dev/null)" = "$(stat -c %d:%i "$v")" ] && { echo "$t"; break; }
    done
  done)
fi

if [ "${1:-}" = --purge ]; then
  if api_up; then
    kubectl_ delete volumesnapshotclass csi-hostpath-snapclass --ignore-not-found >/dev/null 2>&1
    kubectl_ delete storageclass csi-hostpath --ignore-not-found >/dev/null 2>&1
    kubectl_ delete csidriver "$DRIVER" --ignore-not-found >/dev/null 2>&1
    kubectl_ delete crd volumesnapshots.snapshot.storage.k8s.io volumesnapshotcontents.snapshot.storage.k8s.io \
      volumesnapshotclasses.snapshot.storage.k8s.io volumegroupsnapshots.groupsnapshot.storage.k8s.io \
      volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io volumegroupsnapshotclasses.groupsnapshot.storage.k8s.io \
      --ignore-not-found --wait=false >/dev/null 2>&1
  fi
  rm -rf "$CSI_STATE"
  log "purged $CSI_STATE"
else
  rm -rf "$PIDS" # logs stay in $CSI_STATE/logs for a look afterwards
fi
log "CSI stack stopped"
