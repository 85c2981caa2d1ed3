#!/usr/bin/env bash
# CSI snapshots on a kind cluster (machines with Docker and internet), from the
# upstream manifests: the snapshot CRDs and snapshot-controller of
# external-snapshotter (read from the Go module cache when Go is installed,
# else from GitHub through kustomize), then csi-driver-host-path's own deploy
# script (driver, node-driver-registrar, provisioner, snapshotter, its
# VolumeSnapshotClass csi-hostpath-snapclass), plus the StorageClass
# csi-hostpath the tests use. Nothing is copied into this repository.
#   KUBECONFIG / kubectl context: the kind cluster (make kind-up)
set -euo pipefail
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.7.0}
HOSTPATH_VERSION=${HOSTPATH_VERSION:-v1.17.0}
CACHE=${KB_CACHE:-$HOME/.cache/kube-backup}
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if command -v go >/dev/null 2>&1; then
  mod_dir() { go mod download -json "$1@$SNAPSHOTTER_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'; }
  CRDS=$(mod_dir github.com/kubernetes-csi/external-snapshotter/client/v8)/config/crd
  CONTROLLER=$(mod_dir github.com/kubernetes-csi/external-snapshotter/v8)/deploy/kubernetes/snapshot-controller
else
  CRDS="https://github.com/kubernetes-csi/external-snapshotter/client/config/crd?ref=$SNAPSHOTTER_VERSION"
  CONTROLLER="https://github.com/kubernetes-csi/external-snapshotter/deploy/kubernetes/snapshot-controller?ref=$SNAPSHOTTER_VERSION"
fi
log "snapshot CRDs and snapshot-controller $SNAPSHOTTER_VERSION"
kubectl kustomize "$CRDS" | kubectl apply --server-side --force-conflicts -f -
kubectl wait --for condition=Established --timeout=60s crd/volumesnapshots.snapshot.storage.k8s.io
kubectl kustomize "$CONTROLLER" | kubectl apply --server-side --force-conflicts -f -

src=$CACHE/csi/kind/csi-driver-host-path-$HOSTPATH_VERSION
if [ ! -d "$src" ]; then
  mkdir -p "$(dirname "$src")"
  git clone -q --depth 1 --branch "$HOSTPATH_VERSION" https://github.com/kubernetes-csi/csi-driver-host-path "$src"
fi
log "csi-driver-host-path $HOSTPATH_VERSION (deploy/kubernetes-latest/deploy.sh)"
"$src/deploy/kubernetes-latest/deploy.sh"
kubectl apply -f - <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: csi-hostpath
provisioner: hostpath.csi.k8s.io
reclaimPolicy: Delete
volumeBindingMode: Immediate
YAML
kubectl get volumesnapshotclass csi-hostpath-snapclass >/dev/null
log "kind: StorageClass csi-hostpath and VolumeSnapshotClass csi-hostpath-snapclass ready"
