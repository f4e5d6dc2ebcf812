"""Rewrite Conv, Gemm and MatMul with constant weights into the two canonical linear layers.

- ``Conv``: weight ``[C_out, C_in/group, *kernel]``, bias ``[C_out]`` (zeros when absent), explicit
  ``pads`` (``auto_pad`` resolved from static shapes), ``strides``, ``dilations``, ``group``.
- ``Dense``: ``y = x @ weight + bias`` over the last axis, weight ``[K_in, K_out]``. Gemm's
  ``alpha``, ``beta`` and ``transB`` are folded into the weight and bias.

Weights are :class:`sglrp_onnx.recipes.Recipe` s over the model's constant tensor (a transpose, a
scale on top), so that the relevance part reads the model's own initializers instead of copies;
biases are small float64 arrays.

The rule emitter then deals with two layer kinds only, whatever the exporter wrote.
"""

from __future__ import annotations

import math

import numpy as np

from sglrp_onnx import recipes
from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Graph, Node
from sglrp_onnx.recipes import Recipe


def resolve_conv_pads(graph: Graph, node: Node, spatial_rank: int, kernel, strides, dilations) -> list[int]:
    """Explicit ``[begin..., end...]`` pads of a Conv/pool node, resolving ``auto_pad``."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        pads = list(node.attrs.get("pads", [0] * (2 * spatial_rank)))
        return pads
    if auto_pad == "VALID":
        return [0] * (2 * spatial_rank)
    shape = graph.shape(node.inputs[0])
    spatial = None if shape is None else shape[2:]
    if spatial is None or any(d is None for d in spatial):
        raise UnsupportedModelError(
            f"{node.describe(graph)} uses auto_pad={auto_pad} on a dynamic spatial size; "
            "export the model with a fixed input size"
        )
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        if auto_pad == "SAME_UPPER":
            begins.append(small)
            ends.append(total - small)
        else:
            begins.append(total - small)
            ends.append(small)
    return begins + ends


def _auto_pad(node: Node) -> str:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    return auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad


def _same_padding_on_dynamic_size(graph: Graph, node: Node) -> bool:
    shape = graph.shape(node.inputs[0])
    dynamic = shape is None or any(d is None for d in shape[2:])
    return dynamic and _auto_pad(node) in ("SAME_UPPER", "SAME_LOWER")


def _constant_weight(graph: Graph, node: Node, name: str, what: str) -> np.ndarray:
    if not name or not graph.is_const(name):
        raise UnsupportedModelError(
            f"{node.describe(graph)}: its {what} is computed at run time; the engine needs constant weights"
        )
    return graph.constants[name].astype(np.float64)


def _weight_recipe(graph: Graph, node: Node, name: str, what: str) -> Recipe:
    """The weight as a recipe reading the model's constant (no copy of its values)."""
    if not name or not graph.is_const(name):
        raise UnsupportedModelError(
            f"{node.describe(graph)}: its {what} is computed at run time; the engine needs constant weights"
        )
    return recipes.source(name, graph.constants[name])


def _conv(graph: Graph, node: Node) -> Node:
    weight = _weight_recipe(graph, node, node.inputs[1], "weight")
    rank = weight.ndim - 2
    if rank < 1:
        raise UnsupportedModelError(f"{node.describe(graph)}: weight of rank {weight.ndim} is not a convolution")
    kernel = list(weight.shape[2:])
    group = int(node.attrs.get("group", 1))
    declared = node.attrs.get("kernel_shape")
    if declared is not None and list(declared) != kernel:
        raise UnsupportedModelError(f"{node.describe(graph)}: kernel_shape {list(declared)} contradicts its weight of shape {list(weight.shape)}")
    in_shape = graph.shape(node.inputs[0])
    channels = in_shape[1] if in_shape is not None and len(in_shape) > 1 else None
    if group < 1 or weight.shape[0] % group or (channels is not None and channels != weight.shape[1] * group):
        raise UnsupportedModelError(
            f"{node.describe(graph)}: group={group} does not fit its weight of shape {list(weight.shape)} "
            f"and {channels if channels is not None else 'unknown'} input channels"
        )
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    bias = np.zeros(weight.shape[0])
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = _constant_weight(graph, node, node.inputs[2], "bias").reshape(-1)
    attrs = {"strides": strides, "dilations": dilations, "group": group}
    if _same_padding_on_dynamic_size(graph, node):
        attrs["pads"] = None  # resolved at run time by the relevance part (emit.linear)
        attrs["auto_pad"] = _auto_pad(node)
    else:
        attrs["pads"] = resolve_conv_pads(graph, node, rank, kernel, strides, dilations)
    return Node(node.name, "Conv", [node.inputs[0]], node.outputs[:1], attrs, {"weight": weight, "bias": bias}, "Conv")


def _dense_bias(graph: Graph, node: Node, value: np.ndarray, k_out: int) -> np.ndarray:
    if value.size == 1:
        return np.full(k_out, float(value.reshape(-1)[0]))
    if value.size == k_out and value.shape[-1] == k_out:
        return value.reshape(-1)
    raise UnsupportedModelError(f"{node.describe(graph)}: bias of shape {list(value.shape)} is not one value per output")


def _gemm(graph: Graph, node: Node) -> Node:
    if node.attrs.get("transA", 0):
        raise UnsupportedModelError(f"{node.describe(graph)}: Gemm with transA=1 on the activation is not supported")
    if graph.is_const(node.inputs[0]):
        raise UnsupportedModelError(f"{node.describe(graph)}: Gemm whose first input is the constant is not supported")
    weight = _weight_recipe(graph, node, node.inputs[1], "weight (input B)")
    if weight.ndim != 2:
        raise UnsupportedModelError(f"{node.describe(graph)}: Gemm with a weight of rank {weight.ndim} is not supported")
    if node.attrs.get("transB", 0):
        weight = recipes.transposed(weight, (1, 0))
    alpha = float(node.attrs.get("alpha", 1.0))
    if alpha != 1.0:
        weight = recipes.scaled(weight, np.float64(alpha))
    bias = np.zeros(weight.shape[1])
    if len(node.inputs) > 2 and node.inputs[2]:
        value = _constant_weight(graph, node, node.inputs[2], "bias (input C)") * float(node.attrs.get("beta", 1.0))
        bias = _dense_bias(graph, node, value, weight.shape[1])
    return Node(node.name, "Dense", [node.inputs[0]], node.outputs[:1], {}, {"weight": weight, "bias": bias}, "Gemm")


def _matmul(graph: Graph, node: Node) -> Node:
    if graph.is_const(node.inputs[0]):
        raise UnsupportedModelError(f"{node.describe(graph)}: MatMul with the constant on the left is not supported")
    weight = _weight_recipe(graph, node, node.inputs[1], "weight")
    if weight.ndim != 2:
        raise UnsupportedModelError(f"{node.describe(graph)}: MatMul with a weight of rank {weight.ndim} is not supported")
    bias = np.zeros(weight.shape[1])
    return Node(node.name, "Dense", [node.inputs[0]], node.outputs[:1], {}, {"weight": weight, "bias": bias}, "MatMul")


REWRITERS = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul}


def _is_linear_layer(node: Node, on_path: set[str]) -> bool:
    """A Conv / Gemm / MatMul whose activation input is on the image's float path. A MatMul of
    two computed tensors (attention, gated MLPs) is a product, not a layer with weights: it keeps
    its op type and gets a product rule (SPEC section 7)."""
    if node.op_type not in REWRITERS or node.inputs[0] not in on_path:
        return False
    return not (node.op_type == "MatMul" and node.inputs[1] in on_path)


def canonicalize_linear_layers(graph: Graph, on_path: set[str]) -> Graph:
    """Rewrite every linear node whose activation input is on the image's float path."""
    graph.nodes = [REWRITERS[node.op_type](graph, node) if _is_linear_layer(node, on_path) else node for node in graph.nodes]
    return graph
