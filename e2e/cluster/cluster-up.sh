#!/usr/bin/env bash
# Brings up a real single-node Kubernetes on this machine: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd + kubelet (the node), a CNI
# bridge, the default StorageClass with a hostPath provisioner, and a moto S3
# server. Idempotent: when the cluster already runs it says so and exits 0.
# Stop it with cluster-down.sh; state lives in ~/.cache/kube-backup/cluster.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
T0=$SECONDS

print_usage() {
  cat <<EOF
cluster is up (Kubernetes $K8S_VERSION, node $NODE_NAME at $NODE_IP)
  export KUBECONFIG=$KUBECONFIG_PATH
  S3 endpoint (moto, reachable from pods): $(cat "$STATE/s3-endpoint" 2>/dev/null || echo none)
  state: $STATE   logs: $LOGS
  stop with: make cluster-down
EOF
}

# --- already running? --------------------------------------------------------
alive=$(alive_components)
if [ -n "$alive" ] && [ -f "$STATE/settings" ] && [ "$(cat "$STATE/settings")" != "$(settings)" ]; then
  cat >&2 <<EOF
error: a local cluster with other settings runs from $STATE
  (alive: $alive)
  it was started with: $(cat "$STATE/settings")
  this cluster-up has: $(settings)
  Stop it first with the same settings ('make cluster-down'), or use another KB_STATE/KB_CACHE.
EOF
  exit 1
fi
dead=
for c in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  pid_of "$c" >/dev/null || dead="$dead$c "
done
api_ok=0
if [ -n "$alive" ] && [ -z "$dead" ]; then
  # A busy machine can make /readyz slow: give it some time before judging.
  for _ in $(seq 1 15); do api_ready && { api_ok=1; break; }; sleep 1; done
fi
if ((api_ok)); then
  echo "the local cluster is already running"
  # Bring back the helpers if one of them died.
  "$HERE/moto-up.sh" || true
  if ! pid_of hostpath-provisioner >/dev/null; then
    start hostpath-provisioner env KUBECONFIG="$KUBECONFIG_PATH" RUST_LOG=info \
      "$("$HERE/build-provisioner.sh")" --class standard --dir "$STATE/volumes"
    log "restarted hostpath-provisioner"
  fi
  print_usage
  exit 0
fi
if [ -n "$alive" ]; then
  # Partly running (a component died): never tear down what may still be in use.
  first_dead=${dead%% *}
  [ -n "$first_dead" ] || first_dead=kube-apiserver
  fail_component "$first_dead" "the local cluster in $STATE is only partly running (alive: $alive; stopped: ${dead:-none, but the API server is not ready}).
  Run 'make cluster-down' and then 'make cluster-up' to restart it."
fi
if compgen -G "$PIDS/*.pid" >/dev/null; then
  log "found leftovers of an earlier cluster (no process alive); cleaning up first"
  "$HERE/cluster-down.sh"
fi

[ "$(id -u)" = 0 ] || die "the local cluster needs root (it runs containerd and kubelet)"

# --- prerequisites -----------------------------------------------------------
"$HERE/install-deps.sh"
if [ ! -x "$K8S_BIN/kubelet" ] || [ ! -x "$ETCD_BIN/etcd" ]; then
  if ! command -v go >/dev/null 2>&1; then
    cat >&2 <<EOF
error: Kubernetes $K8S_VERSION binaries are not cached in $K8S_BIN and Go is not installed.
  The local cluster builds kube-apiserver, kube-controller-manager, kube-scheduler,
  kubelet and etcd once from their official Go modules. Install Go 1.24 or newer
  (https://go.dev/dl/, or your distribution's golang package), make sure the Go
  module proxy is reachable, then run 'make cluster-up' again (the build takes
  ~10-20 minutes on 2 cores, once).
EOF
    exit 1
  fi
  "$HERE/build-binaries.sh" all
fi

# --- busy ports --------------------------------------------------------------
busy=0
for entry in "etcd:$ETCD_PORT:KB_ETCD_PORT" "etcd-peer:$ETCD_PEER_PORT:KB_ETCD_PEER_PORT" \
  "kube-apiserver:$APISERVER_PORT:KB_APISERVER_PORT" "kube-controller-manager:$KCM_PORT:KB_KCM_PORT" \
  "kube-scheduler:$SCHEDULER_PORT:KB_SCHEDULER_PORT" "kubelet:$KUBELET_PORT:KB_KUBELET_PORT" \
  "kubelet-healthz:$KUBELET_HEALTHZ_PORT:KB_KUBELET_HEALTHZ_PORT" "moto-s3:$MOTO_PORT:KB_MOTO_PORT"; do
  IFS=: read -r name port var <<<"$entry"
  owner=$(port_owner "$port")
  if [ -n "$owner" ]; then
    echo "error: port $port needed by $name is already in use (by $owner); free it or set $var" >&2
    busy=1
  fi
done
((busy == 0)) || exit 1

MOTO_UP=
# Test tooling and base images first: nothing is running yet if they fail.
PROVISIONER=$("$HERE/build-provisioner.sh")
"$HERE/images.sh" base --no-load

# From here on, a failure tears down whatever was started.
cleanup_on_failure() {
  local rc=$?
  if ((rc != 0)); then
    echo "cluster-up failed; cleaning up (logs kept in $LOGS)" >&2
    # moto-up may still be starting in the background: let it record its PID first.
    [ -n "${MOTO_UP:-}" ] && wait "$MOTO_UP" 2>/dev/null
    KB_KEEP_LOGS=1 "$HERE/cluster-down.sh" >&2 || true
  fi
}
trap cleanup_on_failure EXIT

rm -rf "$LOGS" "$STATE/etcd" "$STATE/kubelet/root" "$STATE/containerd/state" "$STATE/cni" "$STATE/pod-logs"
mkdir -p "$PIDS" "$LOGS" "$PKI" "$STATE/volumes" "$STATE/kubelet/root" "$STATE/pod-logs" \
  "$STATE/containerd/root" "$STATE/containerd/state" "$STATE/cni/net.d" "$STATE/cni/ipam"

# --- PKI (kept across runs) ----------------------------------------------------
"$HERE/pki.sh" "$PKI" "$NODE_IP" "$NODE_NAME"
settings >"$STATE/settings"

write_kubeconfig() { # FILE CERT KEY USER
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-backup
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $4
  user:
    client-certificate: $2
    client-key: $3
contexts:
- name: kube-backup
  context:
    cluster: kube-backup
    user: $4
current-context: kube-backup
EOF
}
write_kubeconfig "$KUBECONFIG_PATH" "$PKI/admin.crt" "$PKI/admin.key" admin
write_kubeconfig "$STATE/kubelet/kubeconfig" "$PKI/kubelet-client.crt" "$PKI/kubelet-client.key" "system:node:$NODE_NAME"

# --- node network: the bridge with the host-internal node address ------------
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  echo 1 >"$STATE/bridge-created"
fi
[[ $(ip -o addr show dev "$BRIDGE") == *"inet $NODE_IP/"* ]] || ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up

# S3 (moto) on the node address, reachable from pods; started now, awaited later.
"$HERE/moto-up.sh" &
MOTO_UP=$!

# --- etcd ----------------------------------------------------------------------
log "starting etcd $ETCD_VERSION"
start etcd "$ETCD_BIN/etcd" --name default --data-dir "$STATE/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn

# --- containerd (started early: it is independent of the control plane) --------
cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
cat >"$STATE/cni/net.d/10-kube-backup.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kube-backup",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{ "subnet": "$POD_SUBNET", "gateway": "$NODE_IP" }]]
      }
    }
  ]
}
EOF
log "starting containerd ($(containerd --version | awk '{print $3}'))"
start containerd containerd --config "$STATE/containerd/config.toml"

wait_until "etcd health" 30 etcd curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver ------------------------------------------------------------
log "starting kube-apiserver $K8S_VERSION on 127.0.0.1:$APISERVER_PORT"
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address 127.0.0.1 \
  --endpoint-reconciler-type none \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC \
  --allow-privileged=true --profiling=false --v=1

wait_until "kube-apiserver /readyz" 60 kube-apiserver api_ready
log "kube-apiserver ready ($((SECONDS - T0))s)"

# CRDs first: the garbage collector discovers resource types when it starts
# (then only every ~30 s), so owned objects of CRD kinds are collected at once.
if compgen -G "$REPO/crds/*.yaml" >/dev/null; then
  kubectl_ apply --server-side --force-conflicts -f "$REPO/crds/" >/dev/null ||
    fail_component kube-apiserver "applying the CRDs in $REPO/crds failed"
fi

# --- controller-manager and scheduler ------------------------------------------
log "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$KUBECONFIG_PATH" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
  --controllers '*' \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --use-service-account-credentials=false --profiling=false --v=1
start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$KUBECONFIG_PATH" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false --v=1

# --- the node: images, kubelet --------------------------------------------------
wait_until "containerd socket" 30 containerd test -S "$CONTAINERD_SOCK"
"$HERE/images.sh" base

if [ ! -f "$STATE/sysctl.saved" ]; then
  for s in $KUBELET_SYSCTLS; do
    v=$(sysctl -n "$s" 2>/dev/null) && echo "$s=$v"
  done >"$STATE/sysctl.saved"
fi
iptables-save 2>/dev/null | grep -o '^:[A-Z0-9-]*' | sort -u >"$STATE/iptables-chains.before" || true
ip6tables-save 2>/dev/null | grep -o '^:[A-Z0-9-]*' | sort -u >"$STATE/ip6tables-chains.before" || true
[ -e /var/log/containers ] || touch "$STATE/var-log-containers-created"
for d in /sys/fs/cgroup/*/; do
  [ "$(basename "$d")" = unified ] && continue
  mkdir -p "$d${CGROUP_ROOT#/}" 2>/dev/null || true
done

cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: $STATE/pod-logs
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
serializeImagePulls: false
# Images here cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
localStorageCapacityIsolation: true
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
maxPods: 110
EOF
log "starting kubelet (node $NODE_NAME, $NODE_IP)"
start kubelet "$K8S_BIN/kubelet" --config "$STATE/kubelet/config.yaml" \
  --kubeconfig "$STATE/kubelet/kubeconfig" --root-dir "$STATE/kubelet/root" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1

log "waiting for kube-controller-manager and kube-scheduler"
wait_until "kube-controller-manager healthz" 60 kube-controller-manager \
  curl -fsSk --max-time 1 "https://127.0.0.1:$KCM_PORT/healthz"
wait_until "kube-scheduler healthz" 60 kube-scheduler \
  curl -fsSk --max-time 1 "https://127.0.0.1:$SCHEDULER_PORT/healthz"

# --- storage: default StorageClass + hostPath provisioner ---------------------
kubectl_ apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kube-backup.local/hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
log "starting hostpath-provisioner"
start hostpath-provisioner env KUBECONFIG="$KUBECONFIG_PATH" RUST_LOG=info "$PROVISIONER" \
  --class standard --dir "$STATE/volumes"

wait "$MOTO_UP" || fail_component moto "moto S3 did not start"

# --- wait for the node ----------------------------------------------------------
node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_until "node $NODE_NAME Ready" 120 kubelet node_ready
wait_until "default service account" 30 kube-controller-manager kubectl_ -n default get serviceaccount default
pid_of hostpath-provisioner >/dev/null || fail_component hostpath-provisioner "hostpath-provisioner exited"

trap - EXIT
log "cluster up in $((SECONDS - T0))s"
print_usage
