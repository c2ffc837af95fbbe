#!/usr/bin/env bash
# `make demo`: with a display, open the desktop app on the synthetic cardiac pair with the
# demo weights. Without one (a server, CI, ssh), run the same main job headless: write the
# sample pair, Z-Match it with the demo weights, segment it, and print what was done.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${GVSL_BIN:-.venv/bin}  # GVSL_BIN: another environment's bin folder
OUT=${DEMO_OUT:-out/demo}
if [ -n "${DISPLAY:-}" ] && [ -z "${GVSL_HEADLESS:-}" ]; then
  exec "$BIN/gvsl" app --sample cardiac
fi
echo "No display: running the headless demo into $OUT (set DISPLAY to open the app)."
# Only what this script writes is replaced: DEMO_OUT may name a folder that holds other files.
rm -rf "$OUT/data" "$OUT/match" "$OUT/segmentation.nii.gz" "$OUT/segmentation_report.json" "$OUT/app.png"; mkdir -p "$OUT"
"$BIN/gvsl" sample cardiac --out "$OUT/data" --n 2 --seed 7
"$BIN/gvsl" match "$OUT/data/images/case_000.nii.gz" "$OUT/data/images/case_001.nii.gz" \
  --fixed-labels "$OUT/data/labels/case_000.nii.gz" --moving-labels "$OUT/data/labels/case_001.nii.gz" \
  --out "$OUT/match"   # refines by default (--no-refine: the network alone)
"$BIN/gvsl" segment "$OUT/data/images/case_000.nii.gz" --reference "$OUT/data/labels/case_000.nii.gz" \
  --out "$OUT/segmentation.nii.gz"
if command -v xvfb-run >/dev/null; then
  # --match: the app runs Z-Matching on the sample pair first, so the picture shows its result
  # (warped image, displacement field, Dice in the report), not the form before the run.
  QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" "$BIN/gvsl" app --sample cardiac --match \
    --screenshot "$OUT/app.png" && echo "app screenshot (after Z-Matching): $OUT/app.png" || echo "(app screenshot skipped)"
fi
echo "Demo outputs in $OUT/"
