"""A standalone BatchNorm exported as ``Mul`` + ``Add`` by constants becomes one canonical ``Affine``.

Pattern: ``Mul(x, a)`` whose only consumer is ``Add(., c)`` / ``Sub(., c)`` (a, c constants that
keep the batch axis), optionally after ``x = Sub(u, mean)`` / ``Add(u, m)`` (then the map of ``u``), where ``x`` comes after a linear layer (tf2onnx writes Keras' BatchNorm
this way; one right after a Conv / Gemm was already folded into it by :mod:`.fold_into_linear`).
Rewrite: ``Affine(x) -> y`` with ``params["slope"] = a`` (broadcastable against ``x``), named after
the Add's output so that the relevance part reads ``y`` from the forward.

SPEC section 5 gives a standalone BatchNormalization the epsilon rule of its affine map; the same
map written as two ops gets the same rule here (``pass`` on each, the rule for constant Mul/Add,
lets epsilon-LRP grow by orders of magnitude through DenseNet's pre-activation norms). The image's
own preprocessing (Keras' Rescaling, before any linear layer) keeps ``pass``.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.graph import LINEAR_OPS, Graph, Node


def _batch_preserving(graph: Graph, name: str, rank: int) -> np.ndarray | None:
    if not graph.is_const(name):
        return None
    value = graph.constants[name].astype(np.float64)
    if value.ndim > rank or (value.ndim == rank and value.shape[0] != 1):
        return None
    return value.reshape((1,) * (rank - value.ndim) + value.shape)


def _after_linear_layer(graph: Graph, tensor: str, producers: dict) -> bool:
    stack, seen = [tensor], set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in LINEAR_OPS:
            return True
        stack.extend(n for n in node.inputs if n and not graph.is_const(n))
    return False


def _match(graph: Graph, mul: Node, producers: dict, consumers: dict) -> tuple[Node, Node] | None:
    computed = [n for n in mul.inputs if not graph.is_const(n)]
    users = consumers.get(mul.outputs[0], [])
    if mul.op_type != "Mul" or len(computed) != 1 or len(users) != 1 or users[0].op_type not in ("Add", "Sub"):
        return None
    shift = users[0]
    if shift.inputs[0] != mul.outputs[0] and shift.op_type == "Sub":
        return None
    if sum(not graph.is_const(n) for n in shift.inputs) != 1 or mul.outputs[0] == graph.logits:
        return None
    shape = graph.shape(computed[0])
    if not shape or not _after_linear_layer(graph, computed[0], producers):
        return None
    slope = _batch_preserving(graph, next(n for n in mul.inputs if n != computed[0]), len(shape))
    offset = _batch_preserving(graph, next(n for n in shift.inputs if n != mul.outputs[0]), len(shape))
    if slope is None or offset is None:
        return None
    source, replaced = computed[0], [shift]
    centring = producers.get(source)
    if (centring is not None and centring.op_type in ("Sub", "Add") and len(consumers.get(source, [])) == 1
            and not graph.is_const(centring.inputs[0]) and graph.is_const(centring.inputs[1])
            and _batch_preserving(graph, centring.inputs[1], len(shape)) is not None):
        source = centring.inputs[0]  # BatchNorm written as (x - mean) * a + c: the map of x itself
        replaced.append(centring)
    node = Node(mul.name, "Affine", [source], [shift.outputs[0]], {}, {"slope": slope}, "BatchNormalization")
    return node, replaced


def fuse_affine(graph: Graph) -> Graph:
    producers, consumers = graph.producers(), graph.consumers()
    rewritten = []
    skip = set()
    for node in graph.nodes:
        if id(node) in skip:
            continue
        found = _match(graph, node, producers, consumers) if node.op_type == "Mul" else None
        if found is None:
            rewritten.append(node)
            continue
        affine, replaced = found
        skip.update(id(n) for n in replaced)
        rewritten.append(affine)
    graph.nodes = [n for n in rewritten if id(n) not in skip]
    return graph
