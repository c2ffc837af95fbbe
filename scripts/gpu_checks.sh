#!/usr/bin/env bash
# Everything only a GPU can check, in one command that fits a short loan of one CUDA GPU:
#   1. the CUDA tests (tests/models/test_cuda.py: matching, pre-training, fine-tuning and inference on
#      CUDA agree with the CPU);
#   2. matching timings on CUDA: five held-out cardiac pairs (Dice, seconds per pair) and one
#      1 mm brain MR pair, the network with its refinement, side by side with nothing else running;
#   3. the paper-table study's `gpu` budget (the medium study at the paper's width 32, three seeds,
#      runs side by side in separate processes), given whatever time is left before the deadline.
#
#   bash scripts/gpu_checks.sh [OUT_DIR]          (default: runs/gpu_checks/out)
#
# OUT_DIR receives seven files only (a lent machine returns few): log.txt, the two matching JSONs,
# the study's RESULTS.md, results.json and Fig. 7, and a tar of its runs' reports and logs; the
# runs themselves are under runs/gpu_checks/work.
#
# Settings (environment): DEADLINE_S (default 540: the study is stopped with SIGINT so that the
# whole script ends by then, leaving time to pack the results), PY (python; default .venv/bin/python
# where it exists, else python3), DEVICE (cuda), STUDY_BUDGET (gpu), JOBS (15: every pre-training
# run of the three seeds at once), SEEDS ("0 1 2"), PAIRS (5 cardiac pairs), MEM_SIDE (256),
# STEPS ("tests match study": which parts to run; STEPS=study gives the study the whole time).
#
# The study starts NVIDIA's Multi-Process Service where it can: without it the 15 processes share
# the H200 by time slices and each GVSL step took 0.20 s (0.032 s alone), with it 0.065 s
# (docs/results/benchmarks.md, "On a lent GPU").
# DEVICE=cpu STUDY_BUDGET=tiny JOBS=2 SEEDS=0 PAIRS=1 MEM_SIDE=64 is a dry run of the whole script.
#
# A machine whose python lacks the project's dependencies (SimpleITK, MONAI, openTSNE, psygnal,
# isal, nilearn, nibabel) and cannot download them: put them unpacked into a tar.xz at
# .gpusite/site.tar.xz (see docs/results/benchmarks.md, "On a lent GPU"); it is unpacked into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${1:-runs/gpu_checks/out}
WORK=runs/gpu_checks/work
DEADLINE_S=${DEADLINE_S:-540}
DEVICE=${DEVICE:-cuda}
STUDY_BUDGET=${STUDY_BUDGET:-gpu}
JOBS=${JOBS:-15}
SEEDS=${SEEDS:-0 1 2}
PAIRS=${PAIRS:-5}
MEM_SIDE=${MEM_SIDE:-256}
STEPS=${STEPS:-tests match study}
want() { [[ " $STEPS " == *" $1 "* ]]; }
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }

if ! "$PY" -c "import SimpleITK, monai, openTSNE, psygnal, nilearn" 2>/dev/null; then
  if [ -f .gpusite/site.tar.xz ]; then
    say "unpacking the carried dependencies into /tmp/site"
    mkdir -p /tmp/site && tar xJf .gpusite/site.tar.xz -C /tmp/site
  else
    say "missing dependencies and no .gpusite/site.tar.xz: install the project first (pip install -e .[brain])"
    exit 2
  fi
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
fi

if want tests; then
say "1. CUDA tests"
# -o filterwarnings=: the project's warning filters name packages of the GUI, absent there
timeout 120 "$PY" -m pytest -q -rs -p no:cacheprovider -o filterwarnings= tests/models/test_cuda.py 2>&1 | tee -a "$LOG"

fi

if want match; then
say "2a. cardiac matching on $DEVICE: $PAIRS held-out pairs"
timeout 120 "$PY" benchmarks/bench_match.py --pairs "$PAIRS" --seed-base 3000 --no-classical --skip-latency \
  --device "$DEVICE" --json "$OUT/bench_match_$DEVICE.json" 2>&1 | tee -a "$LOG"
say "2b. brain MR matching on $DEVICE: one 1 mm pair"
timeout 120 "$PY" benchmarks/bench_brain_match.py --pairs 1 --no-classical --device "$DEVICE" \
  --json "$OUT/bench_brain_$DEVICE.json" 2>&1 | tee -a "$LOG"
say "2c. memory and time of one ${MEM_SIDE}^3 pair on $DEVICE"
timeout 90 "$PY" benchmarks/match_memory.py --side "$MEM_SIDE" --device "$DEVICE" 2>&1 | tee -a "$LOG"

fi

if want study; then
MPS=0
if [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  MPS=1
  say "NVIDIA Multi-Process Service started for the study's processes"
fi
STUDY_S=$(( $(left) - 30 ))
say "3. paper-table study, budget $STUDY_BUDGET, seeds $SEEDS, $JOBS runs side by side, at most $STUDY_S s"
if [ "$STUDY_S" -gt 60 ]; then
  # shellcheck disable=SC2086  # SEEDS is a list
  timeout -s INT -k 20 "$STUDY_S" "$PY" benchmarks/paper_table.py --budget "$STUDY_BUDGET" --seeds $SEEDS \
    --jobs "$JOBS" --device "$DEVICE" --work "$WORK/study_work" --out "$WORK/study" 2>&1 | tee -a "$LOG"
else
  say "no time left for the study"
fi
[ "$MPS" = 1 ] && (echo quit | nvidia-cuda-mps-control)
fi

# What comes back from a lent machine is a few files: the study's tables, Fig. 7 and the runs'
# reports and logs (checkpoints stay behind).
[ -f "$WORK/study/figures/fig7_tsne.png" ] && cp "$WORK/study/figures/fig7_tsne.png" "$OUT/study_fig7_tsne.png"
[ -f "$WORK/study/RESULTS.md" ] && cp "$WORK/study/RESULTS.md" "$OUT/study_RESULTS.md"
[ -f "$WORK/study/results.json" ] && cp "$WORK/study/results.json" "$OUT/study_results.json"
if [ -d "$WORK/study_work" ]; then
  tar czf "$OUT/study_runs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='study_work/data' study_work
fi
ls -l "$OUT" | tee -a "$LOG"
say "done"
