#!/usr/bin/env bash
# Installs what nodevigil and its test suite need on a Debian machine (run as root):
# the real servers the integration tests start, and a virtualenv with the Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
    mosquitto                      # MQTT broker: node agent heartbeats
    haproxy                        # local load balancer (runtime API)
    bind9 bind9-utils              # global load balancer: RFC 2136 dynamic updates with TSIG
    pdns-server pdns-backend-sqlite3   # global load balancer: PowerDNS HTTP API
    prometheus                     # promtool: checks /metrics and the alerting rules
    prometheus-alertmanager        # notifier target
    prometheus-blackbox-exporter   # the peer in the probe benchmark
    chromium                       # headless browser: the status-page test
    iproute2 nftables              # fault tests: a network namespace that drops packets
    faketime                       # fault tests: a wall clock stepped under a running daemon
    postgresql                     # shared state for a cluster (tests start their own server)
    etcd-server                    # the leader lease of a cluster (tests start their own members)
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' own services are not wanted (tests start their own on ephemeral ports, and
    # named and pdns_server would fight over port 53): Debian's policy-rc.d hook stops
    # maintainer scripts from starting them, for the length of this install only.
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    trap 'if [[ $added_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
# The same versions as the container image (deploy/container/Dockerfile): constraints.txt,
# written by scripts/constraints.py. The demo extra brings rich, for the demo's live view.
stamp=.venv/.nodevigil-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || constraints.txt -nt $stamp ]]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -c constraints.txt -e '.[test,demo]'
    touch "$stamp"
fi
