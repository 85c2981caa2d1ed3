#!/usr/bin/env bash
# Shows which components of the local cluster run (by recorded PID) and its node.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
for c in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet hostpath-provisioner moto; do
  if pid=$(pid_of "$c"); then printf '%-24s running (pid %s)\n' "$c" "$pid"; else printf '%-24s stopped\n' "$c"; fi
done
if api_ready 2>/dev/null; then
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  [ -f "$STATE/s3-endpoint" ] && echo "S3 endpoint: $(cat "$STATE/s3-endpoint")"
  kubectl_ get nodes -o wide
fi
