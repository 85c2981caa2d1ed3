#!/usr/bin/env bash
# Builds container images without Docker or a registry and loads them into the
# local cluster's containerd (namespace k8s.io), where pods find them with
# imagePullPolicy IfNotPresent.
#
#   images.sh base              pause (sandbox) + busybox images
#   images.sh operator [IMG]    backup-operator + backup-mover (same content as the Dockerfile)
#   images.sh load TAR...       import archives into the running cluster
#
# Archives are cached in ~/.cache/kube-backup/images.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
mkdir -p "$IMAGES"

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

load() {
  [ -S "$CONTAINERD_SOCK" ] || die "the local cluster's containerd is not running ($CONTAINERD_SOCK); run 'make cluster-up' first"
  local tar
  for tar in "$@"; do
    ctr_ images import "$tar" >/dev/null
    log "loaded $(basename "$tar")"
  done
}

# build_base: the sandbox image and a busybox image, from static binaries.
build_base() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  if [ ! -f "$IMAGES/pause.tar" ] || [ "$HERE/images/pause.c" -nt "$IMAGES/pause.tar" ]; then
    mkdir -p "$work/pause"
    gcc -static -Os -s -o "$work/pause/pause" "$HERE/images/pause.c"
    python3 "$HERE/oci-image.py" --name "$PAUSE_IMAGE" --rootfs "$work/pause" \
      --entrypoint '["/pause"]' --out "$IMAGES/pause.tar" >/dev/null
  fi
  if [ ! -f "$IMAGES/busybox.tar" ]; then
    local bb=/bin/busybox
    [ -x "$bb" ] || die "busybox-static is not installed (apt-get install busybox-static)"
    mkdir -p "$work/bb/bin" "$work/bb/tmp" "$work/bb/etc"
    chmod 1777 "$work/bb/tmp"
    cp "$bb" "$work/bb/bin/busybox"
    local applet
    for applet in $("$bb" --list); do
      [ "$applet" = busybox ] || ln -s busybox "$work/bb/bin/$applet"
    done
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$work/bb/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$work/bb/etc/group"
    python3 "$HERE/oci-image.py" --name "$BUSYBOX_IMAGE" --rootfs "$work/bb" \
      --cmd '["/bin/sh"]' --env PATH=/bin --out "$IMAGES/busybox.tar" >/dev/null
  fi
}

# build_operator IMG: cargo release build of the two binaries (static), then
# the same layout as the Dockerfile's final stage.
build_operator() {
  local img=$1 target flags=() work
  if [[ $(rustup target list --installed 2>/dev/null) == *x86_64-unknown-linux-musl* ]] ||
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
    target=x86_64-unknown-linux-musl
  else
    # No musl target to be had: a static glibc build (fine for IP endpoints;
    # glibc cannot load NSS modules in a FROM-scratch image).
    target=x86_64-unknown-linux-gnu
    flags=(-C target-feature=+crt-static)
  fi
  log "cargo build --release --target $target -p backup-operator -p backup-mover"
  (cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:-} ${flags[*]}" cargo build --release --target "$target" \
    -p backup-operator -p backup-mover --bin backup-operator --bin backup-mover)
  local tdir
  tdir=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  local out=$tdir/$target/release
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/etc/ssl/certs" "$work/usr/share" "$work/tmp"
  chmod 1777 "$work/tmp"
  cp "$out/backup-operator" "$out/backup-mover" "$work/"
  cp /etc/ssl/certs/ca-certificates.crt "$work/etc/ssl/certs/"
  cp -a /usr/share/zoneinfo "$work/usr/share/zoneinfo"
  local file
  file="$IMAGES/$(echo "$img" | tr '/:' '__').tar"
  python3 "$HERE/oci-image.py" --name "$img" --rootfs "$work" --entrypoint '["/backup-operator"]' \
    --env PATH=/ --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --out "$file" >/dev/null
  echo "$file"
}

case "${1:-}" in
  base)
    build_base
    [ "${2:-}" = --no-load ] || load "$IMAGES/pause.tar" "$IMAGES/busybox.tar"
    ;;
  operator)
    tar=$(build_operator "${2:-$IMG}")
    log "built ${2:-$IMG} -> $tar"
    [ "${3:-}" = --no-load ] || load "$tar"
    ;;
  load)
    shift
    load "$@"
    ;;
  *)
    echo "usage: $0 base [--no-load] | operator [IMG] [--no-load] | load TAR..." >&2
    exit 2
    ;;
esac
