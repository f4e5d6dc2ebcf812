"""zbox input bounds: parse the user's values and carry them to the first layers' inputs.

The user gives the lowest and highest value the model input can take after preprocessing, one
number or one per channel on the input's channel axis (axis 1 for NCHW, the last for NHWC).
Where the graph transforms its input before the first linear layers (constant Sub/Add/Mul/Div,
Transpose, Reshape, Flatten), the bounds are carried through the same operations; a negative
factor swaps low and high (SPEC section 4). Bounds follow only the float path from the image:
shape tensors computed from it (a Reshape target read off ``Shape(image)``, as in a
space-to-depth stem) carry none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sglrp_onnx.canonicalize.find_io import float_path
from sglrp_onnx.errors import RuleError
from sglrp_onnx.graph import FLOAT_TYPES, Graph, Node

Bounds = tuple[np.ndarray, np.ndarray]

#: Ops that leave values unchanged.
IDENTITIES = ("Identity", "Dropout")


def parse_bound_values(value: Any, name: str) -> np.ndarray:
    """``0.5``, ``[0.1, 0.2, 0.3]`` or ``"0.1,0.2,0.3"`` -> 1-D float64 array."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise RuleError(f"--{name} must be a number or comma-separated numbers, got '{value}'") from None
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise RuleError(f"{name} bound must be finite numbers, got {value!r}")
    return array


def bounds_for_tensor(graph: Graph, tensor: str, low: Any, high: Any, channel_axis: int) -> Bounds:
    """Broadcastable ``(low, high)`` arrays for ``tensor`` (batch 1): one number, or one per channel
    on ``channel_axis``."""
    shape = graph.shape(tensor)
    rank = len(shape) if shape is not None else 4
    arrays = []
    for value, name in ((low, "low"), (high, "high")):
        values = parse_bound_values(value, name)
        target = [1] * rank
        if values.size > 1:
            channels = shape[channel_axis] if shape is not None else None
            if channels is not None and channels != values.size:
                raise RuleError(
                    f"{name} has {values.size} values but tensor '{tensor}' has {channels} channels "
                    f"on axis {channel_axis % rank}"
                )
            target[channel_axis] = values.size
        arrays.append(values.reshape(target))
    low_array, high_array = arrays
    if np.any(low_array > high_array):
        raise RuleError(f"zbox bounds for '{tensor}': low {low} is above high {high}")
    return low_array, high_array


def bounds_at_input(graph: Graph, low: Any, high: Any, channel_axis: int) -> Bounds:
    """The user's bounds on the image input (the start of :func:`carry_bounds`)."""
    return bounds_for_tensor(graph, graph.image, low, high, channel_axis)


def _full(graph: Graph, node: Node, bounds: Bounds, tensor: str) -> Bounds:
    shape = graph.static_shape(tensor) or graph.shape(tensor)
    if shape is None or any(d is None for d in shape[1:]):
        raise RuleError(f"cannot carry zbox bounds through {node.describe(graph)}: its input shape is not static")
    target = (1,) + tuple(shape[1:])
    return np.broadcast_to(bounds[0], target).copy(), np.broadcast_to(bounds[1], target).copy()


def _carry(graph: Graph, node: Node, known: dict[str, Bounds]) -> Bounds:
    op = node.op_type
    source = node.inputs[0]
    if op in IDENTITIES or (op == "Cast" and node.attrs.get("to") in FLOAT_TYPES):
        return known[source]  # a float-to-float cast keeps the values' range
    if op in ("Add", "Sub", "Mul", "Div"):
        first, second = node.inputs[:2]
        if first in known and graph.is_const(second):
            low, high = known[first]
            c = graph.constants[second].astype(np.float64)
            c = c.reshape((1,) * max(0, low.ndim - c.ndim) + c.shape) if c.ndim < low.ndim else c
            if op == "Add":
                return low + c, high + c
            if op == "Sub":
                return low - c, high - c
            factor = c if op == "Mul" else 1.0 / c
            a, b = low * factor, high * factor
            return np.minimum(a, b), np.maximum(a, b)
        if second in known and graph.is_const(first) and op in ("Add", "Mul", "Sub"):
            low, high = known[second]
            c = graph.constants[first].astype(np.float64)
            if op == "Add":
                return low + c, high + c
            a, b = (low * c, high * c) if op == "Mul" else (c - high, c - low)
            return np.minimum(a, b), np.maximum(a, b)
    if op == "Transpose":
        low, high = known[source]
        perm = node.attrs.get("perm", list(reversed(range(low.ndim))))
        return np.transpose(low, perm), np.transpose(high, perm)
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        out_shape = graph.shape(node.outputs[0])
        if out_shape is None or any(d is None for d in out_shape[1:]):
            raise RuleError(f"cannot carry zbox bounds through {node.describe(graph)}: its output shape is not static")
        low, high = _full(graph, node, known[source], source)
        target = (1,) + tuple(out_shape[1:])
        return low.reshape(target), high.reshape(target)
    if op == "Pad":
        return _carry_pad(graph, node, known[source])
    if op in ("Relu", "Clip"):
        low, high = known[source]
        lo = graph.constants.get(node.inputs[1]) if op == "Clip" and len(node.inputs) > 1 and node.inputs[1] else node.attrs.get("min")
        hi = graph.constants.get(node.inputs[2]) if op == "Clip" and len(node.inputs) > 2 and node.inputs[2] else node.attrs.get("max")
        if op == "Relu":
            lo, hi = 0.0, None
        low = low if lo is None else np.maximum(low, float(lo))
        high = high if hi is None else np.minimum(high, float(hi))
        return low, high
    raise RuleError(
        f"cannot carry zbox bounds through {node.describe(graph)} to a first layer; give that layer its own "
        "bounds with a rule override {\"rule\": \"zbox\", \"low\": ..., \"high\": ...}"
    )


def _carry_pad(graph: Graph, node: Node, bounds: Bounds) -> Bounds:
    """Padded positions hold the pad value (constant mode) or copies of the border (other modes)."""
    low, high = _full(graph, node, bounds, node.inputs[0])
    rank = low.ndim
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1 and graph.is_const(node.inputs[1]):
        pads = graph.constants[node.inputs[1]].reshape(-1).tolist()
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        axes = [int(a) % rank for a in graph.constants[node.inputs[3]].reshape(-1)]
    if pads is None or any(p < 0 for p in pads):
        raise RuleError(f"cannot carry zbox bounds through {node.describe(graph)}: pads unknown or negative")
    width = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        width[axis] = (int(pads[i]), int(pads[len(axes) + i]))
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant":
        value = 0.0
        if len(node.inputs) > 2 and node.inputs[2] and graph.is_const(node.inputs[2]):
            value = float(graph.constants[node.inputs[2]].reshape(-1)[0])
        return np.pad(low, width, constant_values=value), np.pad(high, width, constant_values=value)
    numpy_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(mode)
    if numpy_mode is None:
        raise RuleError(f"cannot carry zbox bounds through {node.describe(graph)}: pad mode {mode}")
    return np.pad(low, width, mode=numpy_mode), np.pad(high, width, mode=numpy_mode)


def carry_bounds(graph: Graph, image_bounds: Bounds, targets: set[str]) -> dict[str, Bounds]:
    """Bounds of each tensor in ``targets`` (inputs of first layers), carried from the image."""
    known: dict[str, Bounds] = {graph.image: image_bounds}
    result = {}
    producers = graph.producers()
    on_path = float_path(graph)

    def resolve(tensor: str) -> Bounds:
        if tensor in known:
            return known[tensor]
        node = producers.get(tensor)
        if node is None:
            raise RuleError(f"cannot carry zbox bounds to tensor '{tensor}': it is not computed from the image")
        for name in node.inputs:
            if name and name in on_path and not graph.is_const(name):  # never into shape tensors
                resolve(name)
        known[tensor] = _carry(graph, node, known)
        return known[tensor]

    for tensor in targets:
        result[tensor] = resolve(tensor)
    return result
