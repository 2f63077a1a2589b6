#!/usr/bin/env bash
# The test command (README.md): set up if needed, then both tiers: the unit tier (no host,
# coverage of coral_core printed) and the end-to-end tier against a real ComfyUI server (then
# the coverage of both tiers together is printed).
# Run one tier alone with: scripts/test.sh unit | scripts/test.sh e2e
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
PY=.venv/bin/python
# importlib mode: the repository root is itself a package (ComfyUI's entry __init__.py), and
# pytest's default mode imports it when the checkout's folder name is not an identifier
# (a clone in /tmp/tmp.XXXX failed every test that way).
PYTEST=("$PY" -m pytest --import-mode=importlib --rootdir tests tests)
tier="${1:-all}"
if [ "$tier" = "all" ] || [ "$tier" = "unit" ]; then
  echo "== lint (ruff, rules in pyproject.toml)"
  .venv/bin/ruff check coral_core nodes tests scripts __init__.py
  echo "== types (mypy, settings in pyproject.toml)"
  # The repository root is itself a package (ComfyUI's entry __init__.py), so mypy names the
  # modules after the checkout's folder, which may not be an identifier (a clone in
  # /tmp/tmp.XXXX): check them through a link with a valid package name instead.
  types_dir="$(mktemp -d)"
  ln -s "$PWD" "$types_dir/coralpack"
  (cd "$types_dir" && "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" \
     --cache-dir "$OLDPWD/.mypy_cache" coralpack/coral_core coralpack/nodes)
  rm -rf "$types_dir"
  echo "== unit tier"
  # Two workers (pytest-xdist), one per core of the machine CI runs on, each test file kept
  # on one worker (its module fixtures are built once); CORAL_TEST_WORKERS=0 runs in-process.
  "${PYTEST[@]}" -m "not e2e and not gpu" -n "${CORAL_TEST_WORKERS:-2}" --dist loadfile \
    --cov=coral_core --cov-report=term:skip-covered --durations=15
fi
if [ "$tier" = "all" ] || [ "$tier" = "e2e" ]; then
  echo "== end-to-end tier (real ComfyUI server)"
  # In-process code (the coral queue client, the browser driver's callers) adds to the unit
  # tier's coverage; after both tiers the report is for the whole suite.
  append=()
  [ "$tier" = "all" ] && append=(--cov-append) && echo "   (coverage below: both tiers)"
  "${PYTEST[@]}" -m e2e --cov=coral_core "${append[@]}" --cov-report=term:skip-covered
fi
