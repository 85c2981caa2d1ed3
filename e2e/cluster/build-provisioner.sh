#!/usr/bin/env bash
# Builds the hostPath provisioner (test tooling, crate e2e) and prints its path.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
cargo build -q -p e2e --bin hostpath-provisioner >&2
tdir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
echo "$tdir/debug/hostpath-provisioner"
