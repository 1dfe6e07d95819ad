#!/usr/bin/env bash
# The newcomer's first command: install what nodevigil needs, then run `nodevigil demo`: two
# sites of three nodes on loopback behind a real HAProxy each, BIND serving the service's name,
# Mosquitto with a node agent per node, and a failover story played through them, live.
# Arguments go to the demo, e.g. --speed 2, --keep-running (explore the world; Ctrl-C stops it),
# --no-live (plain lines). To run the daemon on the example configuration instead:
#   .venv/bin/nodevigil run -c configs/example.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nodevigil demo "$@"
