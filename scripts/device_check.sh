#!/usr/bin/env bash
# Prove that a device script (scripts/device_*.sh) starts and finishes on a bare GPU machine, before any
# device time is spent: run it here, at its smoke sizes (SMOKE=1), in a fresh venv that holds only
#   - torch (the CPU build of 2.13.0 that pip takes from this machine's disk),
#   - the GPU image's packages that the script says it uses, on its header line
#     `# device image packages: NAME ...`, at the image's versions where the index has them
#     (IMAGE_PINS below, from ../.library/device/KINDS.md),
#   - and the wheels of .whl/ (scripts/device_wheels.sh), which the script installs itself with
#     `pip install --no-index --no-deps --target $SITE`, as it does on the device,
# over a copy of what a device run carries: the tracked and untracked-not-ignored files and .whl/, nothing
# else (no .venv, no assets/, no benchmarks/results/). No pip configuration, no user site, an empty HOME
# (no Hugging Face cache), OUT set to an empty temp folder. rc 0 is required; then $OUT is checked against
# what a device run brings back (at most 8 files, 16 MiB each, 64 MiB in all, two folders deep, names of
# letters, digits, '.', '_' and '-').
#
# The device's python3 is 3.12; this machine's torch 2.13.0 lies on disk only for its python3 (3.11), so
# the venv is made with `python3` here, 3.11. The carried wheels are pure Python, or abi3 for CPython 3.10
# and later (wcwidth), so the same files install on both.
#
#   bash scripts/device_wheels.sh                          # once: the wheels into .whl/
#   bash scripts/device_check.sh scripts/device_speed.sh   # a few minutes: venv, then the smoke run
#   DEVICE_CHECK_VENV=/tmp/m2m-device-venv bash scripts/device_check.sh ...  # keep and reuse that venv
#
# DEVICE_CHECK_VENV: a venv folder to make once and reuse (it is made afresh when its package list
# differs); default a new one in a temp folder, removed at the end. DEVICE_CHECK_TIMEOUT: seconds the
# script may run (default 1800). DEVICE_CHECK_KEEP=1 keeps the temp folder (copy, OUT) for a look.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

[ $# -eq 1 ] || { echo "usage: bash scripts/device_check.sh scripts/device_NAME.sh" >&2; exit 2; }
SCRIPT=$1
case "$SCRIPT" in /*) SCRIPT=${SCRIPT#"$ROOT"/} ;; esac
SCRIPT=${SCRIPT#./}
[ -f "$SCRIPT" ] || { echo "device_check: no script $SCRIPT under $ROOT" >&2; exit 2; }
git ls-files --error-unmatch "$SCRIPT" > /dev/null 2>&1 || git ls-files -o --exclude-standard --error-unmatch "$SCRIPT" \
    > /dev/null 2>&1 || { echo "device_check: $SCRIPT is ignored by git: a device run would not carry it" >&2; exit 2; }
compgen -G ".whl/*.whl" > /dev/null || { echo "device_check: no wheels in .whl/: run bash scripts/device_wheels.sh" >&2; exit 2; }
IMAGE_PACKAGES=$(sed -n 's/^# device image packages: *//p' "$SCRIPT" | head -1)
[ -n "$IMAGE_PACKAGES" ] || { echo "device_check: $SCRIPT has no '# device image packages: NAME ...' header line" >&2; exit 2; }

# The image's versions (KINDS.md, read 2026-11) where the index serves them; numpy 2.5.2 is not served
# here, so numpy is left to pip (2.x); packages not named here take what pip resolves.
declare -A IMAGE_PINS=(
    [accelerate]=1.15.0 [transformers]=5.17.0 [safetensors]=0.8.0 [huggingface-hub]=1.33.0
    [tokenizers]=0.23.2 [torchmetrics]=1.9.0 [numpy]="<2.6"
)
TORCH_SPEC="torch==2.13.0"
specs=("$TORCH_SPEC")
for name in $IMAGE_PACKAGES; do
    [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "device_check: bad package name '$name'" >&2; exit 2; }
    [ "$name" = torch ] && continue
    pin=${IMAGE_PINS[$name]:-}
    case "$pin" in "") specs+=("$name") ;; "<"*|">"*) specs+=("$name$pin") ;; *) specs+=("$name==$pin") ;; esac
done
# The image's huggingface-hub and tokenizers, not the newest that transformers would take
for name in huggingface-hub tokenizers; do
    [[ " $IMAGE_PACKAGES " == *" transformers "* && " $IMAGE_PACKAGES " != *" $name "* ]] && specs+=("$name==${IMAGE_PINS[$name]}")
done
stamp=$(printf '%s\n' "$(python3 --version 2>&1)" "${specs[@]}" | sha256sum | cut -d' ' -f1)

TMP=$(mktemp -d /tmp/m2m-device-check.XXXXXX)
cleanup() { [ "${DEVICE_CHECK_KEEP:-0}" = 1 ] && echo "device_check: kept $TMP" || rm -rf "$TMP"; }
trap cleanup EXIT
VENV=${DEVICE_CHECK_VENV:-$TMP/venv}
start=$(date +%s)

if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.device-check" 2>/dev/null)" = "$stamp" ]; then
    echo "device_check: reusing $VENV"
else
    echo "device_check: a fresh venv with $(python3 --version 2>&1): ${specs[*]}"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # This machine's pip configuration (find-links, extra local indexes, the torch cap) serves torch from
    # disk; the index serves the rest.
    "$VENV/bin/pip" install -q "${specs[@]}"
    echo "$stamp" > "$VENV/.device-check"
fi
for name in diffusers webdataset braceexpand ftfy wcwidth m2m dagster mlflow dvc; do  # must come from .whl/ or not at all
    if (cd / && "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$name') is None)"); then
        echo "device_check: $VENV holds $name: not what the device image has" >&2; exit 1
    fi
done
"$VENV/bin/pip" list --format=freeze > "$TMP/venv-packages.txt"
echo "device_check: venv packages: $(tr '\n' ' ' < "$TMP/venv-packages.txt")"

# What a device run carries: tracked and untracked-not-ignored files, and the carried .whl/.
mkdir -p "$TMP/repo" "$TMP/out" "$TMP/home" "$TMP/work"
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$TMP/repo"
cp -r .whl "$TMP/repo/.whl"

echo "device_check: SMOKE=1 bash $SCRIPT (OUT=$TMP/out)"
run_start=$(date +%s)
set +e
(cd "$TMP/repo" && env -i PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin" HOME="$TMP/home" LANG=C.UTF-8 \
    TMPDIR="$TMP" PIP_CONFIG_FILE=/dev/null PYTHONNOUSERSITE=1 SMOKE=1 OUT="$TMP/out" WORK="$TMP/work" \
    SITE="$TMP/site" timeout "${DEVICE_CHECK_TIMEOUT:-1800}" bash "$SCRIPT")
rc=$?
set -e
end=$(date +%s)

# What $OUT would bring back from a device run
problems=()
files=$(cd "$TMP/out" && find . -mindepth 1 -type f | sed 's|^\./||' | sort)
n=0 total=0
while IFS= read -r f; do
    [ -n "$f" ] || continue
    n=$((n + 1))
    size=$(stat -c %s "$TMP/out/$f")
    total=$((total + size))
    [ "$size" -le $((16 * 1024 * 1024)) ] || problems+=("$f: $size bytes, over 16 MiB")
    [ "$(echo "$f" | tr -cd '/' | wc -c)" -le 2 ] || problems+=("$f: more than two folders down")
    for part in ${f//\// }; do [[ "$part" =~ ^[A-Za-z0-9._-]+$ ]] || problems+=("$f: '$part' is not letters, digits, '.', '_', '-'"); done
done <<< "$files"
[ "$n" -le 8 ] || problems+=("$n files in OUT, at most 8 come back")
[ "$total" -le $((64 * 1024 * 1024)) ] || problems+=("$total bytes in OUT, at most 64 MiB come back")
[ -z "$(cd "$TMP/out" && find . -mindepth 1 ! -type f ! -type d)" ] || problems+=("OUT holds links or special files")

echo
echo "device_check: $SCRIPT: rc $rc, $((end - run_start)) s run, $((end - start)) s with the venv"
echo "device_check: OUT holds $n file(s), $total bytes:"
while IFS= read -r f; do [ -n "$f" ] && echo "  $f"; done <<< "$files"
for p in "${problems[@]+"${problems[@]}"}"; do echo "device_check: OUT: $p" >&2; done
[ "$rc" -eq 0 ] || { echo "device_check: FAILED: $SCRIPT exited $rc" >&2; exit "$rc"; }
[ ${#problems[@]} -eq 0 ] || { echo "device_check: FAILED: OUT would not come back whole" >&2; exit 1; }
echo "device_check: OK"
