#!/usr/bin/env bash
# Fetch the wheels that the device scripts (scripts/device_*.sh) need on a bare GPU machine into the
# git-ignored .whl/, for Python 3.12 on manylinux x86_64, one pinned version of each.
#
# The GPU machine's image has Python 3.12 with torch, accelerate, transformers, safetensors, numpy,
# pillow, scipy, tqdm, pyyaml, pyarrow, matplotlib, huggingface-hub, tokenizers, regex, requests and
# filelock (../.library/device/KINDS.md lists it), and nothing can be fetched there. It lacks:
#   diffusers    every model of this project (its own needs are all on the image; importlib_metadata
#                is only imported on Python < 3.8)
#   webdataset   the MIS shards (needs braceexpand; numpy and pyyaml are on the image)
#   braceexpand
#   ftfy         m2m.data.captions and m2m.data.tokenizer import it at module level (needs wcwidth)
#   wcwidth      the one compiled wheel here (cp310-abi3: Python 3.10 and later)
# and this project itself, which travels as the working tree (PYTHONPATH=$PWD there).
#
# The versions are those scripts/setup.sh resolves for .venv (pyproject.toml gives lower bounds only) and
# that the shipped models were saved with (diffusers 0.42.1). The device scripts install them with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# and scripts/device_check.sh proves a script starts with them in a venv that holds nothing else.
#
#   bash scripts/device_wheels.sh      # here, from any folder; about 7 MB; a rerun keeps what is there
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    diffusers==0.42.1
    webdataset==1.0.2
    braceexpand==0.1.7
    ftfy==6.3.1
    wcwidth==0.9.5
)
DEST=.whl

mkdir -p "$DEST"
# A wheel of a pinned package at another version (an older pin) would make two of one package: the
# device's `pip install .whl/*.whl` then stops. Remove those before fetching.
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*} version=${spec#*==}
    stem=$(echo "$name" | tr '-' '_')
    for old in "$DEST/${stem}"-*.whl; do
        [ -e "$old" ] || continue
        case "$(basename "$old")" in
            "${stem}-${version}-"*) ;;
            *) echo "device_wheels: removing $old (not $spec)"; rm -f "$old" ;;
        esac
    done
done

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"

# Exactly one wheel per pinned package, and nothing else in the folder.
count=$(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "device_wheels: $DEST holds $count wheels, expected ${#WHEELS[@]} (one per pin):" >&2
    ls -1 "$DEST" >&2
    exit 1
fi
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*} version=${spec#*==}
    stem=$(echo "$name" | tr '-' '_')
    compgen -G "$DEST/${stem}-${version}-*.whl" > /dev/null || { echo "device_wheels: no wheel for $spec" >&2; exit 1; }
done
du -ch "$DEST"/*.whl | tail -1 | sed 's/total/in .whl\/ (carry [".whl"] in a device run)/'
ls -1 "$DEST"
