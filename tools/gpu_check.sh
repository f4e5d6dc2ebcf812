#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU: ONNX Runtime's CUDA provider runs the augmented model,
# gives the CPU's relevance, and how fast (forward vs SGLRP at batch 1, 32, 64), on ResNet-50.
#
#   tools/gpu_check.sh [WORKDIR]          (default WORKDIR: ${TMPDIR:-/tmp}/sglrp-gpu-check)
#
# Steps:
#   1. a fresh venv in WORKDIR/venv with this project and its [gpu] extra: onnxruntime-gpu, and
#      never onnxruntime beside it (both write the same package folder); CUDA/cuDNN libraries come
#      from the system or, where ONNX Runtime cannot load them, from PyPI (onnxruntime-gpu[cuda,cudnn]);
#   2. ResNet-50 as ONNX: $RESNET50_ONNX if set, else exported with torchvision (pretrained weights
#      where they can be had, random weights otherwise) by $EXPORT_PYTHON (default: the project's
#      .venv/bin/python if it has torch, else python3), TorchScript exporter, opset 17, dynamic batch;
#   3. tools/gpu_check.py: convert, check the provider and the CPU/CUDA agreement, time.
#
# Environment: PYTHON (the interpreter for the venv, default python3), RESNET50_ONNX, EXPORT_PYTHON,
# PIP_* (e.g. PIP_FIND_LINKS for an offline wheel folder), SKIP_VENV=1 (use $PYTHON as it is: it
# must already have onnxruntime-gpu and this project importable).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-${TMPDIR:-/tmp}/sglrp-gpu-check}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WORK"
echo "== sglrp-onnx GPU check in $WORK"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "note: nvidia-smi not found"

# -- 1. venv with onnxruntime-gpu ----------------------------------------------------------------
if [ "${SKIP_VENV:-0}" = "1" ]; then
    PY="$PYTHON"
else
    if [ ! -x "$WORK/venv/bin/python" ]; then
        "$PYTHON" -m venv "$WORK/venv"
    fi
    PY="$WORK/venv/bin/python"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "$ROOT[gpu]" scikit-image
fi
if "$PY" -m pip show onnxruntime >/dev/null 2>&1; then
    echo "FAIL: 'onnxruntime' (CPU) is installed beside 'onnxruntime-gpu' in this environment; uninstall both, then install onnxruntime-gpu only"
    exit 1
fi
cuda_works() {
    "$PY" - <<'PY'
import sys
import onnxruntime as ort
try:
    ort.preload_dlls()
except Exception:
    pass
import onnx
from onnx import TensorProto, helper
g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]); m.ir_version = 7
s = ort.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
sys.exit(0 if s.get_providers()[0] == "CUDAExecutionProvider" else 1)
PY
}
if ! cuda_works 2>/dev/null; then
    if [ "${SKIP_VENV:-0}" != "1" ]; then
        echo "note: ONNX Runtime cannot load CUDA from the system; installing the CUDA/cuDNN wheels (onnxruntime-gpu[cuda,cudnn])"
        "$PY" -m pip install -q "onnxruntime-gpu[cuda,cudnn]"
    fi
    if ! cuda_works; then
        echo "FAIL: the CUDA provider cannot be used (no GPU, driver, or CUDA/cuDNN libraries?)"
        exit 1
    fi
fi
"$PY" -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

# -- 2. ResNet-50 ----------------------------------------------------------------------------
MODEL="${RESNET50_ONNX:-$WORK/resnet50.onnx}"
if [ ! -f "$MODEL" ]; then
    EXPORT_PYTHON="${EXPORT_PYTHON:-}"
    if [ -z "$EXPORT_PYTHON" ]; then
        if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
            EXPORT_PYTHON="$ROOT/.venv/bin/python"
        else
            EXPORT_PYTHON=python3
        fi
    fi
    echo "== exporting ResNet-50 with $EXPORT_PYTHON"
    "$EXPORT_PYTHON" - "$MODEL" <<'PY'
import sys
import torch
import torchvision

try:
    model = torchvision.models.resnet50(weights="DEFAULT")
    print("ResNet-50: pretrained ImageNet weights")
except Exception as error:  # offline: no weights to download
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    print(f"ResNet-50: random weights ({type(error).__name__}: pretrained weights not available)")
model.eval()
with torch.no_grad():
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), sys.argv[1], dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
print("wrote", sys.argv[1])
PY
fi

# -- 3. the checks ------------------------------------------------------------------------------
cd "$WORK"
PYTHONPATH="${SKIP_VENV:+$ROOT}" "$PY" "$ROOT/tools/gpu_check.py" --model "$MODEL" --work "$WORK" --batches 1,32,64
