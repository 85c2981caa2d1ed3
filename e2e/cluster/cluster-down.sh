#!/usr/bin/env bash
# Tears down the local cluster that cluster-up.sh started: stops exactly the
# recorded PIDs (and the containerd shims of its own containerd), removes pod
# network namespaces, mounts and cgroups, restores the sysctls kubelet changed,
# deletes the bridge it created. Cluster data (etcd, volumes) is removed;
# certificates and the containerd image store are kept for a fast next start.
#   cluster-down.sh [--purge]   --purge also removes certificates and images
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

[ -d "$STATE" ] || { echo "no local cluster state in $STATE"; exit 0; }
alive=$(alive_components)
if [ -n "$alive" ] && [ -f "$STATE/settings" ] && [ "$(cat "$STATE/settings")" != "$(settings)" ] && [ "${KB_FORCE:-}" != 1 ]; then
  cat >&2 <<EOF
error: the cluster in $STATE was started with other settings:
  $(cat "$STATE/settings")
  run cluster-down with those settings, or set KB_FORCE=1 to stop it with these.
EOF
  exit 1
fi
ctr_() { timeout 20 ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

"$HERE/moto-down.sh"
# The CSI stack (make csi-up) runs next to the cluster: stop it first, by its
# own recorded PIDs, while the kubelet can still unmount its volumes.
if [ -d "$STATE/csi/pids" ]; then
  "$HERE/../csi/csi-down.sh"
fi
stop hostpath-provisioner 5
stop kubelet 15

# The pods' network namespaces, from the OCI bundles of our containerd's tasks
# (readable even when containerd is gone).
mapfile -t netns < <(cat "$STATE"/containerd/state/io.containerd.runtime.v2.task/*/*/config.json 2>/dev/null |
  grep -o '"/var/run/netns/[^"]*"' | tr -d '"' | sort -u)

# Containers: kill and delete every task of our containerd (so its shims exit).
if pid_of containerd >/dev/null && [ -S "$CONTAINERD_SOCK" ]; then
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1
  done
  sleep 0.3
  for c in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ tasks delete -f "$c" >/dev/null 2>&1
    ctr_ containers delete "$c" >/dev/null 2>&1
  done
fi
# Shims of our containerd that are still around (they name our socket).
shims=()
for p in /proc/[0-9]*; do
  { cmd=$(tr '\0' ' ' <"$p/cmdline"); } 2>/dev/null || continue
  case $cmd in *containerd-shim*"-address $CONTAINERD_SOCK "*) shims+=("${p#/proc/}") ;; esac
done
stop containerd 10
for s in "${shims[@]}"; do kill -KILL "$s" 2>/dev/null && log "killed leftover shim $s"; done

stop kube-scheduler 5
stop kube-controller-manager 5
stop kube-apiserver 10
stop etcd 10

# Container processes still in our pods' cgroups (containerd or its shims died
# before they could stop them).
for _ in 1 2 3; do
  left=0
  while IFS= read -r procs; do
    while read -r p; do
      kill -KILL "$p" 2>/dev/null && left=1
    done <"$procs"
  done < <(find /sys/fs/cgroup/*/"${CGROUP_ROOT#/}" -name cgroup.procs 2>/dev/null)
  ((left)) || break
  sleep 0.5
done

# Pod network namespaces of our pods.
for ns in "${netns[@]}"; do
  umount "$ns" 2>/dev/null
  rm -f "$ns"
done

# Mounts under the state dir (kubelet volumes, container rootfs, shm), deepest first.
for _ in 1 2 3; do
  mapfile -t mnts < <(awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r)
  ((${#mnts[@]})) || break
  for m in "${mnts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done

# Pod cgroups kubelet created under our cgroup root, deepest first.
for d in /sys/fs/cgroup/*/"${CGROUP_ROOT#/}"; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done

# Sysctls kubelet changed.
if [ -f "$STATE/sysctl.saved" ]; then
  while IFS= read -r kv; do
    [ -n "$kv" ] && sysctl -q -w "$kv" >/dev/null 2>&1
  done <"$STATE/sysctl.saved"
  rm -f "$STATE/sysctl.saved"
  log "restored sysctls"
fi

# iptables chains kubelet created (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...;
# the ones that existed before cluster-up are left alone): drop the rules that
# jump to them, then the chains.
remove_chains() { # IPTABLES BEFORE-FILE
  local ipt=$1 before=$2 t chain rule
  for t in filter nat mangle; do
    for chain in $($ipt -t "$t" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep '^KUBE-'); do
      grep -qx ":$chain" "$before" 2>/dev/null && continue
      $ipt -t "$t" -S 2>/dev/null | grep -- "-j $chain\( \|$\)" | grep '^-A ' | while read -r rule; do
        # shellcheck disable=SC2086
        $ipt -t "$t" ${rule/#-A/-D} 2>/dev/null
      done
      $ipt -t "$t" -F "$chain" 2>/dev/null
      $ipt -t "$t" -X "$chain" 2>/dev/null
    done
  done
}
if [ -f "$STATE/iptables-chains.before" ]; then
  remove_chains iptables "$STATE/iptables-chains.before"
  remove_chains ip6tables "$STATE/ip6tables-chains.before"
  rm -f "$STATE/iptables-chains.before" "$STATE/ip6tables-chains.before"
fi

# kubelet's symlinks to our pod logs (and the directory, if kubelet made it).
for l in /var/log/containers/*.log; do
  [ -L "$l" ] && case $(readlink "$l") in "$STATE"/*) rm -f "$l" ;; esac
done
if [ -f "$STATE/var-log-containers-created" ]; then
  rmdir /var/log/containers 2>/dev/null
  rm -f "$STATE/var-log-containers-created"
fi

if [ -f "$STATE/bridge-created" ]; then
  ip link delete "$BRIDGE" 2>/dev/null
  rm -f "$STATE/bridge-created"
fi

rm -f "$STATE/settings"
rm -rf "$STATE/etcd" "$STATE/kubelet/root" "$STATE/containerd/state" "$STATE/containerd/runc" \
  "$STATE/cni" "$STATE/pod-logs" "$STATE/volumes" "$STATE/s3-endpoint" "$PIDS"
[ "${KB_KEEP_LOGS:-}" = 1 ] || rm -rf "$LOGS"
if [ "${1:-}" = --purge ]; then
  rm -rf "$STATE"
  log "purged $STATE"
fi
log "local cluster stopped"
