"""Where an augmented model's nodes will run: static checks against the runtimes' own rules.

SPEC section 8 asks that no float computation of the relevance part runs on the CPU under ONNX
Runtime's CUDA provider, and for a form TensorRT parses. Both depend on tables and rules kept by
those projects; this module holds them as data and applies them to a model without a GPU:

- :func:`cuda_fallbacks`: float nodes the CUDA provider would leave to the CPU. It applies the
  provider's kernel table (``docs/OperatorKernels.md`` of ONNX Runtime, CUDA section, domain
  ai.onnx; the commit is recorded in ``data/ort_cuda_kernels.json``): a node needs a CUDA kernel
  registered for its op, its opset version and its float type; and the provider's placement rule
  for ConvTranspose (``ConvTransposeNeedFallbackToCPU`` in ``cuda_execution_provider.cc``, still
  there in ONNX Runtime 1.31): asymmetric ``pads`` or ``auto_pad`` SAME_UPPER / SAME_LOWER go to
  the CPU, because cuDNN pads symmetrically.
- :func:`tensorrt_blockers`: nodes that onnx-tensorrt 10.0 refuses (its ``docs/operators.md``;
  commit in ``data/tensorrt_ops.json``): unsupported ops, MaxPool's ``Indices`` output, scatter
  reductions, and inputs that must be initializers (Conv/ConvTranspose weights, axes).
- :func:`release_blockers`: opset and IR version against what an ONNX Runtime release loads.

What a session really does is for the runtime to verify (a profiled run records each node's
provider); these checks say what to expect and let tests guard the engine's output on a CPU-only
machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx

DATA = Path(__file__).resolve().parent / "data"

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "tensor(float)",
    onnx.TensorProto.FLOAT16: "tensor(float16)",
    onnx.TensorProto.DOUBLE: "tensor(double)",
    onnx.TensorProto.BFLOAT16: "tensor(bfloat16)",
}

#: The newest opset and IR version each onnxruntime-gpu release loads (checked on the wheels).
GPU_RELEASE_LIMITS = {"1.31": (26, 13)}

#: Inputs that onnx-tensorrt needs as initializers (op -> input index -> what it is).
TENSORRT_CONSTANT_INPUTS = {
    "Conv": {1: "weights"}, "ConvTranspose": {1: "weights"},
    "Slice": {3: "axes"}, "Pad": {3: "axes"}, "Unsqueeze": {1: "axes"}, "Squeeze": {1: "axes"},
    "ReduceSum": {1: "axes"}, "ReduceMean": {1: "axes"}, "ReduceMax": {1: "axes"}, "OneHot": {1: "depth"},
}


@dataclass(frozen=True)
class Finding:
    """One node a runtime will not run as wished, and why."""

    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op_type}): {self.reason}"


@lru_cache(maxsize=None)
def _table(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def cuda_kernel_table() -> dict:
    """The CUDA provider's kernel table (op -> rows of since/until/types) and its source."""
    return _table("ort_cuda_kernels.json")


def tensorrt_table() -> dict:
    """onnx-tensorrt 10.0's operator table (op -> supported, types) and its source."""
    return _table("tensorrt_ops.json")


def main_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the model (after shape inference, run on the model's
    skeleton: the weights' values are not needed, and copying them would cost the model's size)."""
    from sglrp_onnx.skeleton import skeleton

    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _float_type(node: onnx.NodeProto, types: dict[str, int]) -> str | None:
    """The float type a node computes in (its first float input or output), None for integer
    and boolean nodes (shape arithmetic, which the CUDA provider may rightly keep on the CPU)."""
    for name in list(node.input) + list(node.output):
        if name and types.get(name) in FLOAT_TYPES:
            return FLOAT_TYPES[types[name]]
    return None


def _has_cuda_kernel(op_type: str, opset: int, float_type: str) -> bool:
    for row in cuda_kernel_table()["ops"].get(op_type, []):
        until = row["until"] if row["until"] is not None else opset
        if row["since"] <= opset <= until:
            return any(float_type in allowed for allowed in row["types"].values())
    return False


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def cuda_fallbacks(model: onnx.ModelProto, prefix: str | None = None) -> list[Finding]:
    """Float nodes ONNX Runtime's CUDA provider would place on the CPU (see module docstring).

    ``prefix``: only nodes whose name starts with it (``sglrp/`` for the relevance part)."""
    opset = main_opset(model)
    types = _tensor_types(model)
    found = []
    for index, node in enumerate(model.graph.node):
        name = _node_name(node, index)
        if prefix is not None and not name.startswith(prefix):
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type == "Constant":
            continue
        float_type = _float_type(node, types)
        if float_type is None:
            continue
        if not _has_cuda_kernel(node.op_type, opset, float_type):
            found.append(Finding(name, node.op_type, f"no CUDA kernel for opset {opset} and {float_type}"))
            continue
        if node.op_type == "ConvTranspose":
            pads = list(_attr(node, "pads", []) or [])
            rank = len(pads) // 2
            if any(pads[i] != pads[i + rank] for i in range(rank)):
                found.append(Finding(name, node.op_type, f"asymmetric pads {pads} (cuDNN pads symmetrically)"))
            auto_pad = _attr(node, "auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                found.append(Finding(name, node.op_type, f"auto_pad {auto_pad}"))
    return found


def tensorrt_blockers(model: onnx.ModelProto, prefix: str | None = None) -> list[Finding]:
    """Nodes onnx-tensorrt 10.0 refuses (see module docstring)."""
    table = tensorrt_table()["ops"]
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found = []
    for index, node in enumerate(model.graph.node):
        name = _node_name(node, index)
        if prefix is not None and not name.startswith(prefix):
            continue
        entry = table.get(node.op_type)
        if entry is None or not entry["supported"]:
            found.append(Finding(name, node.op_type, "op not supported by TensorRT"))
            continue
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            found.append(Finding(name, node.op_type, "the Indices output is not supported by TensorRT"))
        if node.op_type in ("MaxPool", "AveragePool") and any(d != 1 for d in (_attr(node, "dilations", []) or [])):
            found.append(Finding(name, node.op_type, "dilations other than 1 are not supported by TensorRT"))
        reduction = _attr(node, "reduction", b"none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if node.op_type in ("ScatterElements", "ScatterND") and reduction != "none":
            found.append(Finding(name, node.op_type, f"reduction '{reduction}' needs a TensorRT plugin"))
        for position, what in TENSORRT_CONSTANT_INPUTS.get(node.op_type, {}).items():
            if len(node.input) > position and node.input[position] and node.input[position] not in constants:
                found.append(Finding(name, node.op_type, f"{what} ('{node.input[position]}') must be an initializer for TensorRT"))
    return found


def release_blockers(model: onnx.ModelProto, release: str = "1.31") -> list[str]:
    """Why ``onnxruntime-gpu`` ``release`` would refuse to load the model (empty: it loads)."""
    max_opset, max_ir = GPU_RELEASE_LIMITS[release]
    problems = []
    if main_opset(model) > max_opset:
        problems.append(f"opset {main_opset(model)} is newer than onnxruntime-gpu {release} loads ({max_opset})")
    if model.ir_version > max_ir:
        problems.append(f"IR version {model.ir_version} is newer than onnxruntime-gpu {release} loads ({max_ir})")
    return problems
