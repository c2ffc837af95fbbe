#!/usr/bin/env bash
# Reproduces the shipped demo weights (models/weights/). CPU, about 2 h 15 min on 2 cores.
#   1. GVSL pre-training (width 8, 48^3 working cube, the default keypoint/pyramid heads and
#      multi-scale NCC) on 24 synthetic cardiac CT and 24 MNI-derived brain MR subjects (seed 0),
#      learning rate 1e-3 until iteration 4200, then a half-cosine decay to the last (6500);
#   2. segmentation fine-tuning from it on 5 labelled synthetic subjects (seed 5; SEG=0 skips it:
#      the shipped seg_demo.pt was fine-tuned from the earlier cardiac-only weights, see the card);
#   3. export of the model weights only (no optimiser state) with their configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
ITERS=${ITERS:-6500}
DECAY_START=${DECAY_START:-4200}
SEG_ITERS=${SEG_ITERS:-900}
SEG=${SEG:-1}
"$BIN/gvsl" pretrain --data synthetic:cardiac+brain --n-synthetic 24 --run runs/demo_gvsl --iters "$ITERS" \
  --size 48 --width 8 --lr 1e-3 --decay-start "$DECAY_START" --workers 1 --seed 0 --snapshot-every 250 --quiet
"$BIN/python" -m gvsl_app.services.export_weights runs/demo_gvsl/checkpoints/last.pt models/weights/gvsl_demo.pt
[ "$SEG" = 1 ] || exit 0
"$BIN/gvsl" sample cardiac --out runs/demo_seg_data --n 10 --seed 5
"$BIN/gvsl" finetune --data runs/demo_seg_data --run runs/demo_seg --init runs/demo_gvsl/checkpoints/last.pt \
  --task seg --iters "$SEG_ITERS" --size 48 --batch 2 --lr 1e-3 --seed 0 --n-train 5 --val-every 100 --quiet
"$BIN/python" -m gvsl_app.services.export_weights runs/demo_seg/checkpoints/best.pt models/weights/seg_demo.pt \
  --label-names cardiac
