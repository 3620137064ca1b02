#!/usr/bin/env bash
# One GPU check for the tiny preset's open question (docs/model.md, "Reading the shape kind from the
# context"): does the kind contrast leave 0 with tens of times the images the CPU runs saw?
#
# Trains four runs side by side on one GPU for at most $MINUTES each (the tiny UNet is launch-bound, so
# they share it well): M2M-DINO and M2M-Self on two kinds (circles, squares), M2M-DINO on six kinds and
# M2M-DINO on sets that differ in their kind alone (one palette, plain background), the recipe of the CPU
# pilots (cosine, logit-normal t, EMA 0.999, bf16) at $BATCH sets per step. At that batch a run would see
# the sample captions' 240 training sets a thousand times each, so each trains on $TRAIN_SETS generated
# sets of its kinds (bench_learning.build_training_mis) and is scored on the held-out sets of the sample
# captions' MIS. A run stopped by the limit keeps its checkpoints; the newest three of each are scored by
# bench_learning_curve.py on the CPU cores (the judge of the proof of learning, unchanged) and the results
# land in $OUT.
#
#   bash scripts/device_learning.sh            # on the GPU machine, from the repository root
#   MINUTES=3 STEPS=8 BATCH=2 TRAIN_SETS=128 SETS=2 WORK=/tmp/device bash scripts/device_learning.sh  # smoke run
#
# Packages the GPU image lacks travel as wheels in .whl/ (git-ignored), installed to /tmp/site when present:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7
# About 10 minutes with the defaults (data 1-2, training 5, scoring on 16 cores 2-3). Scoring also writes
# the device-* sections of RESULTS.md, as any learning curve does.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-5}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-64}
LR=${LR:-0.001}
TRAIN_SETS=${TRAIN_SETS:-8000}
SETS=${SETS:-32}  # held-out sets scored per checkpoint (the judge's 32; fewer only for a smoke run)
WORK=${WORK:-assets/bench/device}
OUT=${OUT:-$WORK/out}
for value in "$MINUTES" "$STEPS" "$BATCH" "$TRAIN_SETS" "$SETS"; do
    [[ "$value" =~ ^[0-9]+$ ]] || { echo "MINUTES, STEPS, BATCH, TRAIN_SETS, SETS: whole numbers, got '$value'" >&2; exit 2; }
done
[[ "$LR" =~ ^[0-9.e-]+$ ]] || { echo "LR must be a number, got '$LR'" >&2; exit 2; }
[[ "$WORK" =~ ^[A-Za-z0-9_./-]+$ ]] || { echo "WORK: letters, digits, '_', '.', '/' and '-' only" >&2; exit 2; }

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$WORK" "$OUT"

echo "== data: held-out sets of six kinds, two kinds, the kind alone; $TRAIN_SETS generated training sets of each"
data() {  # name: $WORK/<name> (the sample captions' MIS, for its held-out sets) and $WORK/<name>-train
    $PY - "$WORK" "$1" "$TRAIN_SETS" > "$OUT/data-$1.log" 2>&1 <<'EOF'
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
data six-kind & data two-kind & data kind-only & wait

echo "== training: at most $MINUTES min per run, $STEPS steps of $BATCH sets"
train() {  # variant data name
    timeout "${MINUTES}m" $PY -m m2m train --variant "$1" --data "$WORK/$2-train" --out "$WORK/$3/m2m-$1" \
        --batch-size "$BATCH" --lr "$LR" --lr-schedule cosine --lr-warmup-steps $((STEPS / 10)) \
        --timestep-sampling logit-normal --ema-decay 0.999 --seed 0 --steps "$STEPS" \
        --checkpoint-every $((STEPS / 8 > 0 ? STEPS / 8 : 1)) --keep-checkpoints 3 --mixed-precision bf16 \
        --num-workers 3 --resume auto > "$OUT/train-$3-$1.log" 2>&1 || echo "$3 $1: stopped ($?), scoring its checkpoints"
}
train dino two-kind runs-two-kind & train self two-kind runs-two-kind & train dino six-kind runs-six-kind &
train dino kind-only runs-kind-only & wait

echo "== scoring the newest checkpoints on the CPU"
failed=0
score() {  # name data checkpoints...: one label; a run that left no checkpoint fails its label, not the others
    local name=$1 data=$2
    shift 2
    $PY benchmarks/bench_learning_curve.py --checkpoints "$@" --data "$WORK/$data" --sets "$SETS" \
        --label "device-$name" || { echo "device-$name: not scored"; failed=1; }
}
score two-kind two-kind "$WORK/runs-two-kind/m2m-dino.ckpt" "$WORK/runs-two-kind/m2m-self.ckpt"
score six-kind six-kind "$WORK/runs-six-kind/m2m-dino.ckpt"
score kind-only kind-only "$WORK/runs-kind-only/m2m-dino.ckpt"
cp benchmarks/results/learning_curve_device-*.json "$OUT/" 2>/dev/null || true
for log in "$OUT"/train-*.log; do tail -c 4000 "$log" > "$log.tail" && mv "$log.tail" "$log"; done
$PY - <<'EOF'
import json, glob
for path in sorted(glob.glob("benchmarks/results/learning_curve_device-*.json")):
    run = json.load(open(path))
    for r in run["rows"]:
        print(f"{path.split('_', 2)[-1][:-5]:28s} step {r['step']:6d} images {r['images_seen']:9,d} palette "
              f"{r['palette']:.2f} shape {r['shape']:.2f} texture {r['texture']:.2f} score {r['score']:.2f} "
              f"shape fit {r['shape_fit']:.2f} kind contrast {r.get('kind_contrast', float('nan')):.2f}")
EOF
exit $failed
