#!/usr/bin/env bash
# Set up everything nsattach and its tests need on a Debian 12 machine, as root:
# the Debian packages, a virtual environment in .venv and the package with its test extra.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/setup.sh: run this as root (it installs Debian packages)" >&2
    exit 1
fi

# python3-venv/python3-dev/gcc/libcap-dev: the venv and python-prctl's build;
# etcd-server/etcd-client: the etcd legion tests start their own etcd members on loopback;
# the rest are real daemons the tests supervise.
packages=(python3-venv python3-dev gcc libcap-dev busybox-static memcached redis-server dropbear-bin procps
          etcd-server etcd-client)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's etcd-server enables and starts a system etcd on :2379 where systemd runs; the
    # tests need none (they run their own), so the one this script just installed is turned off
    if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --now etcd.service >/dev/null 2>&1 || true
    fi
fi

# Debian's own interpreter, whatever python3 the PATH offers first
PYTHON=${NSATTACH_PYTHON:-/usr/bin/python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
