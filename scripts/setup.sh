#!/usr/bin/env bash
# Set up everything a fresh machine needs: Debian's redis-server (for the shared-state tests)
# and a virtual environment in .venv with the package and its test, lint and typing groups.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=25.1"
# Dependency groups (PEP 735) need pip >= 25.1.
.venv/bin/python -m pip install -q -e . --group test --group lint --group typing
