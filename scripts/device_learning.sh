#!/usr/bin/env bash
# One GPU check for the tiny preset's open question (docs/model.md, "Reading the shape kind from the
# context"): does the kind contrast leave 0 with tens of times the images the CPU runs saw?
#
# Trains four runs side by side on one GPU (the tiny UNet is launch-bound, so they share it well):
# M2M-DINO and M2M-Self on two kinds (circles, squares), M2M-DINO on six kinds and M2M-DINO on sets that
# differ in their kind alone (one palette, plain background), the recipe of the CPU pilots (cosine,
# logit-normal t, EMA 0.999, bf16) at $BATCH sets per step. At that batch a run would see the sample
# captions' 240 training sets hundreds of times each, so each trains on $TRAIN_SETS generated sets of its
# kinds (bench_learning.build_training_mis) and is scored on the held-out sets of the sample captions' MIS.
#
# In order, about 6-7 minutes on one H100 with the defaults (estimates: the data step from this CPU's
# 8 ms per generated set, the GPU steps from earlier H200 timings; no GPU has run this version yet):
#   data         the three MIS (held-out and 3,072 training sets each), one process each (~30 s)
#   calibration  the four runs side by side for $CAL_STEPS steps: seconds per step of the slowest (~45 s)
#   training     the four runs side by side, each for $STEPS steps (default: the most that fit in
#                0.9 x $TRAIN_SECONDS at the calibrated speed, so the cosine schedule ends inside the
#                time), a checkpoint every fifth of the run, five kept                  (~4 min)
#   scoring      each label as soon as its runs end: every kept checkpoint, by
#                bench_learning_curve.py on the GPU (the judge of the proof of learning) (~1 min)
# Hard stops: a calibration run at $CAL_LIMIT s, a training run at $TRAIN_LIMIT s (default 1.25 x
# TRAIN_SECONDS + 40; a stopped run fails its label, its checkpoints are still scored).
# Each run's and each label's process is waited on by its PID: a failed run fails its own label (and a
# label whose run left no checkpoint is not scored), the others go on, and the script exits 1 at the end
# if any part failed. Written to $OUT as soon as they exist: the results JSON of each scored run
# (learning_curve_device-*.json), a tar of each label's final models (their `m2m train --out` folders,
# loadable with M2MPipeline.from_pretrained), and learning.log (this output, and the tail of every log);
# 8 files at most, what a device run brings back. One results table is printed last. Scoring also writes
# the device-* sections of RESULTS.md there, as any learning curve does; here, score the returned models'
# folders or read the JSONs.
#
# From this repository's root, here: `bash scripts/device_wheels.sh` once (diffusers, webdataset,
# braceexpand, ftfy and wcwidth travel as wheels in .whl/), then the device tool's run with
#   command: bash scripts/device_learning.sh      carry: [".whl"]      timeout_s: 570
# A smoke run of the same code on a CPU (tiny sizes; what scripts/device_check.sh runs):
#   bash scripts/device_check.sh scripts/device_learning.sh
#   SMOKE=1 WORK=/tmp/device bash scripts/device_learning.sh      # in an environment that has the packages
#
# device image packages: accelerate transformers safetensors numpy pillow tqdm requests filelock regex pyyaml scipy pyarrow matplotlib tokenizers
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-0}
[[ "$SMOKE" =~ ^[01]$ ]] || { echo "SMOKE: 0 or 1, got '$SMOKE'" >&2; exit 2; }
if [ "$SMOKE" = 1 ]; then  # tiny sizes for a CPU: every step of the script, in a few minutes; fp32 (bf16 is slow there)
    : "${BATCH:=2}" "${TRAIN_SETS:=64}" "${SETS:=2}" "${TRAIN_SECONDS:=20}" "${CAL_STEPS:=2}" "${MAX_STEPS:=3}"
    : "${NUM_WORKERS:=0}" "${SCORE_DEVICE:=cpu}" "${PRECISION:=no}" "${JUDGE_STEPS:=2}" "${CAL_LIMIT:=600}"
    : "${TRAIN_LIMIT:=900}" "${SAMPLE_STEPS:=2}"
fi
STEPS=${STEPS:-auto}              # optimizer steps of each run; auto: what fits in TRAIN_SECONDS
TRAIN_SECONDS=${TRAIN_SECONDS:-210}
TRAIN_LIMIT=${TRAIN_LIMIT:-$((TRAIN_SECONDS * 5 / 4 + 40))}  # a hard stop past the schedule's end: a stopped run fails its label
CAL_STEPS=${CAL_STEPS:-40}       # calibration steps (the speed is read from the last quarter)
CAL_LIMIT=${CAL_LIMIT:-120}
MAX_STEPS=${MAX_STEPS:-20000}
PRECISION=${PRECISION:-bf16}     # m2m train --mixed-precision
JUDGE_STEPS=${JUDGE_STEPS:-20}   # the judge's DDIM steps (20; fewer only for a smoke run)
SAMPLE_STEPS=${SAMPLE_STEPS:-20} # DDIM steps of each model's samples.png
BATCH=${BATCH:-64}
LR=${LR:-0.001}
TRAIN_SETS=${TRAIN_SETS:-3072}
SETS=${SETS:-32}                 # held-out sets scored per checkpoint (the judge's 32; fewer only for a smoke run)
NUM_WORKERS=${NUM_WORKERS:-3}    # data loading processes per run (four runs on the machine's 16 cores)
SCORE_DEVICE=${SCORE_DEVICE:-cuda}
WORK=${WORK:-assets/bench/device}
OUT=${OUT:-$WORK/out}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
for value in "$TRAIN_SECONDS" "$TRAIN_LIMIT" "$CAL_STEPS" "$CAL_LIMIT" "$MAX_STEPS" "$BATCH" "$TRAIN_SETS" "$SETS" \
    "$NUM_WORKERS" "$JUDGE_STEPS" "$SAMPLE_STEPS"; do
    [[ "$value" =~ ^[0-9]+$ ]] || { echo "TRAIN_SECONDS, TRAIN_LIMIT, CAL_STEPS, CAL_LIMIT, MAX_STEPS, BATCH, TRAIN_SETS, SETS, NUM_WORKERS, JUDGE_STEPS, SAMPLE_STEPS: whole numbers, got '$value'" >&2; exit 2; }
done
[[ "$PRECISION" =~ ^(no|bf16|fp16)$ ]] || { echo "PRECISION: no, bf16 or fp16" >&2; exit 2; }
[[ "$STEPS" =~ ^([0-9]+|auto)$ ]] || { echo "STEPS: a whole number or auto, got '$STEPS'" >&2; exit 2; }
[ "$CAL_STEPS" -ge 2 ] || { echo "CAL_STEPS: at least 2" >&2; exit 2; }
[[ "$LR" =~ ^[0-9.e-]+$ ]] || { echo "LR must be a number, got '$LR'" >&2; exit 2; }
[[ "$SCORE_DEVICE" =~ ^(cpu|cuda)$ ]] || { echo "SCORE_DEVICE: cpu or cuda" >&2; exit 2; }
for path in "$WORK" "$OUT"; do
    [[ "$path" =~ ^[A-Za-z0-9_./-]+$ ]] || { echo "WORK, OUT: letters, digits, '_', '.', '/' and '-' only" >&2; exit 2; }
done
mkdir -p "$WORK/logs" "$OUT"
# A bare machine has none of these; elsewhere an earlier run's runs and scores must not pass for this one's
rm -rf "$WORK"/runs-* "$WORK/calibration" benchmarks/results/learning_curve_device-*.json
exec > >(tee -a "$OUT/learning.log") 2>&1

. scripts/device_env.sh device_learning
if [ "$SCORE_DEVICE" = cuda ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "device_learning: no CUDA device (SMOKE=1 for a CPU smoke run)" >&2
    exit 1
fi
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start)) s"; }
failed=()
fail() { failed+=("$1"); echo "== FAILED: $1"; }
keep_tail() {  # log: its last 40 lines into learning.log, now
    echo "-- tail of $(basename "$1")"
    tail -n 40 "$1" | sed 's/\r/\n/g' | tail -n 40
}

echo "== data: held-out sets of six kinds, two kinds, the kind alone; $TRAIN_SETS generated training sets of each"
data() {  # name: $WORK/<name> (the sample captions' MIS, for its held-out sets) and $WORK/<name>-train
    $PY - "$WORK" "$1" "$TRAIN_SETS" > "$WORK/logs/data-$1.log" 2>&1 <<'EOF'
import sys
from pathlib import Path
sys.path[:0] = ["benchmarks", "."]
from bench_learning import build_mis, build_training_mis
work, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
prefix = {"six-kind": None, "two-kind": ("ball", "box"), "kind-only": ("ocean plain ball", "ocean plain box")}[name]
build_mis(work / name, prefix=prefix)
narrow = {"six-kind": {}, "two-kind": {"shapes": ("circle", "square")},
          "kind-only": {"shapes": ("circle", "square"), "palettes": ("ocean",), "textures": ("plain",)}}[name]
build_training_mis(work / f"{name}-train", n, **narrow)
EOF
}
declare -A data_pid data_ok
for name in six-kind two-kind kind-only; do data "$name" & data_pid[$name]=$!; done
for name in six-kind two-kind kind-only; do
    if wait "${data_pid[$name]}"; then data_ok[$name]=1; else data_ok[$name]=0; fail "data $name"; keep_tail "$WORK/logs/data-$name.log"; fi
done
echo "== data done at $(elapsed)"

# The four runs: label, variant, data
RUNS=("two-kind dino two-kind" "two-kind self two-kind" "six-kind dino six-kind" "kind-only dino kind-only")
train() {  # label variant data root steps log limit_s [extra flags]: one m2m train run, stopped at limit_s
    local label=$1 variant=$2 data=$3 root=$4 steps=$5 log=$6 limit=$7
    shift 7
    timeout --kill-after=10 "$limit" $PY -m m2m train --variant "$variant" --data "$WORK/$data-train" --out "$root/runs-$label/m2m-$variant" \
        --batch-size "$BATCH" --lr "$LR" --lr-schedule cosine --lr-warmup-steps $((steps / 10)) \
        --timestep-sampling logit-normal --ema-decay 0.999 --seed 0 --steps "$steps" --mixed-precision "$PRECISION" \
        --num-workers "$NUM_WORKERS" "$@" > "$log" 2>&1
}

if [ "$STEPS" = auto ]; then
    echo "== calibration: the four runs side by side for $CAL_STEPS steps"
    declare -A cal_pid
    for run in "${RUNS[@]}"; do
        read -r label variant data <<< "$run"
        [ "${data_ok[$data]}" = 1 ] || continue
        train "$label" "$variant" "$data" "$WORK/calibration" "$CAL_STEPS" "$WORK/logs/calibration-$label-$variant.log" \
            "$CAL_LIMIT" --checkpoint-every 0 --sample-steps 1 --log-every $((CAL_STEPS / 4 > 0 ? CAL_STEPS / 4 : 1)) &
        cal_pid["$label $variant"]=$!
    done
    slowest=""
    for key in "${!cal_pid[@]}"; do
        log="$WORK/logs/calibration-${key/ /-}.log"
        if wait "${cal_pid[$key]}"; then
            # the last log line's img/s: the steady speed with the other runs beside it
            rate=$(grep -o 'img/s [0-9.]*' "$log" | tail -n 1 | cut -d' ' -f2)
            if ! $PY -c "import sys; sys.exit(not float('${rate:-0}') > 0)" 2> /dev/null; then
                echo "calibration $key: no speed in its log"
                keep_tail "$log"
                continue
            fi
            s=$($PY -c "print($BATCH * 5 / $rate)")
            echo "calibration $key: $rate img/s, $s s/step"
            slowest=$($PY -c "print(max(float('$s'), float('${slowest:-0}')))")
        else
            echo "calibration $key: failed"
            keep_tail "$log"
        fi
    done
    rm -rf "$WORK/calibration"
    [ -n "$slowest" ] || { fail "calibration (no run trained)"; slowest=1; }
    # the startup of each run (imports, data loaders, first steps) is outside the calibrated speed
    STEPS=$($PY -c "print(min($MAX_STEPS, max(10, int(0.9 * $TRAIN_SECONDS / $slowest))))")
    echo "== calibration done at $(elapsed): $STEPS steps of the slowest run in ${TRAIN_SECONDS} s"
fi

every=$((STEPS / 5 > 0 ? STEPS / 5 : 1))
echo "== training: $STEPS steps of $BATCH sets per run, a checkpoint every $every steps (at most $TRAIN_LIMIT s)"
declare -A run_pid
for run in "${RUNS[@]}"; do
    read -r label variant data <<< "$run"
    [ "${data_ok[$data]}" = 1 ] || { fail "train $label $variant (no data)"; continue; }
    train "$label" "$variant" "$data" "$WORK" "$STEPS" "$WORK/logs/train-$label-$variant.log" "$TRAIN_LIMIT" \
        --checkpoint-every "$every" --keep-checkpoints 5 --sample-steps "$SAMPLE_STEPS" &
    run_pid["$label $variant"]=$!
done

score() {  # label data variants...: every checkpoint of the label's runs; its JSONs and models to $OUT
    local label=$1 data=$2 ckpts=() models=()
    shift 2
    for variant in "$@"; do
        ckpts+=("$WORK/runs-$label/m2m-$variant.ckpt")
        models+=("runs-$label/m2m-$variant")
    done
    $PY benchmarks/bench_learning_curve.py --checkpoints "${ckpts[@]}" --data "$WORK/$data" --sets "$SETS" \
        --steps "$JUDGE_STEPS" --device "$SCORE_DEVICE" --label "device-$label" > "$WORK/logs/score-$label.log" 2>&1 || return 1
    cp benchmarks/results/learning_curve_device-"$label"*.json "$OUT/" || return 1
    local present=()
    for m in "${models[@]}"; do [ -d "$WORK/$m" ] && present+=("$m"); done  # a stopped run has no model folder
    [ ${#present[@]} -gt 0 ] || return 0
    tar -cf "$OUT/models-$label.tar.part" -C "$WORK" "${present[@]}" || return 1
    mv "$OUT/models-$label.tar.part" "$OUT/models-$label.tar"
}

declare -A score_pid
score_label() {  # label: wait for its runs, then score what they left
    local label=$1 variants=() key rc
    for run in "${RUNS[@]}"; do
        read -r l variant _ <<< "$run"
        [ "$l" = "$label" ] || continue
        key="$label $variant"
        [ -n "${run_pid[$key]:-}" ] || continue  # no data: failed above
        wait "${run_pid[$key]}"
        rc=$?
        keep_tail "$WORK/logs/train-$label-$variant.log"
        if [ "$rc" -eq 0 ]; then
            variants+=("$variant")
        else
            [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="stopped at $TRAIN_LIMIT s" || why="exit $rc"
            fail "train $key ($why)"
            if compgen -G "$WORK/runs-$label/m2m-$variant.ckpt/checkpoint-*" > /dev/null; then
                echo "$key: its checkpoints are still scored"
                variants+=("$variant")
            fi
        fi
    done
    if [ ${#variants[@]} -eq 0 ]; then fail "score $label (no checkpoints)"; return; fi
    echo "== scoring $label (${variants[*]}) at $(elapsed)"
    score "$label" "$label" "${variants[@]}" &
    score_pid[$label]=$!
}
# Labels in the order their runs are likely to end: one-run labels first
for label in kind-only six-kind two-kind; do score_label "$label"; done
echo "== training done at $(elapsed)"
for label in kind-only six-kind two-kind; do
    [ -n "${score_pid[$label]:-}" ] || continue
    if wait "${score_pid[$label]}"; then echo "== scored $label at $(elapsed)"; else fail "score $label"; fi
    keep_tail "$WORK/logs/score-$label.log"
done

echo "== $(elapsed) in all"
$PY - "$OUT" <<'EOF'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "learning_curve_device-*.json"))):
    run = json.load(open(path))
    for r in run["rows"]:
        print(f"{os.path.basename(path)[15:-5]:28s} step {r['step']:6d} images {r['images_seen']:9,d} palette "
              f"{r['palette']:.2f} shape {r['shape']:.2f} texture {r['texture']:.2f} score {r['score']:.2f} "
              f"shape fit {r['shape_fit']:.2f} kind contrast {r.get('kind_contrast', float('nan')):.2f}")
EOF
if [ ${#failed[@]} -gt 0 ]; then
    echo "device_learning: FAILED: ${failed[*]}"
    exit 1
fi
