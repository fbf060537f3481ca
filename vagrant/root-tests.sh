#!/usr/bin/env bash
# The privileged tests (namespaces, uid changes, real daemons), as root. CI runs this very
# script on its host (through scripts/test.sh); in the Vagrant VM:
#   vagrant ssh -c 'sudo /vagrant/vagrant/root-tests.sh'
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "vagrant/root-tests.sh: the privileged tests need root" >&2
    exit 1
fi
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider -m root "$@"
