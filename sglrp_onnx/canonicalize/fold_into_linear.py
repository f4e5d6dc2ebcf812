"""Fold BatchNormalization and per-channel constant Add/Sub/Mul/Div into the linear layer before.

Pattern: a canonical ``Conv``/``Dense`` whose output feeds exactly one node, that node being a
BatchNormalization (inference mode) or an elementwise op with a constant broadcast per output
channel (a bias added after a Conv, BatchNormalization exported as Mul+Add, MatMul + Add).
Rewrite: the linear layer takes the folded weight and bias and the later node's output name, so
that the relevance part reads that forward tensor as the layer's output ``z``.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx import recipes
from sglrp_onnx.graph import Graph, Node

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def _channel_axis(linear: Node, rank: int) -> int:
    return 1 if linear.op_type == "Conv" else rank - 1


def _per_channel(graph: Graph, linear: Node, value: np.ndarray) -> np.ndarray | None:
    """``value`` as one number per output channel of ``linear``, or None if it is not so shaped."""
    out_shape = graph.shape(linear.outputs[0])
    channels = linear.params["weight"].shape[0 if linear.op_type == "Conv" else 1]
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    if out_shape is None or value.ndim > len(out_shape):
        return None
    rank = len(out_shape)
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    axis = _channel_axis(linear, rank)
    if all(d == 1 for i, d in enumerate(shape) if i != axis) and shape[axis] == channels:
        return value.reshape(-1).astype(np.float64)
    return None


def _scale(linear: Node, factor: np.ndarray) -> None:
    weight = linear.params["weight"]  # a recipe: the scale is applied in the graph (sglrp_onnx.recipes)
    if linear.op_type == "Conv":
        linear.params["weight"] = recipes.scaled(weight, factor.reshape((-1,) + (1,) * (weight.ndim - 1)))
    else:
        linear.params["weight"] = recipes.scaled(weight, factor.reshape(1, -1))
    linear.params["bias"] = linear.params["bias"] * factor


def _fold_batchnorm(graph: Graph, linear: Node, bn: Node) -> bool:
    if bn.attrs.get("training_mode", 0) or any(o for o in bn.outputs[1:]):
        return False
    if linear.op_type == "Dense" and len(graph.shape(linear.outputs[0]) or ()) != 2:
        return False  # BatchNormalization's channel axis is 1, a Dense layer's is the last
    if not all(graph.is_const(name) for name in bn.inputs[1:5]):
        return False
    scale, shift, mean, var = (graph.constants[name].astype(np.float64).reshape(-1) for name in bn.inputs[1:5])
    channels = linear.params["bias"].shape[0]
    if not all(v.size == channels for v in (scale, shift, mean, var)):
        return False
    factor = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    linear.params["bias"] = linear.params["bias"] - mean
    _scale(linear, factor)
    linear.params["bias"] = linear.params["bias"] + shift
    return True


def _fold_affine(graph: Graph, linear: Node, op: Node) -> bool:
    first, second = op.inputs[0], op.inputs[1]
    linear_first = first == linear.outputs[0]
    constant = second if linear_first else first
    if not graph.is_const(constant) or first == second:
        return False
    value = _per_channel(graph, linear, graph.constants[constant])
    if value is None:
        return False
    if op.op_type == "Add":
        linear.params["bias"] = linear.params["bias"] + value
    elif op.op_type == "Sub" and linear_first:
        linear.params["bias"] = linear.params["bias"] - value
    elif op.op_type == "Sub":  # c - y = -y + c
        _scale(linear, -np.ones_like(value))
        linear.params["bias"] = linear.params["bias"] + value
    elif op.op_type == "Mul":
        _scale(linear, value)
    elif op.op_type == "Div" and linear_first and np.all(value != 0):
        _scale(linear, 1.0 / value)
    else:
        return False
    return True


def fold_into_linear(graph: Graph) -> Graph:
    """Apply the folds until none applies (a Conv + bias Add + BatchNorm chain folds fully)."""
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        for linear in graph.nodes:
            if linear.op_type not in ("Conv", "Dense") or linear.outputs[0] == graph.logits:
                continue
            users = consumers.get(linear.outputs[0], [])
            if len(users) != 1:
                continue
            follower = users[0]
            if follower.op_type == "BatchNormalization" and follower.inputs[0] == linear.outputs[0]:
                folded = _fold_batchnorm(graph, linear, follower)
            elif follower.op_type in AFFINE_OPS:
                folded = _fold_affine(graph, linear, follower)
            else:
                folded = False
            if folded:
                linear.outputs = [follower.outputs[0]]
                graph.nodes.remove(follower)
                changed = True
                break
    return graph
