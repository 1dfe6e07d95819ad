#!/usr/bin/env bash
# Every benchmark, each printing its figures as ratios against a peer measured in the same run.
# notify, state and load compare the SQLite and PostgreSQL state backends side by side.
# About 33 minutes on the 2-core machine (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for bench in probe_bench failover_bench sla_bench state_bench; do
    if [[ -f bench/$bench.py ]]; then
        echo "=== bench/$bench.py"
        .venv/bin/python "bench/$bench.py"
    fi
done
echo "=== bench/notify_bench.py"; .venv/bin/python bench/notify_bench.py --backend both
# 3 measured minutes per backend (not 5): both backends in ~9 minutes instead of ~13.
echo "=== bench/load_bench.py"; .venv/bin/python bench/load_bench.py --backend both --minutes 3
echo "=== bench/cluster_bench.py"; .venv/bin/python bench/cluster_bench.py
echo "=== bench/vantage_bench.py"; .venv/bin/python bench/vantage_bench.py
echo "=== bench/history_bench.py"; .venv/bin/python bench/history_bench.py
# 2 simulated hours (the full day of 10,000 nodes takes ~6 CPU-minutes: bench/README.md).
echo "=== bench/replay_bench.py"; .venv/bin/python bench/replay_bench.py --hours 2
