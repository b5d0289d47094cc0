#!/usr/bin/env bash
# Creates a Python virtual environment with PyTorch for the `runtime: process` examples (examples/pytorch) and
# their check (scripts/check-examples.sh): torch, torchvision, tritonclient[http] and numpy, from PyPI with
# plain `pip install`. The PyPI torch wheel is the CUDA build; it runs on the CPU when there is no GPU. The
# first install downloads about 2.5 GB and takes about 70 s; the environment is about 5.4 GB.
#
#   scripts/fetch-torch.sh            (the environment: $DILU_TORCH_VENV, else ~/.cache/dilu/torch)
#
# Idempotent: when the environment's python already imports torch and torchvision, nothing large is
# installed; tritonclient and numpy are added if they are missing. The last line printed is the environment's
# python, for DILU_PYTHON:
#
#   export DILU_PYTHON=$(scripts/fetch-torch.sh | tail -1)
set -euo pipefail

VENV="${DILU_TORCH_VENV:-$HOME/.cache/dilu/torch}"
PYTHON="${PYTHON:-$(command -v python3 || true)}"

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
    echo "fetch-torch: $VENV already has torch and torchvision" >&2
    if ! "$VENV/bin/python" -c 'import numpy, tritonclient.http' 2>/dev/null; then
        echo "fetch-torch: adding tritonclient[http] and numpy" >&2
        "$VENV/bin/python" -m pip install --quiet "tritonclient[http]" numpy >&2
    fi
else
    if [[ -z "$PYTHON" ]]; then
        echo "fetch-torch: needs python3 (with the venv module) to create $VENV" >&2
        exit 1
    fi
    echo "fetch-torch: creating $VENV and installing torch torchvision tritonclient[http] numpy" >&2
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet torch torchvision "tritonclient[http]" numpy >&2
    "$VENV/bin/python" -c 'import torch, torchvision, tritonclient.http, numpy' >&2
fi
"$VENV/bin/python" -c 'import torch, torchvision; print("fetch-torch: torch", torch.__version__, "torchvision",
      torchvision.__version__, "cuda available:", torch.cuda.is_available())' >&2
echo "$VENV/bin/python"
