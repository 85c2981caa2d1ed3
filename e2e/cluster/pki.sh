#!/usr/bin/env bash
# Creates the local cluster's certificates with openssl, once (kept across
# cluster-up/down): a CA, the apiserver serving cert (SANs: 127.0.0.1, the node
# address, the in-cluster service names), an admin client cert (system:masters),
# the kubelet's client (system:node:NAME) and serving certs, and the
# service-account signing key pair.
#   pki.sh DIR NODE_IP NODE_NAME
set -euo pipefail
DIR=$1 NODE_IP=$2 NODE_NAME=$3
mkdir -p "$DIR"
cd "$DIR"
umask 077

# Regenerate everything if the node address changed.
if [ -f ca.crt ] && [ "$(cat node-ip 2>/dev/null)" != "$NODE_IP/$NODE_NAME" ]; then rm -f ./*.crt ./*.key ./*.pub; fi
echo "$NODE_IP/$NODE_NAME" >node-ip

[ -f ca.crt ] || openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt \
  -days 3650 -subj "/CN=kube-backup-local-ca" 2>/dev/null

# cert NAME SUBJECT EXT
cert() {
  [ -f "$1.crt" ] && return
  openssl req -new -nodes -newkey rsa:2048 -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
    -days 3650 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=kube-backup-admin" "$client"
cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
cert kubelet "/CN=$NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME"

if [ ! -f sa.key ]; then
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi
chmod 644 ./*.crt sa.pub
