#!/usr/bin/env bash
# One GPU check for the tiny preset's open question (docs/model.md, "Reading the shape kind from the
# context"; docs/evaluation.md, "The control"): with tens of times the images the CPU runs saw, is the
# shape kind read from the context, and if not, is reading or drawing the limit?
#
# Trains five runs side by side on one GPU (the tiny UNet is launch-bound, so they share it well), the
# recipe of the CPU pilots (cosine, logit-normal t, EMA 0.999, bf16) at $BATCH sets per step, each on
# $TRAIN_SETS generated sets of its kinds (bench_learning.build_training_mis):
#   kind-only  circles and squares, one palette, plain background: the control (the context a token
#              stating the set's kind, benchmarks/learning/control.py), M2M-DINO and M2M-Self
#   six-kind   every shape kind, palette and texture: M2M-DINO and M2M-Self
# M2M-DINO's E_v is the one folder $E_V names (default weights/tiny/dinov2, the tiny preset's pre-trained
# E_v); where that folder is absent, M2M-DINO runs with the preset's own and the log says so.
# Each label's final models are scored by the judge (benchmarks/bench_judge.py, docs/evaluation.md): its
# protocol's balanced held-out sets (64 kind-only, 120 six-kind), s = 1 and s = 2, bootstrap 95%
# intervals; generation on the GPU, the detector in $JUDGE_WORKERS processes.
#
# In order, about 6-7 minutes on one H100 with the defaults (estimates: the data from this CPU's 8 ms per
# generated set, the GPU steps from earlier H200 timings; no GPU has run this version yet):
#   data         each label's $TRAIN_SETS training sets and its judge's held-out sets, one process each (~30 s)
#   calibration  the five runs side by side for $CAL_STEPS steps: seconds per step of the slowest (~60 s)
#   training     the five runs side by side, each for $STEPS steps (default: the most that fit in
#                0.9 x $TRAIN_SECONDS at the calibrated speed, so the cosine schedule ends inside the
#                time), a checkpoint every fifth of the run, five kept                  (~3.5 min)
#   export       each label's final models in float16, as soon as its runs end (seconds)
#   scoring      each label's final models by the judge, on the GPU                      (~1 min)
# Hard stops: a calibration run at $CAL_LIMIT s, a training run at $TRAIN_LIMIT s (default 1.25 x
# TRAIN_SECONDS + 40; a stopped run fails its label; its model folder, if it wrote one, is still scored).
# Each process is waited on by its PID: a failed run fails its own label (a label with no model left is not
# scored), the others go on, and the script exits 1 at the end if any part failed. Written to $OUT as soon
# as they exist: models-<label>.tar (the label's final models, float16 safetensors pipeline folders with a
# card, loadable with M2MPipeline.from_pretrained), judge_device-<label>.json (the judge's numbers) and
# learning.log (this output, and the tail of every log): 5 files. One results table is printed last.
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
    : "${NUM_WORKERS:=0}" "${SCORE_DEVICE:=cpu}" "${PRECISION:=no}" "${JUDGE_STEPS:=1}" "${CAL_LIMIT:=600}"
    : "${TRAIN_LIMIT:=900}" "${SAMPLE_STEPS:=1}" "${JUDGE_WORKERS:=1}" "${GENERATE:=1}"
fi
STEPS=${STEPS:-auto}              # optimizer steps of each run; auto: what fits in TRAIN_SECONDS
TRAIN_SECONDS=${TRAIN_SECONDS:-200}
TRAIN_LIMIT=${TRAIN_LIMIT:-$((TRAIN_SECONDS * 5 / 4 + 40))}  # a hard stop past the schedule's end: a stopped run fails its label
CAL_STEPS=${CAL_STEPS:-40}       # calibration steps (the speed is read from the last quarter)
CAL_LIMIT=${CAL_LIMIT:-120}
MAX_STEPS=${MAX_STEPS:-20000}
PRECISION=${PRECISION:-bf16}     # m2m train --mixed-precision
JUDGE_STEPS=${JUDGE_STEPS:-20}   # the judge's DDIM steps (20; fewer only for a smoke run)
GENERATE=${GENERATE:-4}          # the judge's images per held-out set (4; fewer only for a smoke run)
JUDGE_WORKERS=${JUDGE_WORKERS:-6} # detector processes of each label's scoring
SAMPLE_STEPS=${SAMPLE_STEPS:-20} # DDIM steps of each model's samples.png
BATCH=${BATCH:-64}
LR=${LR:-0.001}
TRAIN_SETS=${TRAIN_SETS:-3072}
SETS=${SETS:-64}                 # held-out sets: the judge's 64 at least (fewer only for a smoke run)
NUM_WORKERS=${NUM_WORKERS:-2}    # data loading processes per run (five runs on the machine's 16 cores)
SCORE_DEVICE=${SCORE_DEVICE:-cuda}
E_V=${E_V:-weights/tiny/dinov2}  # M2M-DINO's tiny E_v: the one place this script names it
WORK=${WORK:-assets/bench/device}
OUT=${OUT:-$WORK/out}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
for value in "$TRAIN_SECONDS" "$TRAIN_LIMIT" "$CAL_STEPS" "$CAL_LIMIT" "$MAX_STEPS" "$BATCH" "$TRAIN_SETS" "$SETS" \
    "$NUM_WORKERS" "$JUDGE_STEPS" "$SAMPLE_STEPS" "$JUDGE_WORKERS" "$GENERATE"; do
    [[ "$value" =~ ^[0-9]+$ ]] || { echo "TRAIN_SECONDS, TRAIN_LIMIT, CAL_STEPS, CAL_LIMIT, MAX_STEPS, BATCH, TRAIN_SETS, SETS, NUM_WORKERS, JUDGE_STEPS, SAMPLE_STEPS, JUDGE_WORKERS, GENERATE: whole numbers, got '$value'" >&2; exit 2; }
done
[[ "$PRECISION" =~ ^(no|bf16|fp16)$ ]] || { echo "PRECISION: no, bf16 or fp16" >&2; exit 2; }
[[ "$STEPS" =~ ^([0-9]+|auto)$ ]] || { echo "STEPS: a whole number or auto, got '$STEPS'" >&2; exit 2; }
[ "$CAL_STEPS" -ge 2 ] || { echo "CAL_STEPS: at least 2" >&2; exit 2; }
[[ "$LR" =~ ^[0-9.e-]+$ ]] || { echo "LR must be a number, got '$LR'" >&2; exit 2; }
[[ "$SCORE_DEVICE" =~ ^(cpu|cuda)$ ]] || { echo "SCORE_DEVICE: cpu or cuda" >&2; exit 2; }
for path in "$WORK" "$OUT" "$E_V"; do
    [[ "$path" =~ ^[A-Za-z0-9_./-]+$ ]] || { echo "WORK, OUT, E_V: letters, digits, '_', '.', '/' and '-' only" >&2; exit 2; }
done
[ "$SETS" -ge 64 ] || [ "$SMOKE" = 1 ] || { echo "SETS: at least 64, the judge's bar (SMOKE=1 for fewer)" >&2; exit 2; }
mkdir -p "$WORK/logs" "$OUT"
# A bare machine has none of these; elsewhere an earlier run's runs and scores must not pass for this one's
rm -rf "$WORK"/runs-* "$WORK/calibration" "$WORK/fp16" benchmarks/results/judge_device-*.json
exec > >(tee -a "$OUT/learning.log") 2>&1

. scripts/device_env.sh device_learning
export PYTHONPATH="$PWD/benchmarks:$PYTHONPATH"  # the benchmarks' learning package: the judge and the control
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
dino_flags=()
if [ -d "$E_V" ]; then
    dino_flags=(--dino-folder "$E_V")
    echo "== M2M-DINO's E_v: $E_V"
else
    echo "== M2M-DINO's E_v: $E_V is absent; M2M-DINO runs with the tiny preset's own"
fi

LABELS=(kind-only six-kind)
echo "== data: $TRAIN_SETS generated training sets and the judge's balanced held-out sets of each label"
data() {  # label: $WORK/<label>-train and the judge's held-out MIS under $WORK/judge
    $PY - "$WORK" "$1" "$TRAIN_SETS" "$SETS" > "$WORK/logs/data-$1.log" 2>&1 <<'PY'
import sys
from pathlib import Path
from bench_learning import build_training_mis
from learning.judge import PROTOCOLS, heldout_mis, heldout_root
work, label, n, sets = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
protocol = PROTOCOLS[label]
build_training_mis(work / f"{label}-train", n, shapes=protocol.shapes or None, palettes=protocol.palettes or None,
                   textures=protocol.textures or None)
n_sets = protocol.set_count(sets)
print(heldout_mis(heldout_root(work / "judge", protocol, n_sets), protocol, n_sets))
PY
}
declare -A data_pid data_ok
for label in "${LABELS[@]}"; do data "$label" & data_pid[$label]=$!; done
for label in "${LABELS[@]}"; do
    if wait "${data_pid[$label]}"; then data_ok[$label]=1; else data_ok[$label]=0; fail "data $label"; keep_tail "$WORK/logs/data-$label.log"; fi
done
echo "== data done at $(elapsed)"

# The five runs: label (also their data), variant
RUNS=("kind-only control" "kind-only dino" "kind-only self" "six-kind dino" "six-kind self")
# m2m's CLI with the benchmarks' control variant known (importing learning.control registers it)
M2M=("$PY" -c 'import sys, learning.control; from m2m.cli import main; sys.exit(main())')
train() {  # label variant root steps log limit_s [extra flags]: one m2m train run, stopped at limit_s
    local label=$1 variant=$2 root=$3 steps=$4 log=$5 limit=$6 extra=()
    shift 6
    [ "$variant" = dino ] && extra=("${dino_flags[@]}")
    timeout --kill-after=10 "$limit" "${M2M[@]}" train --variant "$variant" --data "$WORK/$label-train" \
        --out "$root/runs-$label/m2m-$variant" --batch-size "$BATCH" --lr "$LR" --lr-schedule cosine \
        --lr-warmup-steps $((steps / 10)) --timestep-sampling logit-normal --ema-decay 0.999 --seed 0 --steps "$steps" \
        --mixed-precision "$PRECISION" --num-workers "$NUM_WORKERS" "${extra[@]}" "$@" > "$log" 2>&1
}

if [ "$STEPS" = auto ]; then
    echo "== calibration: the five runs side by side for $CAL_STEPS steps"
    declare -A cal_pid
    for run in "${RUNS[@]}"; do
        read -r label variant <<< "$run"
        [ "${data_ok[$label]}" = 1 ] || continue
        train "$label" "$variant" "$WORK/calibration" "$CAL_STEPS" "$WORK/logs/calibration-$label-$variant.log" \
            "$CAL_LIMIT" --checkpoint-every 0 --sample-steps 1 --log-every $((CAL_STEPS / 4 > 0 ? CAL_STEPS / 4 : 1)) &
        cal_pid["$label $variant"]=$!
    done
    slowest=""
    for key in "${!cal_pid[@]}"; do
        log="$WORK/logs/calibration-${key/ /-}.log"
        if wait "${cal_pid[$key]}"; then
            # the last log line's img/s: the steady speed with the other runs beside it; below the log's
            # 0.1 img/s (a loaded CPU's smoke run), the run's mean seconds per step from its metrics
            rate=$(grep -o 'img/s [0-9.]*' "$log" | tail -n 1 | cut -d' ' -f2)
            read -r label variant <<< "$key"
            s=$($PY - "$BATCH" "${rate:-0}" "$WORK/calibration/runs-$label/m2m-$variant/train_metrics.json" <<'PY'
import json, sys
batch, rate, metrics = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(batch * 5 / rate if rate > 0 else json.load(open(metrics))["s_per_step"])
PY
            )
            if ! $PY -c "import sys; sys.exit(not float('${s:-0}') > 0)" 2> /dev/null; then
                echo "calibration $key: no speed in its log or metrics"
                keep_tail "$log"
                continue
            fi
            echo "calibration $key: ${rate:-no} img/s, $s s/step"
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
    read -r label variant <<< "$run"
    [ "${data_ok[$label]}" = 1 ] || { fail "train $label $variant (no data)"; continue; }
    train "$label" "$variant" "$WORK" "$STEPS" "$WORK/logs/train-$label-$variant.log" "$TRAIN_LIMIT" \
        --checkpoint-every "$every" --keep-checkpoints 5 --sample-steps "$SAMPLE_STEPS" &
    run_pid["$label $variant"]=$!
done

export_models() {  # label variants...: the final models in float16 with a card, one tar in $OUT
    local label=$1
    shift
    $PY - "$WORK" "$label" "$STEPS" "$@" > "$WORK/logs/export-$label.log" 2>&1 <<'PY' || return 1
import sys
from pathlib import Path
import learning.control  # the control variant: diffusers loads a saved control once its module is imported
from learning.common import export_fp16
work, label, steps, variants = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
for variant in variants:
    card = (f"# Tiny M2M ({variant}), {label} data, trained on a GPU\n\nTrained by scripts/device_learning.sh "
            f"({steps} steps, label {label}); scored by the judge in judge_device-{label}.json.\n")
    size = export_fp16(work / f"runs-{label}/m2m-{variant}", work / f"fp16/{label}/m2m-{variant}", card)
    print(f"{label} m2m-{variant}: {size / 2**20:.1f} MiB in float16")
PY
    tar -cf "$OUT/models-$label.tar.part" -C "$WORK/fp16" "$label" || return 1
    mv "$OUT/models-$label.tar.part" "$OUT/models-$label.tar"
}

score() {  # label variants...: the judge on the label's final models; its JSON into $OUT
    local label=$1 models=() smoke=()
    shift
    for variant in "$@"; do models+=("$WORK/runs-$label/m2m-$variant"); done
    [ "$SMOKE" = 1 ] && smoke=(--smoke)
    $PY benchmarks/bench_judge.py --models "${models[@]}" --protocol "$label" --label "device-$label" \
        --sets "$SETS" --generate "$GENERATE" --steps "$JUDGE_STEPS" --device "$SCORE_DEVICE" --batch-size 64 \
        --workers "$JUDGE_WORKERS" --work "$WORK/judge" "${smoke[@]}" > "$WORK/logs/score-$label.log" 2>&1 || return 1
    cp "benchmarks/results/judge_device-$label.json" "$OUT/"
}

declare -A score_pid
finish_label() {  # label: wait for its runs, export their models, then score them in the background
    local label=$1 variants=() key rc
    for run in "${RUNS[@]}"; do
        read -r l variant <<< "$run"
        [ "$l" = "$label" ] || continue
        key="$label $variant"
        [ -n "${run_pid[$key]:-}" ] || continue  # no data: failed above
        wait "${run_pid[$key]}"
        rc=$?
        keep_tail "$WORK/logs/train-$label-$variant.log"
        if [ "$rc" -ne 0 ]; then
            [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="stopped at $TRAIN_LIMIT s" || why="exit $rc"
            fail "train $key ($why)"
        fi
        [ -f "$WORK/runs-$label/m2m-$variant/model_index.json" ] && variants+=("$variant")  # a stopped run has none
    done
    if [ ${#variants[@]} -eq 0 ]; then fail "score $label (no models)"; return; fi
    if export_models "$label" "${variants[@]}"; then echo "== exported $label (${variants[*]}) at $(elapsed)"
    else fail "export $label"; keep_tail "$WORK/logs/export-$label.log"; fi
    echo "== scoring $label (${variants[*]}) at $(elapsed)"
    score "$label" "${variants[@]}" &
    score_pid[$label]=$!
}
for label in "${LABELS[@]}"; do finish_label "$label"; done
echo "== training done at $(elapsed)"
for label in "${LABELS[@]}"; do
    [ -n "${score_pid[$label]:-}" ] || continue
    if wait "${score_pid[$label]}"; then echo "== scored $label at $(elapsed)"; else fail "score $label"; fi
    keep_tail "$WORK/logs/score-$label.log"
done

echo "== $(elapsed) in all"
$PY - "$OUT" <<'PY'
import glob, json, os, sys
from learning.judge import interval
for path in sorted(glob.glob(os.path.join(sys.argv[1], "judge_device-*.json"))):
    report = json.load(open(path))
    print(f"{os.path.basename(path)[13:-5]}: {report['heldout']['sets']} held-out sets ({report['heldout']['per_value']})")
    for model, by_scale in report["rows"].items():
        for scale, n in by_scale.items():
            contrast = interval(n["kind_contrast"]) if "kind_contrast" in n else "-"
            print(f"  {model:34s} {scale:6s} palette {interval(n['palette'])}  shape {interval(n['shape'])}  "
                  f"texture {interval(n['texture'])}  score {interval(n['score'])}  kind contrast {contrast}")
PY
if [ ${#failed[@]} -gt 0 ]; then
    echo "device_learning: FAILED: ${failed[*]}"
    exit 1
fi
