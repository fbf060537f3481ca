#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite as root: the unprivileged tests,
# then the privileged ones through vagrant/root-tests.sh (the script the Vagrant VM uses too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -p no:cacheprovider -m "not root" "$@"
exec bash vagrant/root-tests.sh "$@"
