#!/usr/bin/env bash
# Issue 7, item 4: every benchmark once at the study's size (ViT-B/16 shape, random weights) on a
# GPU machine, as one prepared command (about 5 minutes on an H200 is the plan; each benchmark
# has its own time limit so one slow script cannot eat the others' time).
# Prepare here with benchmarks/gpu_prepare.sh; then run through the device tool:
#   command "bash benchmarks/gpu_run.sh", carry [".whl", ".gscache"], timeout_s 600
# The whole log lands in $OUT/gpu_bench.log (or output/gpu_bench/ where OUT is unset). REPEAT,
# EPOCHS and STEPS scale the timings (the defaults suit a GPU; 1 1 1 checks the script on a CPU).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/output/gpu_bench}
REPEAT=${REPEAT:-10} EPOCHS=${EPOCHS:-3} STEPS=${STEPS:-20}
mkdir -p "$OUT"
LOG=$OUT/gpu_bench.log
: > "$LOG"
if ! python3 -c "import open_clip, yacs" 2>/dev/null; then
    if [ ! -d .whl ]; then
        echo "open_clip or yacs is missing and there is no .whl folder: run benchmarks/gpu_prepare.sh first and carry .whl" | tee -a "$LOG"
        exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gs_site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/gs_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .gscache ]; then export GATESCOPE_CACHE=$PWD/.gscache; fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi";
  python3 -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'open_clip', open_clip.__version__)"; } 2>&1 | tee -a "$LOG"

failed=0
bench() {  # bench SECONDS SCRIPT ARGS...: run one benchmark, its whole output to the log
    local limit=$1; shift
    echo "== python benchmarks/$*" | tee -a "$LOG"
    local start=$SECONDS part=$OUT/.current
    timeout "$limit" python3 "benchmarks/$@" > "$part" 2>&1
    local rc=$?
    cat "$part" >> "$LOG"
    [ $rc -eq 0 ] || failed=$((failed + 1))
    echo "   rc $rc in $((SECONDS - start)) s; $(grep -E '^ratio:' "$part" || echo 'no ratio (see the log)')" | tee -a "$LOG"
    rm -f "$part"
}
bench 60 text_eot_truncation.py --repeat "$REPEAT"
bench 60 cocoop_batched.py --repeat "$REPEAT"
bench 90 cocoop_batched.py --repeat "$REPEAT" --classes 100
bench 120 feature_cache_epoch.py --size vit_b16 --epochs "$EPOCHS"
bench 60 feature_cache_epoch.py --epochs 9
bench 120 diagnostics_overhead.py --size vit_b16 --steps "$STEPS"
bench 120 cocoopgated_epoch.py --size vit_b16 --epochs "$EPOCHS"
bench 60 cocoopgated_epoch.py --epochs "$EPOCHS"
echo "$failed benchmark(s) failed; log: $LOG" | tee -a "$LOG"
exit $((failed > 0))
