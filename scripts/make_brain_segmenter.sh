#!/usr/bin/env bash
# Reproduces the shipped brain MR tissue segmenter (models/weights/seg_brain_demo.pt). CPU, ~10 min.
#   1. 14 MNI-derived brain MR subjects with grey matter / white matter / CSF labels (seed 7, 96^3);
#   2. segmentation fine-tuning from the shipped GVSL weights (INIT, default models/weights/gvsl_demo.pt)
#      on 7 of them (3 validation, 4 test: the split of `gvsl finetune`, seed 0), 48^3 patches;
#   3. export of the model weights only, with the tissue names.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
INIT=${INIT:-models/weights/gvsl_demo.pt}
ITERS=${ITERS:-600}
"$BIN/gvsl" sample brain --out runs/brain_seg_data --n 14 --seed 7
"$BIN/gvsl" finetune --data runs/brain_seg_data --run runs/brain_seg --init "$INIT" --task seg --iters "$ITERS" \
  --size 48 --batch 2 --lr 1e-3 --seed 0 --n-train 8 --val-every 150 --quiet
"$BIN/python" -m gvsl_app.services.export_weights runs/brain_seg/checkpoints/best.pt models/weights/seg_brain_demo.pt \
  --label-names brain
