#!/usr/bin/env bash
# config/prometheus: regenerate prometheusrule.yaml from rules.yaml, or check
# both with promtool (rule syntax, then the alert unit tests in rules_test.yaml).
#   hack/prometheus-rules.sh generate | check
# promtool comes from Debian's `prometheus` package, unpacked (not installed,
# so no Prometheus server is set up or started) into ~/.cache/kube-backup/tools.
set -euo pipefail
cd "$(dirname "$0")/../config/prometheus"

wrapped() {
  cat <<'HEAD'
# Generated from rules.yaml by `make prometheus-rules`; edit rules.yaml.
# For the Prometheus Operator: kubectl apply -n <monitoring namespace> -f this file.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: backup-operator
  labels:
    app.kubernetes.io/name: backup-operator
spec:
HEAD
  grep -v '^#' rules.yaml | sed 's/^/  /'
}

promtool() {
  local dir=${XDG_CACHE_HOME:-$HOME/.cache}/kube-backup/tools/prometheus
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    local tmp
    tmp=$(mktemp -d)
    echo "fetching promtool (Debian package prometheus, unpacked only) ..." >&2
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) ||
      { echo "error: 'apt-get download prometheus' failed; promtool is needed to check the alert rules" >&2; rm -rf "$tmp"; exit 1; }
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$dir"
    rm -rf "$tmp"
  fi
  "$dir/usr/bin/promtool" "$@"
}

case "${1:-check}" in
  generate) wrapped > prometheusrule.yaml ;;
  check)
    wrapped | cmp -s - prometheusrule.yaml ||
      { echo "config/prometheus/prometheusrule.yaml is stale: run 'make prometheus-rules' and commit" >&2; exit 1; }
    promtool check rules rules.yaml
    promtool test rules rules_test.yaml
    ;;
  *) echo "usage: $0 generate|check" >&2; exit 2 ;;
esac
