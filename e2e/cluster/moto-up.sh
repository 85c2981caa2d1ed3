#!/usr/bin/env bash
# Starts moto (an in-memory S3) on the node's bridge address, where both this
# host and pods on the pod network reach it, and writes its endpoint to
# $STATE/s3-endpoint. Idempotent.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ENDPOINT=http://$NODE_IP:$MOTO_PORT
moto_ready() { curl -fsS --max-time 1 -o /dev/null "$ENDPOINT/"; }

if pid_of moto >/dev/null && moto_ready; then
  echo "$ENDPOINT" >"$STATE/s3-endpoint"
  exit 0
fi
[[ $(ip -o addr show 2>/dev/null) == *"inet $NODE_IP/"* ]] || die "the node address $NODE_IP does not exist; run 'make cluster-up'"
moto_python >/dev/null || "$HERE/install-deps.sh"
PY=$(moto_python) || die "moto[server] is not installed (e2e/cluster/install-deps.sh)"
owner=$(port_owner "$MOTO_PORT")
[ -z "$owner" ] || die "port $MOTO_PORT needed by moto-s3 is already in use (by $owner); set KB_MOTO_PORT"
log "starting moto S3 on $ENDPOINT"
start moto "$PY" -m moto.server -H "$NODE_IP" -p "$MOTO_PORT"
wait_until "moto S3 on $ENDPOINT" 60 moto moto_ready
echo "$ENDPOINT" >"$STATE/s3-endpoint"
