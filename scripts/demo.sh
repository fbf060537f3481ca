#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run nsattach in the foreground on examples/demo.ini:
# a dumb, a smart and a smart2 memcached on 127.0.0.1:21211-21213. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nsattach check -c examples/demo.ini
echo
echo "starting nsattach; press Ctrl-C to stop (the smart daemons keep running, as designed:"
echo "run this again and nsattach adopts them; stop them with: kill \$(cat /tmp/nsattach-demo-smart.pid) \$(cat /tmp/nsattach-demo-smart2.pid))"
exec .venv/bin/nsattach -c examples/demo.ini
