#!/usr/bin/env bash
# The main job, end to end on a fresh machine: a local cluster, the image, the
# operator (deployed from config/), moto S3, a PVC with data, the sample
# policy, one on-demand backup; then shows CronJobs, Jobs and the stored backup.
set -euo pipefail
cd "$(dirname "$0")/.."
IMG=${IMG:-localhost/backup-operator:dev}
STATE=${KB_STATE:-$HOME/.cache/kube-backup/cluster}
NS=backup-test

step() { printf '\n==> %s\n' "$*"; }

if [ -z "${KUBECONFIG:-}" ] || ! kubectl get --raw /readyz >/dev/null 2>&1; then
  step "local cluster"
  make cluster-up
  export KUBECONFIG=$STATE/kubeconfig
fi

step "image $IMG"
make image-load IMG="$IMG"

step "operator (CRDs, RBAC, Deployment from config/local)"
make deploy-local IMG="$IMG"
kubectl -n backup-operator-system rollout status deploy/backup-operator-controller-manager --timeout=180s

step "moto S3"
make moto-up
S3=$(cat "$STATE/s3-endpoint")
curl -fsS -X PUT "$S3/demo-backups" >/dev/null || true

step "namespace $NS, Secrets, a PVC with data"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic backup-s3-credentials \
  --from-literal=AWS_ACCESS_KEY_ID=testing --from-literal=AWS_SECRET_ACCESS_KEY=testing \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic backup-repository --from-literal=password=demo-password \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: test-pvc, namespace: $NS, labels: {app: demo}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: demo-writer, namespace: $NS}
spec:
  restartPolicy: Never
  containers:
  - name: writer
    image: localhost/kube-backup/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "for i in 1 2 3 4 5; do echo demo file \$i > /data/file\$i.txt; done; date > /data/written-at"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: test-pvc}}]
YAML
kubectl -n "$NS" wait pod/demo-writer --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s

step "the sample policy (endpoint pointed at moto), then an on-demand backup"
sed -e "s|http://s3.example.com:9000|$S3|" -e "s|bucket: backups|bucket: demo-backups|" \
  config/samples/backup_v1alpha1_backuppolicy.yaml | kubectl apply -f -
kubectl -n "$NS" annotate backuppolicy backuppolicy-sample --overwrite \
  backup.backup.example.com/run-now="demo-$(date +%s)"

step "waiting for the backup to land in status.storedBackups"
for _ in $(seq 1 90); do
  n=$(kubectl -n "$NS" get backuppolicy backuppolicy-sample -o jsonpath='{.status.storedBackups[*].name}' 2>/dev/null || true)
  [ -n "$n" ] && break
  sleep 2
done

step "kubectl get backuppolicies,cronjobs,jobs -n $NS"
kubectl -n "$NS" get backuppolicies,cronjobs,jobs
step "stored backups"
kubectl -n "$NS" get backuppolicy backuppolicy-sample \
  -o jsonpath='{range .status.storedBackups[*]}{.name}{"  "}{.timestamp}{"  "}{.pvcName}{"  "}{.size}{" bytes  "}{.location}{"\n"}{end}'
[ -n "${n:-}" ] || { echo "no backup recorded yet; see: kubectl -n $NS describe backuppolicy backuppolicy-sample" >&2; exit 1; }
echo
echo "export KUBECONFIG=$STATE/kubeconfig   # to look around; make cluster-down to stop"
