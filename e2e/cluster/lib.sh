# shellcheck shell=bash disable=SC2034
# Shared settings and helpers of the local test cluster scripts (sourced, not run).
# Everything can be overridden from the environment.

K8S_VERSION=${K8S_VERSION:-v1.35.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
CACHE=${KB_CACHE:-$HOME/.cache/kube-backup}
STATE=${KB_STATE:-$CACHE/cluster}
K8S_BIN=$CACHE/k8s/$K8S_VERSION
ETCD_BIN=$CACHE/etcd/$ETCD_VERSION
IMAGES=$CACHE/images

# Ports. Everything listens on 127.0.0.1, except what pods must reach (kubelet,
# moto), which listens on the host-internal bridge address NODE_IP.
ETCD_PORT=${KB_ETCD_PORT:-12379}
ETCD_PEER_PORT=${KB_ETCD_PEER_PORT:-12380}
APISERVER_PORT=${KB_APISERVER_PORT:-16443}
KCM_PORT=${KB_KCM_PORT:-10257}
SCHEDULER_PORT=${KB_SCHEDULER_PORT:-10259}
KUBELET_PORT=${KB_KUBELET_PORT:-10250}
KUBELET_HEALTHZ_PORT=${KB_KUBELET_HEALTHZ_PORT:-10248}
MOTO_PORT=${KB_MOTO_PORT:-15000}

# Pod network: a bridge the scripts create, with the host's address on it.
# Pods get addresses from POD_SUBNET and a route to that subnet only (no
# default route, no masquerading): they can reach the host (NODE_IP), nothing
# outside the machine.
BRIDGE=${KB_BRIDGE:-kb0}
POD_SUBNET=${KB_POD_SUBNET:-10.244.0.0/24}
NODE_IP=${KB_NODE_IP:-10.244.0.1}
SERVICE_CIDR=${KB_SERVICE_CIDR:-10.96.0.0/16}
NODE_NAME=${KB_NODE_NAME:-kube-backup-node}
CGROUP_ROOT=${KB_CGROUP_ROOT:-/kube-backup}

PAUSE_IMAGE=localhost/kube-backup/pause:3.10
BUSYBOX_IMAGE=localhost/kube-backup/busybox:latest
IMG=${IMG:-localhost/backup-operator:dev}

CONTAINERD_SOCK=$STATE/containerd/containerd.sock
KUBECONFIG_PATH=$STATE/kubeconfig
PIDS=$STATE/pids
LOGS=$STATE/logs
PKI=$STATE/pki

# The sysctls kubelet sets; saved before it starts, restored on cluster-down.
KUBELET_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

# The settings a cluster was started with (written to $STATE/settings):
# a cluster-up with other settings must not mistake that cluster for its own.
settings() {
  echo "K8S_VERSION=$K8S_VERSION ETCD_VERSION=$ETCD_VERSION APISERVER_PORT=$APISERVER_PORT ETCD_PORT=$ETCD_PORT" \
    "NODE_IP=$NODE_IP BRIDGE=$BRIDGE POD_SUBNET=$POD_SUBNET NODE_NAME=$NODE_NAME CGROUP_ROOT=$CGROUP_ROOT MOTO_PORT=$MOTO_PORT"
}

# alive_components: the recorded components whose processes still run.
alive_components() {
  local f n
  for f in "$PIDS"/*.pid; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .pid)
    pid_of "$n" >/dev/null && printf '%s ' "$n"
  done
  return 0
}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# pid_of NAME: the recorded PID of a component if that process is still alive.
pid_of() {
  local f=$PIDS/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  # A zombie (exited, not yet reaped by whoever inherited it) is not running.
  [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $1}')" != Z ] || return 1
  # Guard against a recycled PID: the process must have the recorded start time.
  if [ -f "$PIDS/$1.start" ]; then
    [ "$(start_time "$pid")" = "$(cat "$PIDS/$1.start")" ] || return 1
  fi
  echo "$pid"
}

# start_time PID: the process's start time in clock ticks since boot.
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# start NAME LOGFILE CMD...: runs CMD in its own session, records its PID.
start() {
  local name=$1; shift
  mkdir -p "$PIDS" "$LOGS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDS/$name.pid"
  # setsid execs in place (a background job is not a group leader), so the
  # recorded PID is the component itself; its start time survives exec.
  start_time "$pid" >"$PIDS/$name.start" 2>/dev/null || true
}

# stop NAME [TIMEOUT]: TERM the recorded PID, KILL after TIMEOUT seconds.
stop() {
  local name=$1 timeout=${2:-10} pid i
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      [ -d "/proc/$pid" ] || break
      # a zombie child of ours counts as gone
      [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $1}')" = Z ] && break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid" "$PIDS/$name.start"
}

# wait_until DESC TIMEOUT COMPONENT CMD...: polls CMD every 0.2 s; on timeout
# (or when COMPONENT's process died) prints COMPONENT's log tail and fails.
wait_until() {
  local desc=$1 timeout=$2 comp=$3; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$comp" ] && ! pid_of "$comp" >/dev/null; then
      fail_component "$comp" "$desc: $comp exited"
    fi
    if ((SECONDS >= deadline)); then
      fail_component "$comp" "$desc: timed out after ${timeout}s"
    fi
    sleep 0.2
  done
}

fail_component() {
  local comp=$1 msg=$2
  printf '\nerror: %s\n' "$msg" >&2
  if [ -n "$comp" ] && [ -f "$LOGS/$comp.log" ]; then
    printf -- '--- last 40 lines of %s ---\n' "$LOGS/$comp.log" >&2
    tail -n 40 "$LOGS/$comp.log" >&2
    printf -- '---\n' >&2
  fi
  exit 1
}

# port_owner PORT: the process listening on a TCP port, empty if free.
port_owner() {
  ss -Hltnp "sport = :$1" 2>/dev/null | head -n1 | grep -o 'users:(([^)]*' | sed 's/users:((//' || true
}

# moto_python: a python that can import moto.server (the PATH's python3, or a
# venv install-deps.sh made in the cache when that python is externally managed).
moto_python() {
  local py
  for py in "$CACHE/moto-venv/bin/python" "$(command -v python3 2>/dev/null)"; do
    [ -x "$py" ] && "$py" -c 'import moto.server' >/dev/null 2>&1 && { echo "$py"; return 0; }
  done
  return 1
}

kubectl_() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }

api_ready() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null
}
