#!/usr/bin/env bash
# The test command (README.md): set up if needed, then both tiers: the unit tier (no host,
# coverage of coral_core printed) and the end-to-end tier against a real ComfyUI server.
# Run one tier alone with: scripts/test.sh unit | scripts/test.sh e2e
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
PY=.venv/bin/python
tier="${1:-all}"
if [ "$tier" = "all" ] || [ "$tier" = "unit" ]; then
  echo "== lint (ruff, rules in pyproject.toml)"
  .venv/bin/ruff check coral_core nodes tests scripts __init__.py
  echo "== unit tier"
  "$PY" -m pytest --rootdir tests tests -m "not e2e and not gpu" \
    --cov=coral_core --cov-report=term:skip-covered
fi
if [ "$tier" = "all" ] || [ "$tier" = "e2e" ]; then
  echo "== end-to-end tier (real ComfyUI server)"
  "$PY" -m pytest --rootdir tests tests -m e2e
fi
