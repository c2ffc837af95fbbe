#!/usr/bin/env bash
# The label-efficiency study (issue #33, benchmarks/label_efficiency.py) on one CUDA GPU within
# a wall-clock budget. The study is resumable (one JSON per seed, method and label count), so
# a lent machine that is taken back before the end loses at most the cell it was running: the
# next lent session runs this again with the same WORK folder carried and goes on.
#
#   bash scripts/gpu_label_efficiency.sh [OUT]       (default: runs/gpu_label_efficiency/out)
#
# Settings (environment): DEADLINE_S (default 540: the study is stopped with SIGINT), SEEDS
# (default "0 1 2 3 4", in results.json's order), WORK (runs/gpu_label_efficiency/work), DEVICE
# (cuda; DEVICE=cpu DEADLINE_S=60 SMOKE=1 is a dry run of the whole script), SMOKE (1: the
# study's --smoke scale). What comes back: OUT/results.json, OUT/summary.md and the log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/gpu_label_efficiency/out}
WORK=${WORK:-runs/gpu_label_efficiency/work}
DEADLINE_S=${DEADLINE_S:-540}
SEEDS=${SEEDS:-0 1 2 3 4}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/label_efficiency.log"
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine (DEVICE=cpu for a dry run)')"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG" || true
fi
EXTRA=()
[ "$SMOKE" = 1 ] && EXTRA=(--smoke)
# shellcheck disable=SC2086  # SEEDS is a list
timeout -s INT -k 20 "$DEADLINE_S" "$PY" benchmarks/label_efficiency.py --device "$DEVICE" --seeds $SEEDS \
  --work "$WORK" --out "$OUT" "${EXTRA[@]}" 2>&1 | tee -a "$LOG" || true
ls -l "$OUT"
