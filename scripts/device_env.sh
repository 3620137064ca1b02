# Sourced by the device scripts (device_speed.sh, device_learning.sh) after `cd` to the repository root, with
# PY (the python) and SITE (a folder for the wheels) set: installs the .whl/ wheels scripts/device_wheels.sh
# fetched into SITE (a bare GPU machine has none of them), puts SITE and the repository on PYTHONPATH, keeps
# everything offline, and says which python, torch and card run. $1 names the script in its error line.
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || { echo "$1: installing .whl/ into $SITE failed" >&2; exit 1; }
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
$PY -c "import torch, sys; print(f'python {sys.version.split()[0]}, torch {torch.__version__},',
        torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
