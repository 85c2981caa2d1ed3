#!/usr/bin/env bash
# Builds the CSI pieces of the local test cluster once per version and caches
# them outside the repository, in ~/.cache/kube-backup/csi/<versions>/:
#
#   snapshot-controller, csi-snapshotter   github.com/kubernetes-csi/external-snapshotter/v8
#   csi-provisioner                         github.com/kubernetes-csi/external-provisioner/v5
#   kb-csi-hostpath                         e2e/csi/hostpath (this repo: a small hostpath CSI
#                                           driver + kubelet plugin registrar, see its README)
#
# The upstream binaries come from their official Go modules through the Go module
# proxy (a wrapper module requires the upstream module and repeats its replace
# directives, which a dependent module does not inherit). The proxy does not serve
# github.com/kubernetes-csi/csi-driver-host-path nor node-driver-registrar, so the
# driver and the registrar are the repo's own small Go program.
#
#   build.sh [all|hostpath|upstream]   build what is missing, print the bin dir on stdout
#   build.sh --print                   only print the bin dir
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.7.0}
PROVISIONER_VERSION=${PROVISIONER_VERSION:-v5.3.0}
CACHE=${KB_CACHE:-$HOME/.cache/kube-backup}
CSI_OUT=$CACHE/csi/snapshotter-$SNAPSHOTTER_VERSION-provisioner-$PROVISIONER_VERSION
# Our driver is rebuilt when its source changes.
HOSTPATH_HASH=$( (cat "$HERE/hostpath/go.mod" "$HERE/hostpath/go.sum" "$HERE"/hostpath/*.go 2>/dev/null || true) | sha256sum | cut -c1-12)

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ "${1:-}" = --print ]; then echo "$CSI_OUT"; exit 0; fi

command -v go >/dev/null 2>&1 || die "'go' not found. Install Go 1.26 or newer and make sure the Go module proxy is reachable."
PROXY=$(go env GOPROXY | tr ',|' '\n' | grep -m1 '^http' || echo https://proxy.golang.org)

# build_module MODULE VERSION CMD...: builds MODULE/CMD at VERSION into $CSI_OUT.
build_module() {
  local module=$1 version=$2; shift 2
  local missing=0 c
  for c in "$@"; do [ -x "$CSI_OUT/$(basename "$c")" ] || missing=1; done
  if [ $missing = 0 ]; then log "$module $version: cached in $CSI_OUT"; return; fi
  local t0=$SECONDS
  log "$module $version: building $* from the Go module proxy (once)"
  local work
  work=$CACHE/build/csi-$(echo "$module" | tr '/' '_')-$version
  rm -rf "$work"
  mkdir -p "$work" "$CSI_OUT"
  curl -fsSL "$PROXY/$module/@v/$version.mod" >"$work/upstream.mod" ||
    die "the Go module proxy ($PROXY) does not serve $module@$version"
  {
    echo "module kubebackup/csibuild"
    echo "go $(awk '$1 == "go" {print $2; exit}' "$work/upstream.mod")"
    echo "require $module $version"
    # Replace directives of the upstream go.mod: versioned ones verbatim; one
    # pointing at a directory of the same repository (./client) becomes the
    # published submodule at the same version.
    awk -v v="$version" '
      /^replace[ \t]/ { sub(/^replace[ \t]+/, ""); line = $0; inblock = 0 }
      /^replace[ \t]*\($/ { inblock = 1; next }
      inblock && /^\)/ { inblock = 0; next }
      inblock { line = $0 }
      line != "" {
        n = split(line, f, /[ \t]+/); i = 1; while (f[i] == "") i++
        lhs = f[i]; arrow = 0
        for (j = i; j <= n; j++) if (f[j] == "=>") { arrow = j; break }
        if (arrow && f[arrow + 1] ~ /^\.\.?\//) print "replace " lhs " => " lhs " " v
        else if (arrow) { out = "replace"; for (j = i; j <= n; j++) out = out " " f[j]; print out }
        line = ""
      }' "$work/upstream.mod"
  } >"$work/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for c in "$@"; do echo "	_ \"$module/$c\""; done
    echo ")"
  } >"$work/tools.go"
  (
    cd "$work"
    GOFLAGS=-mod=mod go mod tidy -e >tidy.log 2>&1 || true
    local pkgs=()
    for c in "$@"; do pkgs+=("$module/$c"); done
    GOFLAGS=-mod=mod nice -n 10 go build -trimpath \
      -ldflags "-s -w -X main.version=$version" -o "$CSI_OUT/" "${pkgs[@]}"
  ) || die "building $module $version failed (work dir $work)"
  log "$module $version: built in $((SECONDS - t0))s"
}

build_hostpath() {
  local bin=$CSI_OUT/kb-csi-hostpath-$HOSTPATH_HASH
  if [ -x "$bin" ]; then log "kb-csi-hostpath: cached ($bin)"; else
    local t0=$SECONDS
    log "kb-csi-hostpath: building from $HERE/hostpath"
    mkdir -p "$CSI_OUT"
    (cd "$HERE/hostpath" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .) ||
      die "building the hostpath driver failed"
    mv "$bin.tmp" "$bin"
    log "kb-csi-hostpath: built in $((SECONDS - t0))s"
  fi
  ln -sfn "$(basename "$bin")" "$CSI_OUT/kb-csi-hostpath"
}

build_upstream() {
  build_module github.com/kubernetes-csi/external-snapshotter/v8 "$SNAPSHOTTER_VERSION" \
    cmd/snapshot-controller cmd/csi-snapshotter
  build_module github.com/kubernetes-csi/external-provisioner/v5 "$PROVISIONER_VERSION" cmd/csi-provisioner
}

T0=$SECONDS
case "${1:-all}" in
  all) build_hostpath; build_upstream ;;
  hostpath) build_hostpath ;;
  upstream) build_upstream ;;
  *) echo "usage: $0 [all|hostpath|upstream|--print]" >&2; exit 2 ;;
esac
log "csi binaries ready in $CSI_OUT ($((SECONDS - T0))s)"
echo "$CSI_OUT"
