#!/usr/bin/env bash
# Every benchmark, each printing its figures as ratios against a peer measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for bench in probe_bench failover_bench sla_bench; do
    if [[ -f bench/$bench.py ]]; then
        echo "=== bench/$bench.py"
        .venv/bin/python "bench/$bench.py"
    fi
done
echo "=== bench/notify_bench.py"; .venv/bin/python bench/notify_bench.py
echo "=== bench/load_bench.py"; .venv/bin/python bench/load_bench.py
