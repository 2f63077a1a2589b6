#!/usr/bin/env bash
# Rebuild the demo world's models: CLIP (seed 0), judge (seed 1) and the generator (seed 0),
# trained side by side on one device. Usage: scripts/train_demo_world.sh OUT_DIR [DEVICE] [MINUTES]
# With MINUTES each run shortens its schedule to fit (the reports record the steps used; pass
# them as --steps to reproduce without a budget). On a 2-core CPU expect hours; on one H100,
# about ten minutes.
set -euo pipefail
OUT="${1:?output folder}"; DEVICE="${2:-cpu}"; MIN="${3:-}"
PY="${PYTHON:-python3}"
BUDGET=(); [ -n "$MIN" ] && BUDGET=(--max-minutes "$MIN")
mkdir -p "$OUT"
"$PY" -m coral_core world train-clip --device "$DEVICE" --out "$OUT/clip" "${BUDGET[@]}" \
  > "$OUT/clip.log" 2>&1 &
"$PY" -m coral_core world train-judge --device "$DEVICE" --out "$OUT/judge.safetensors" \
  > "$OUT/judge.log" 2>&1 &
"$PY" -m coral_core world train-gan --device "$DEVICE" --out "$OUT/generator.safetensors" \
  "${BUDGET[@]}" > "$OUT/gan.log" 2>&1 &
wait
