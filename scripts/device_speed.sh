#!/usr/bin/env bash
# Every GPU speed number of the project in one command on a bare GPU machine, as ratios measured on one
# card in one run (SD-2.1-base size, random weights): in order
#   correctness   Image-Set Attention vs the float64 reference (fp32, bf16); cached = uncached sampling
#                 (M2M-Self, M2M-DINO); the unconditional branch's one copy + log W = W copies
#   sampling      SD UNet, M2M-Self, M2M-DINO (4 inputs, cached), DDIM 50 + CFG + VAE, fp16, batch 1
#                 then batch 8 (one JSON, rewritten after each: 8 files are what comes back from $OUT)
#   sequence      image 50 / image 5 of one 50-image call per variant (W = 4, DDIM 20)
#   train         img/s, peak memory and MFU of bf16 training steps, SD / Self / DINO ($TRAIN_BATCH images)
#   micro_batch   benchmarks/bench_micro_batch.py: micro-batches 1, 2, 4, 8, memory and img/s
#   precomputed   benchmarks/bench_precomputed.py --full-size: stored vs encoded latents, step time
#   speed_options m2m/speed.py's options against eager at batch 1: one guided M2M-DINO step (SDPA flash /
#                 efficient / cudnn, channels_last, compile cudagraphs), one AdamW step over the SD-size
#                 UNet (for-loop / foreach / fused), then compile reduce-overhead / default; each step
#                 = eager to 1e-2, compilation timed apart: what decides the options' defaults
#                 (docs/model.md, Speed options). Last: the issue's measurements come first.
# Each part is its own process (benchmarks/bench_device_speed.py PART), under its own time limit, and
# writes $OUT/PART.json as soon as it ends; a part that fails or runs out of time fails its own row and the
# next one runs. One table is printed last; the exit status is 1 if any part failed. $OUT/speed.log is the
# whole output (8 files in $OUT in all: what a device run brings back).
#
# About 7 minutes on one H100: an estimate from the H200 timings in benchmarks/RESULTS.md, not yet a
# measurement (sampling at batch 1 no longer times the uncached sampler, 25 s; speed_options, most of it inductor
# compiling the SD-size UNet, rewrites its JSON after every option, so its limit cuts the last compile rows
# where the card is slower and keeps the rows it has). Each part has its own limit below, and parts still to come when $BUDGET
# seconds have passed are failed as not run, so the command ends inside 9.5 minutes. From this repository's root, here:
# `bash scripts/device_wheels.sh` once, then the device tool's run with
#   command: bash scripts/device_speed.sh      carry: [".whl"]      timeout_s: 570
# A smoke run of the same code on a CPU (tiny sizes; what scripts/device_check.sh runs):
#   bash scripts/device_check.sh scripts/device_speed.sh
#   SMOKE=1 OUT=/tmp/speed bash scripts/device_speed.sh     # in an environment that has the packages
#
# device image packages: accelerate transformers safetensors numpy pillow tqdm requests filelock regex pyyaml
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
OUT=${OUT:-assets/bench/device-speed}
WORK=${WORK:-$(mktemp -d)}
SITE=${SITE:-/tmp/site}
TRAIN_BATCH=${TRAIN_BATCH:-16}
BUDGET=${BUDGET:-420}
PY=${PYTHON:-python3}
[[ "$SMOKE" =~ ^[01]$ ]] || { echo "SMOKE: 0 or 1, got '$SMOKE'" >&2; exit 2; }
for value in "$TRAIN_BATCH" "$BUDGET"; do
    [[ "$value" =~ ^[0-9]+$ ]] || { echo "TRAIN_BATCH, BUDGET: whole numbers, got '$value'" >&2; exit 2; }
done
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/speed.log") 2>&1

. scripts/device_env.sh device_speed
if [ "$SMOKE" = 1 ]; then
    echo "device_speed: smoke sizes (tiny preset) on whatever device there is"
    # one thread: on CPU cores shared with other work, threads that wait for each other made the tiny
    # UNet's step a hundred times slower
    export OMP_NUM_THREADS=1
fi

STATUS=$WORK/status.tsv
: > "$STATUS"
start=$(date +%s)
part() {  # name limit_s: one part, its own process and time limit; its status goes to $STATUS
    local name=$1 limit=$2 rc begin
    shift 2
    begin=$(date +%s)
    if [ $((begin - start)) -ge $((SMOKE == 1 ? BUDGET * 6 : BUDGET)) ]; then
        echo "== $name: not run, $BUDGET s spent"
        printf '%s\t%s\t%s\n' "$name" "not run (out of time)" 0 >> "$STATUS"
        return
    fi
    if [ "$SMOKE" = 1 ]; then  # one thread of a CPU shared with other work: the limits are a GPU's, x6 (x3 let
        # correctness run out of time on two cores that several test runs shared)
        set -- --smoke "$@"
        limit=$((limit * 6))
    fi
    echo "== $name (at most $limit s)"
    timeout --kill-after=10 "$limit" $PY -m benchmarks.bench_device_speed "$name" --json "$OUT/$name.json" "$@"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        printf '%s\t%s\t%s\n' "$name" ok $(($(date +%s) - begin)) >> "$STATUS"
    else
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && state="timed out after $limit s" || state="exit $rc"
        echo "== $name: FAILED ($state)"
        printf '%s\t%s\t%s\n' "$name" "$state" $(($(date +%s) - begin)) >> "$STATUS"
    fi
}

part correctness 90
part sampling 180
part sequence 120
part train 90 --train-batch "$TRAIN_BATCH"
part micro_batch 120
part precomputed 90
part speed_options 100

echo
echo "== $(($(date +%s) - start)) s in all"
$PY -m benchmarks.bench_device_speed table "$OUT" "$STATUS"
rc=$?
[ "$rc" -eq 0 ] || echo "device_speed: a part failed (its row above says which)"
exit "$rc"
