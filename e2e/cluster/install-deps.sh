#!/usr/bin/env bash
# Installs what the local cluster needs from Debian's packages and PyPI, and
# only what is missing (safe to run every time; fast when all is there).
set -euo pipefail

# command -> Debian package providing it
declare -A PKGS=(
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [restic]=restic
  [iptables]=iptables
  [conntrack]=conntrack
  [socat]=socat
  [openssl]=openssl
  [curl]=curl
  [ip]=iproute2
  [ss]=iproute2
  [gcc]=gcc
  [/usr/lib/x86_64-linux-gnu/libc.a]=libc6-dev
  [/usr/share/zoneinfo/UTC]=tzdata
  [/etc/ssl/certs/ca-certificates.crt]=ca-certificates
)

missing=()
for what in "${!PKGS[@]}"; do
  if [[ $what == /* ]]; then
    [ -e "$what" ] && continue
  else
    command -v "$what" >/dev/null 2>&1 && continue
  fi
  missing+=("${PKGS[$what]}")
done
# busybox-static specifically: a dynamic busybox cannot go into a FROM-scratch image.
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
# musl-tools lets cargo build the image's binaries for the musl target (optional).
dpkg -s musl-tools >/dev/null 2>&1 || missing+=(musl-tools)

if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "error: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v kubectl >/dev/null 2>&1; then
  echo "error: kubectl not found; install kubectl 1.33 or newer (Debian's kubernetes-client is too old)" >&2
  exit 1
fi

# moto (the S3 server of the tests)
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
if ! moto_python >/dev/null; then
  echo "installing moto[server] from PyPI" >&2
  if ! python3 -m pip install -q 'moto[server]' 2>/dev/null || ! moto_python >/dev/null; then
    # An externally managed Python (PEP 668): use a venv in the cache.
    python3 -m venv "$CACHE/moto-venv" 2>/dev/null || {
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      python3 -m venv "$CACHE/moto-venv"
    }
    "$CACHE/moto-venv/bin/pip" install -q 'moto[server]'
  fi
  moto_python >/dev/null || { echo "error: could not install moto[server]" >&2; exit 1; }
fi
