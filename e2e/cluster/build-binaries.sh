#!/usr/bin/env bash
# Builds the upstream Kubernetes and etcd binaries the local test cluster runs,
# from their official Go modules, once per version. Output is cached outside the
# repository (~/.cache/kube-backup/...) so later cluster-ups start in seconds.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.35.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
CACHE=${KB_CACHE:-$HOME/.cache/kube-backup}
K8S_OUT=$CACHE/k8s/$K8S_VERSION
ETCD_OUT=$CACHE/etcd/$ETCD_VERSION

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' not found. $2" >&2; exit 1; }; }
need go "Install Go 1.24 or newer (https://go.dev/dl/) and make sure the Go module proxy is reachable."

build_k8s() {
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
  local missing=0
  for b in "${bins[@]}"; do [ -x "$K8S_OUT/$b" ] || missing=1; done
  [ $missing = 1 ] || { echo "kubernetes $K8S_VERSION: cached in $K8S_OUT"; return; }
  echo "kubernetes $K8S_VERSION: building ${bins[*]} from Go modules (10-20 min on 2 cores, once)"
  local work=$CACHE/build/k8s-$K8S_VERSION
  mkdir -p "$work" "$K8S_OUT"
  cd "$work"
  local staging=v0.${K8S_VERSION#v1.}
  # k8s.io/kubernetes replaces its staging modules with local paths; a module
  # depending on it must pin each of them at the matching v0.x.y itself.
  curl -fsSL "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$K8S_VERSION.mod" > upstream.mod
  {
    echo "module kubebackup/k8sbuild"
    echo "go 1.24"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' upstream.mod | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  GOFLAGS=-mod=mod go mod download >/dev/null
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  local pkgs=()
  for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$K8S_OUT/" "${pkgs[@]}"
  echo "kubernetes $K8S_VERSION: built into $K8S_OUT"
}

build_etcd() {
  [ -x "$ETCD_OUT/etcd" ] && { echo "etcd $ETCD_VERSION: cached in $ETCD_OUT"; return; }
  echo "etcd $ETCD_VERSION: building from Go modules"
  local work=$CACHE/build/etcd-$ETCD_VERSION
  mkdir -p "$work" "$ETCD_OUT"
  cd "$work"
  cat > go.mod <<MOD
module kubebackup/etcdbuild
go 1.24
require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$ETCD_OUT/etcd" go.etcd.io/etcd/server/v3
  echo "etcd $ETCD_VERSION: built into $ETCD_OUT"
}

case "${1:-all}" in
  k8s) build_k8s ;;
  etcd) build_etcd ;;
  all) build_etcd; build_k8s ;;
  *) echo "usage: $0 [all|k8s|etcd]" >&2; exit 2 ;;
esac
