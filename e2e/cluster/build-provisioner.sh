#!/usr/bin/env bash
# Builds the hostPath provisioner (test tooling, crate e2e) once and caches it in
# ~/.cache/kube-backup/bin; rebuilds only when its source changed. Prints its path.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
SRC=$REPO/e2e/src/bin/hostpath-provisioner.rs
OUT=$CACHE/bin/hostpath-provisioner
mkdir -p "$CACHE/bin"
stamp=$(cat "$SRC" "$REPO/e2e/Cargo.toml" | sha256sum | cut -c1-16)
if [ -x "$OUT" ] && [ "$(cat "$OUT.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$OUT"
  exit 0
fi
cd "$REPO"
cargo build -q -p e2e --bin hostpath-provisioner >&2
tdir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
install -m 755 "$tdir/debug/hostpath-provisioner" "$OUT"
echo "$stamp" >"$OUT.stamp"
echo "$OUT"
