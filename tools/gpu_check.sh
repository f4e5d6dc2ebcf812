#!/usr/bin/env bash
# GPU check in one command, offline: tools/gpu_check.sh ONNXRUNTIME_GPU_WHEEL [--out DIR] [--resnet50 FILE]
#
# Runs tools/gpu_check.py with $PYTHON (default python3): an environment with this project's
# requirements (onnx, numpy, pillow, onnxslim, tqdm), torch + torchvision (to export ResNet-50 when no
# file is given) and, optionally, the CPU onnxruntime. The wheel is installed into the work folder
# with --no-deps and imported from there only (never beside the CPU onnxruntime). Finishes in a few
# minutes on a GPU machine; see the docstring of gpu_check.py and docs/runtime.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" "$ROOT/tools/gpu_check.py" "$@"
