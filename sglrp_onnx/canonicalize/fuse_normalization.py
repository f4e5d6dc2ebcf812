"""Rewrite every normalisation layer into one canonical ``Normalization`` node (SPEC section 7).

Patterns, each rewritten into ``Normalization(x) -> y`` with ``attrs`` ``axes`` (the normalised
axes of ``x``, or ``[2]`` of ``x`` reshaped to ``[N, groups, -1]``), ``groups`` (0 = none),
``epsilon``, ``centered`` (False for RMS norms), and ``params`` ``gamma`` / ``beta`` shaped to
broadcast against ``x`` (batch axis 1):

- ``LayerNormalization``, ``InstanceNormalization``, ``GroupNormalization`` (opset 18's per-group
  and opset 21's per-channel scale);
- GroupNorm as older exporters write it: ``Reshape([N, G, -1]) -> InstanceNormalization ->
  Reshape(back)``;
- LayerNorm decomposed by older exporters: ``ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt,
  Div``, and its RMS form without the centring;
- then ``Mul`` / ``Add`` / ``Sub`` / ``Div`` by constants right after a normalisation fold into its
  gamma and beta (the trailing affine of GroupNorm / InstanceNorm exports, the decomposed
  LayerNorm's gamma and beta).

The canonical node's output names the forward tensor that holds the same values (the last node
of the pattern), so that the relevance part reads it by name. The forward is not changed.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.graph import Graph, Node


def _const(graph: Graph, name: str) -> np.ndarray | None:
    return graph.constants[name].astype(np.float64) if name and graph.is_const(name) else None


def _to_rank(value: np.ndarray, rank: int) -> np.ndarray:
    return value.reshape((1,) * (rank - value.ndim) + tuple(value.shape))


def _channel_param(value: np.ndarray | None, channels: int, rank: int, default: float) -> np.ndarray:
    if value is None:
        value = np.full(channels, default)
    return value.reshape((1, channels) + (1,) * (rank - 2))


def _make(source: Node, x: str, y: str, rank: int, axes, groups, epsilon, gamma, beta, centered=True) -> Node:
    attrs = {"axes": list(axes), "groups": int(groups), "epsilon": float(epsilon), "centered": centered}
    return Node(source.name, "Normalization", [x], [y], attrs, {"gamma": _to_rank(gamma, rank), "beta": _to_rank(beta, rank)},
                source.source_op or source.op_type)


def _layer_norm(graph: Graph, node: Node) -> Node | None:
    shape = graph.shape(node.inputs[0])
    scale = _const(graph, node.inputs[1])
    bias = _const(graph, node.inputs[2]) if len(node.inputs) > 2 else None
    if shape is None or scale is None or (len(node.inputs) > 2 and node.inputs[2] and bias is None):
        return None
    rank = len(shape)
    axis = int(node.attrs.get("axis", -1)) % rank
    if axis == 0:
        return None
    bias = np.zeros_like(scale) if bias is None else bias
    return _make(node, node.inputs[0], node.outputs[0], rank, range(axis, rank), 0, node.attrs.get("epsilon", 1e-5), scale, bias)


def _channels(graph: Graph, tensor: str) -> tuple[int, int] | None:
    shape = graph.shape(tensor)
    if shape is None or len(shape) < 3 or shape[1] is None:
        return None
    return len(shape), int(shape[1])


def _instance_norm(graph: Graph, node: Node) -> Node | None:
    found = _channels(graph, node.inputs[0])
    scale, bias = _const(graph, node.inputs[1]), _const(graph, node.inputs[2])
    if found is None or scale is None or bias is None:
        return None
    rank, channels = found
    return _make(node, node.inputs[0], node.outputs[0], rank, range(2, rank), 0, node.attrs.get("epsilon", 1e-5),
                 _channel_param(scale, channels, rank, 1.0), _channel_param(bias, channels, rank, 0.0))


def _per_channel(value: np.ndarray, groups: int, channels: int) -> np.ndarray | None:
    value = value.reshape(-1)
    if value.size == channels:
        return value
    if value.size == groups:
        return np.repeat(value, channels // groups)
    if value.size == 1:
        return np.full(channels, float(value[0]))
    return None


def _group_norm(graph: Graph, node: Node) -> Node | None:
    found = _channels(graph, node.inputs[0])
    scale, bias = _const(graph, node.inputs[1]), _const(graph, node.inputs[2])
    groups = int(node.attrs.get("num_groups", 0))
    if found is None or scale is None or bias is None or groups <= 0 or found[1] % groups:
        return None
    rank, channels = found
    scale, bias = _per_channel(scale, groups, channels), _per_channel(bias, groups, channels)
    if scale is None or bias is None:
        return None
    return _make(node, node.inputs[0], node.outputs[0], rank, [2], groups, node.attrs.get("epsilon", 1e-5),
                 _channel_param(scale, channels, rank, 1.0), _channel_param(bias, channels, rank, 0.0))


def _reshaped_group_norm(graph: Graph, node: Node, producers: dict, consumers: dict) -> tuple[Node, list[Node]] | None:
    """``Reshape([N, G, -1]) -> InstanceNormalization -> Reshape(back)`` as one grouped norm."""
    before = producers.get(node.inputs[0])
    after = consumers.get(node.outputs[0], [])
    if before is None or before.op_type != "Reshape" or len(after) != 1 or after[0].op_type != "Reshape":
        return None
    after = after[0]
    x = before.inputs[0]
    found = _channels(graph, x)
    grouped = graph.shape(before.outputs[0])
    if found is None or grouped is None or len(grouped) != 3 or grouped[1] is None or graph.shape(after.outputs[0]) != graph.shape(x):
        return None
    if len(consumers.get(before.outputs[0], [])) != 1:
        return None
    rank, channels = found
    groups = int(grouped[1])
    scale, bias = _const(graph, node.inputs[1]), _const(graph, node.inputs[2])
    if channels % groups or scale is None or bias is None:
        return None
    scale, bias = _per_channel(scale, groups, channels), _per_channel(bias, groups, channels)
    if scale is None or bias is None:
        return None
    fused = _make(node, x, after.outputs[0], rank, [2], groups, node.attrs.get("epsilon", 1e-5),
                  _channel_param(scale, channels, rank, 1.0), _channel_param(bias, channels, rank, 0.0))
    return fused, [before, node, after]


def _single(consumers: dict, tensor: str, op_types: tuple[str, ...]) -> Node | None:
    users = consumers.get(tensor, [])
    return users[0] if len(users) == 1 and users[0].op_type in op_types else None


def _reduce_axes(graph: Graph, node: Node, rank: int) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        value = _const(graph, node.inputs[1])
        axes = None if value is None else value.astype(np.int64).reshape(-1).tolist()
    if axes is None or not node.attrs.get("keepdims", 1):
        return None
    return sorted(int(a) % rank for a in axes)


def _is_square(graph: Graph, node: Node, base: str) -> bool:
    if node.op_type == "Pow":
        exponent = _const(graph, node.inputs[1])
        return node.inputs[0] == base and exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0
    return node.op_type == "Mul" and node.inputs[0] == base and node.inputs[1] == base


def _decomposed_norm(graph: Graph, first: Node, consumers: dict) -> tuple[Node, list[Node]] | None:
    """``mean, x - mean, ^2, mean, + eps, sqrt, /`` (LayerNorm) or its RMS form from ``first``.

    ``first`` is the ReduceMean of x (LayerNorm) or the square of x (RMS norm).
    """
    x = first.inputs[0]
    shape = graph.shape(x)
    if shape is None:
        return None
    rank = len(shape)
    chain = [first]
    if first.op_type == "ReduceMean":
        axes = _reduce_axes(graph, first, rank)
        centred = _single(consumers, first.outputs[0], ("Sub",))
        if axes is None or 0 in axes or centred is None or centred.inputs != [x, first.outputs[0]]:
            return None
        square = [u for u in consumers.get(centred.outputs[0], []) if _is_square(graph, u, centred.outputs[0])]
        if len(square) != 1:
            return None
        chain += [centred, square[0]]
        numerator = centred.outputs[0]
    elif _is_square(graph, first, x):
        numerator, axes = x, None
    else:
        return None
    variance = _single(consumers, chain[-1].outputs[0], ("ReduceMean",))
    if variance is None:
        return None
    variance_axes = _reduce_axes(graph, variance, rank)
    if variance_axes is None or (axes is not None and variance_axes != axes) or 0 in variance_axes:
        return None
    shifted = _single(consumers, variance.outputs[0], ("Add",))
    root = shifted and _single(consumers, shifted.outputs[0], ("Sqrt",))
    divided = root and _single(consumers, root.outputs[0], ("Div",))
    epsilon = shifted and _const(graph, shifted.inputs[1] if shifted.inputs[0] == variance.outputs[0] else shifted.inputs[0])
    if divided is None or epsilon is None or epsilon.size != 1 or divided.inputs != [numerator, root.outputs[0]]:
        return None
    chain += [variance, shifted, root, divided]
    ones = np.ones([1] * rank)
    fused = _make(first, x, divided.outputs[0], rank, variance_axes, 0, float(epsilon.reshape(-1)[0]), ones, np.zeros([1] * rank),
                  centered=first.op_type == "ReduceMean")
    fused.source_op = "LayerNormalization" if fused.attrs["centered"] else "RMSNormalization"
    return fused, chain


def _fold_trailing_affine(graph: Graph, norm: Node, op: Node) -> bool:
    """``Mul`` / ``Div`` / ``Add`` / ``Sub`` by a constant after a normalisation: into gamma / beta."""
    y = norm.outputs[0]
    if len(op.inputs) != 2 or y not in op.inputs or (op.op_type in ("Sub", "Div") and op.inputs[0] != y):
        return False
    other = op.inputs[1] if op.inputs[0] == y else op.inputs[0]
    value = _const(graph, other)
    shape = graph.shape(y)
    if value is None or shape is None or value.ndim > len(shape):
        return False
    value = _to_rank(value, len(shape))
    if value.shape[0] != 1 or any(v not in (1, s) for v, s in zip(value.shape, shape)):
        return False
    gamma, beta = norm.params["gamma"], norm.params["beta"]
    if op.op_type == "Mul":
        gamma, beta = gamma * value, beta * value
    elif op.op_type == "Div" and np.all(value != 0):
        gamma, beta = gamma / value, beta / value
    elif op.op_type == "Add":
        beta = beta + value
    elif op.op_type == "Sub":
        beta = beta - value
    else:
        return False
    norm.params["gamma"], norm.params["beta"] = gamma * np.ones_like(beta), beta * np.ones_like(gamma)
    return True


def _fuse_patterns(graph: Graph) -> bool:
    producers, consumers = graph.producers(), graph.consumers()
    for index, node in enumerate(graph.nodes):
        found = None
        if node.op_type == "InstanceNormalization":
            found = _reshaped_group_norm(graph, node, producers, consumers)
        if found is None and node.op_type in ("ReduceMean", "Pow", "Mul"):
            found = _decomposed_norm(graph, node, consumers)
        if found is None:
            simple = {"LayerNormalization": _layer_norm, "InstanceNormalization": _instance_norm,
                      "GroupNormalization": _group_norm}.get(node.op_type)
            fused = simple(graph, node) if simple is not None else None
            found = (fused, [node]) if fused is not None else None
        if found is not None:
            fused, replaced = found
            position = min(graph.nodes.index(n) for n in replaced)
            graph.nodes = [n for n in graph.nodes if all(n is not r for r in replaced)]
            graph.nodes.insert(min(position, len(graph.nodes)), fused)
            # the fused node reads x, which every replaced node came after: order stays topological
            return True
    return False


def fuse_normalization(graph: Graph) -> Graph:
    """Rewrite every normalisation pattern, then fold trailing constant affine ops into them."""
    while _fuse_patterns(graph):
        pass
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        for norm in graph.nodes:
            if norm.op_type != "Normalization" or norm.outputs[0] == graph.logits or norm.outputs[0] in graph.outputs:
                continue
            users = consumers.get(norm.outputs[0], [])
            if len(users) == 1 and users[0].op_type in ("Mul", "Div", "Add", "Sub") and _fold_trailing_affine(graph, norm, users[0]):
                norm.outputs = [users[0].outputs[0]]
                graph.nodes.remove(users[0])
                changed = True
                break
    return graph
