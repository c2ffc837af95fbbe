#!/usr/bin/env bash
# `make bundle-check`: build the desktop bundle (dist/gvsl-studio, app.spec) in its own
# environment (.venv-bundle) and check the frozen app as a user gets it:
#   1. it starts under Xvfb on the cardiac sample pair, runs Z-Matching in the window and
#      saves a screenshot (out/bundle-check/app.png: look at it: five GVSL tabs, the result
#      layers, the Dice; no "Private attribute access" toasts);
#   2. a frozen `gvsl-studio sample` + `gvsl-studio match` on sample data;
#   3. a frozen `gvsl-studio evaluate-labels` (a command the bundle once lacked) that names
#      the structures from the sample's label table.
# Slow (a 10-20 min build, ~1 GB): before a release or after changing app.spec, not in CI.
# SKIP_BUILD=1 checks the bundle already in dist/ without rebuilding it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BUNDLE_CHECK_OUT:-out/bundle-check}
APP=dist/gvsl-studio/gvsl-studio

if [ -z "${SKIP_BUILD:-}" ]; then
  start=$(date +%s)
  make app-bundle PY="${PY:-python3}"
  echo "bundle built in $(( $(date +%s) - start )) s"
fi
[ -x "$APP" ] || { echo "no bundle at $APP" >&2; exit 1; }
echo "bundle size: $(du -sh dist/gvsl-studio | cut -f1) ($(find dist/gvsl-studio -type f | wc -l) files)"

rm -rf "$OUT"; mkdir -p "$OUT"
fail() { echo "bundle check FAILED: $*" >&2; exit 1; }

# 1. The window, after a match on the sample pair. Notifications from warning up also go to
# the console (napari's setting, by environment), so a toast is a line in app.log too.
NAPARI_APPLICATION_CONSOLE_NOTIFICATION_LEVEL=warning QT_API=pyqt6 timeout 900 xvfb-run -a -s "-screen 0 1600x1000x24" \
  "$APP" app --sample cardiac --match --screenshot "$OUT/app.png" >"$OUT/app.log" 2>&1 \
  || { cat "$OUT/app.log"; fail "the app did not start, match and take its screenshot"; }
[ -s "$OUT/app.png" ] || fail "no screenshot"
if grep -E "No Qt bindings|Private attribute access|Traceback|Error:" "$OUT/app.log"; then
  fail "the app printed the lines above (see $OUT/app.log)"
fi
echo "app: started, matched, screenshot $OUT/app.png"

# 2. Frozen commands on sample data.
"$APP" sample cardiac --out "$OUT/data" --n 2 --seed 7 --shape 64 >"$OUT/sample.log" 2>&1 \
  || { cat "$OUT/sample.log"; fail "gvsl-studio sample"; }
"$APP" match "$OUT/data/images/case_000.nii.gz" "$OUT/data/images/case_001.nii.gz" \
  --fixed-labels "$OUT/data/labels/case_000.nii.gz" --moving-labels "$OUT/data/labels/case_001.nii.gz" \
  --out "$OUT/match" >"$OUT/match.log" 2>&1 || { cat "$OUT/match.log"; fail "gvsl-studio match"; }
[ -s "$OUT/match/warped.nii.gz" ] || { ls "$OUT/match"; fail "gvsl-studio match wrote no warped.nii.gz"; }
tail -n 4 "$OUT/match.log"

# 3. evaluate-labels, with --verbose: both came from gvsl's own parser.
"$APP" --verbose evaluate-labels "$OUT/data/labels/case_000.nii.gz" "$OUT/match/warped_labels.nii.gz" \
  --out "$OUT/dice.csv" --resample --quiet >"$OUT/evaluate.log" 2>&1 \
  || { cat "$OUT/evaluate.log"; fail "gvsl-studio evaluate-labels"; }
grep -q "LV" "$OUT/dice.csv" || fail "evaluate-labels did not name the structures (no LV in $OUT/dice.csv)"
cat "$OUT/evaluate.log"
echo "bundle check passed: $OUT/"
