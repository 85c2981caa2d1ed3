#!/usr/bin/env bash
# Stops the moto S3 server that moto-up.sh started (by its recorded PID).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
stop moto 5
rm -f "$STATE/s3-endpoint"
