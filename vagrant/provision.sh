#!/usr/bin/env bash
# Provision a Debian 12 VM for nsattach: the same Debian packages the tests use, the venv and
# the package (scripts/setup.sh does both). Run by the Vagrantfile as root, idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ln -sf "$PWD/.venv/bin/nsattach" /usr/local/bin/nsattach
