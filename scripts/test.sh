#!/usr/bin/env bash
# The test command (README.md): set up if needed, then every test, unit and end-to-end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest --rootdir tests tests "$@"
