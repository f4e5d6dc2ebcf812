"""A small, numpy-backed view of an ONNX graph that the canonicalisation works on.

The forward model is never edited: :func:`from_onnx` builds a :class:`Graph` copy whose tensor
names are the forward's tensor names, so that the relevance part can read the forward's
intermediate tensors by name. A canonical node may stand for several forward nodes (a Conv with
its BatchNormalization folded in); its output then names the forward tensor that holds the same
values (the BatchNormalization's output).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from sglrp_onnx.errors import ModelLoadError, UnsupportedModelError

#: Canonical op types of the linear layers that take a propagation rule.
LINEAR_OPS = ("Conv", "Dense")

#: Ops whose outputs describe shapes, never values: nothing computed from them carries relevance.
SHAPE_SOURCES = ("Shape", "Size")

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass
class Node:
    """One canonical node. ``name`` is the forward node's name (or its generated stable name)."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    #: For canonical linear layers: ``weight``, ``bias`` (numpy arrays) and the original op type.
    params: dict[str, Any] = field(default_factory=dict)
    #: Original op type (``Gemm`` for a canonical ``Dense``), used for rule overrides.
    source_op: str = ""

    def describe(self, graph: "Graph") -> str:
        ins = ", ".join(f"{t}{graph.shape_str(t)}" for t in self.inputs if t)
        outs = ", ".join(f"{t}{graph.shape_str(t)}" for t in self.outputs if t)
        return f"node '{self.name}' (op {self.source_op or self.op_type}; inputs {ins}; outputs {outs})"


@dataclass
class Graph:
    """Canonical graph: nodes in topological order, constants as numpy arrays, static shape info."""

    nodes: list[Node]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int | None, ...] | None]
    dtypes: dict[str, int]
    inputs: list[str]
    outputs: list[str]
    opset: int
    image: str = ""
    logits: str = ""

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        if name in self.constants:
            return tuple(self.constants[name].shape)
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.shape(name)
        if shape is None or any(d is None for d in shape):
            return None
        return tuple(int(d) for d in shape)

    def shape_str(self, name: str) -> str:
        """``[?,3,224,224]``: ``?`` for every dimension not known statically (batch or not)."""
        shape = self.shape(name)
        if shape is None:
            return "[?]"
        return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        result: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    result.setdefault(name, []).append(node)
        return result

    def rename_tensor(self, old: str, new: str) -> None:
        """Make every consumer read ``new`` instead of ``old`` (used when removing no-op nodes)."""
        for node in self.nodes:
            node.inputs = [new if t == old else t for t in node.inputs]
        if self.logits == old:
            self.logits = new


def node_display_names(model: onnx.ModelProto) -> list[str]:
    """Stable names of the model's nodes: the node's own name, else ``<op_type>_<index>``.

    The index counts nodes of the main graph in file order, so names stay the same between runs.
    Duplicate names get ``_<index>`` appended so that every node can be addressed.
    """
    names: list[str] = []
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        names.append(name)
    return names


#: Ops whose output has their first input's shape and type, where ONNX's shape inference has no
#: function for them (GroupNormalization-21 is defined as a function whose inference leaves the
#: output untyped, and everything after it unknown).
SHAPE_PRESERVING = ("GroupNormalization", "LayerNormalization", "InstanceNormalization", "RMSNormalization")


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference; a model that fails it is reported, not silently used."""
    try:
        inferred = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        typed = {v.name: v for v in _value_infos(inferred) if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
        missing = [(n.input[0], n.output[0]) for n in inferred.graph.node
                   if n.op_type in SHAPE_PRESERVING and n.output[0] not in typed and n.input[0] in typed]
        if not missing:
            return inferred
        for source, name in missing:  # the output is shaped like the input: say so and infer again
            info = copy.deepcopy(typed[source])
            info.name = name
            inferred.graph.value_info.append(info)
        return shape_inference.infer_shapes(inferred, check_type=False, strict_mode=False, data_prop=True)
    except Exception as error:  # onnx raises several internal exception types here
        raise ModelLoadError(f"shape inference failed: {error}") from None


def _value_infos(model: onnx.ModelProto):
    graph = model.graph
    yield from graph.input
    yield from graph.value_info
    yield from graph.output


def _shape_of(value_info: onnx.ValueInfoProto) -> tuple[tuple[int | None, ...] | None, int]:
    type_proto = value_info.type
    if not type_proto.HasField("tensor_type"):
        return None, 0
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None, tensor_type.elem_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)
    return dims, tensor_type.elem_type


def main_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelLoadError("the model imports no version of the default ONNX operator set")


def from_onnx(model: onnx.ModelProto) -> Graph:
    """Build the canonical-graph view of ``model`` (which must have shapes inferred)."""
    display = node_display_names(model)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shapes: dict[str, Any] = {}
    dtypes: dict[str, int] = {}
    for value_info in _value_infos(model):
        shape, dtype = _shape_of(value_info)
        shapes[value_info.name] = shape
        dtypes[value_info.name] = dtype
    for name, array in constants.items():
        shapes[name] = tuple(array.shape)
        dtypes[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
    nodes = []
    for index, proto in enumerate(model.graph.node):
        if proto.domain not in ("", "ai.onnx"):
            raise UnsupportedModelError(
                f"node '{display[index]}' (op {proto.op_type}) is from the custom domain '{proto.domain}', "
                "which the engine cannot explain"
            )
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        nodes.append(Node(display[index], proto.op_type, list(proto.input), list(proto.output), attrs, source_op=proto.op_type))
    # Graph inputs that also have an initializer (IR < 4) are constants, not inputs.
    inputs = [i.name for i in model.graph.input if i.name not in constants]
    outputs = [o.name for o in model.graph.output]
    return Graph(nodes, constants, shapes, dtypes, inputs, outputs, main_opset(model))
