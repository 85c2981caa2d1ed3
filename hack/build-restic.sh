#!/usr/bin/env bash
# Builds restic (default v0.18.1) from its Go module, once, into the cache
# outside the repository; prints the binary's path. Used by the mover's
# differential tests (RESTIC_BIN) and the benchmarks.
set -euo pipefail
VERSION=${RESTIC_VERSION:-v0.18.1}
CACHE=${KB_CACHE:-$HOME/.cache/kube-backup}
OUT=$CACHE/tools/restic-$VERSION
if [ ! -x "$OUT/restic" ]; then
  command -v go >/dev/null 2>&1 || { echo "error: go not found (needed to build restic $VERSION)" >&2; exit 1; }
  echo "restic $VERSION: building from its Go module (once)" >&2
  mkdir -p "$OUT"
  GOBIN=$OUT CGO_ENABLED=0 go install "github.com/restic/restic/cmd/restic@$VERSION" >&2
fi
echo "$OUT/restic"
