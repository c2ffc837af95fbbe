#!/usr/bin/env bash
# Pre-trains the GVSL matching weights on one CUDA GPU within a fixed wall-clock budget, then
# exports them (model tensors only, <= 16 MB) and scores them, so that a session that is lent
# a GPU for a few minutes spends them training, not debugging.
#
#   bash scripts/gpu_pretrain.sh [OUT.pt]        (default: runs/gpu_gvsl/gvsl_gpu.pt)
#
# Settings (environment): BUDGET_S (training wall clock, default 420 s: the run is stopped with
# SIGINT, which saves checkpoints/last.pt, then exported), WIDTH (12: ~13 MB exported; 16 is
# ~24 MB, over the shipped-file limit), SIZE (64), BATCH (8), WORKERS (min(8, cores - 2)),
# ITERS (an upper bound; the budget usually ends the run first), N (subjects per kind, 48),
# DEVICE (cuda; DEVICE=cpu BUDGET_S=30 SIZE=32 WIDTH=8 BATCH=2 is a dry run of the whole script),
# POSE (relative pose of the moving scan: none, small or large; large trains the network on the
# residual poses a pair keeps after `gvsl match`'s initial alignment, issue #30), INIT (a GVSL
# checkpoint to start from, e.g. models/weights/gvsl_demo.pt; default: scratch).
# bf16 autocast is on for CUDA (the `amp` default); warping and the losses run in fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${1:-runs/gpu_gvsl/gvsl_gpu.pt}
RUN=${RUN:-runs/gpu_gvsl}
BUDGET_S=${BUDGET_S:-420}
WIDTH=${WIDTH:-12}
SIZE=${SIZE:-64}
BATCH=${BATCH:-8}
CORES=$(nproc)
WORKERS=${WORKERS:-$(( CORES > 10 ? 8 : (CORES > 2 ? CORES - 2 : 0) ))}
ITERS=${ITERS:-20000}
N=${N:-48}
DEVICE=${DEVICE:-cuda}
POSE=${POSE:-none}
INIT=${INIT:-scratch}
POSE_ARGS=()
[ "$POSE" = none ] || POSE_ARGS=(--relative-pose "$POSE")

if [ "$DEVICE" = cuda ]; then
  "$BIN/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine (DEVICE=cpu for a dry run)')"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
echo "pre-training for at most ${BUDGET_S} s: width $WIDTH, ${SIZE}^3, batch $BATCH, $WORKERS workers"
# timeout sends SIGINT at the budget: the run stops at the next step and saves last.pt (exit 0).
timeout -s INT -k 60 "$BUDGET_S" "$BIN/gvsl" pretrain --data synthetic:cardiac+brain --n-synthetic "$N" \
  --run "$RUN" --iters "$ITERS" --size "$SIZE" --width "$WIDTH" --batch "$BATCH" --lr 1e-3 \
  --workers "$WORKERS" --seed 0 --device "$DEVICE" --snapshot-every 500 --init "$INIT" "${POSE_ARGS[@]}" \
  --quiet || [ $? -eq 124 ]
"$BIN/python" -m gvsl_app.services.export_weights "$RUN/checkpoints/last.pt" "$OUT"
ls -l "$OUT"
"$BIN/python" benchmarks/matching_curves.py "$OUT" --pairs 4
if [ "$POSE" = large ]; then  # what the network adds on pairs that start far apart
  "$BIN/python" benchmarks/capture_range.py --weights "$OUT" --pairs 5 --shape 64 --no-sitk --no-frames \
    --rows 30:45 45:60 --json "$(dirname "$OUT")/capture_range_gpu.json"
fi
