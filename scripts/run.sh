#!/usr/bin/env bash
# The newcomer's first command: install what nodevigil needs, then run the daemon on the
# example configuration (it watches its own API on loopback). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nodevigil check-config -c configs/example.yaml
echo
echo "nodevigil is starting. Try, in another terminal:"
echo "  curl -s http://127.0.0.1:9470/healthz"
echo "  curl -s -H 'Authorization: Bearer demo-admin-token' http://127.0.0.1:9470/api/v1/nodes"
echo "  curl -s http://127.0.0.1:9470/metrics | grep nodevigil_node_verdict"
echo
exec .venv/bin/nodevigil run -c configs/example.yaml "$@"
