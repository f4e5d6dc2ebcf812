"""Walk the canonical graph backwards from the logits and emit every layer's relevance rule."""

from __future__ import annotations

import numpy as np

from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import FLOAT_TYPES, Graph
from sglrp_onnx.rules import LinearRule

from . import batchnorm, indexing, linear, normalization, pooling, products, resize, structural  # noqa: F401  (they register their builders)
from .builder import Context, Emitter
from .registry import BACKWARD, TAKES_FACTORED

#: Ops whose output is >= 0 whatever the input, and ops that keep a non-negative input >= 0.
NONNEGATIVE_OUTPUT = ("Relu", "Sigmoid", "Softmax", "Abs")
KEEPS_SIGN = ("MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Squeeze",
              "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Add", "Sum", "Mul", "Gather", "ReduceSum",
              "Resize")


def nonnegative_tensors(graph: Graph) -> set[str]:
    """Tensors that are >= 0 for every input: the ``x-`` terms of rules vanish on them."""
    known: set[str] = set()
    for node in graph.nodes:
        computed = [n for n in node.inputs if n and not graph.is_const(n)]
        constants_ok = all(
            (graph.constants[n] >= 0).all() for n in node.inputs if n and graph.is_const(n)
        ) if node.op_type in ("Add", "Sum", "Mul") else True
        if node.op_type in NONNEGATIVE_OUTPUT:
            ok = True
        elif node.op_type == "Clip":
            low = node.attrs.get("min")
            if len(node.inputs) > 1 and node.inputs[1] and graph.is_const(node.inputs[1]):
                low = float(graph.constants[node.inputs[1]])
            ok = low is not None and low >= 0
        elif node.op_type == "Pad":
            mode = node.attrs.get("mode", "constant")
            value = graph.constants.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
            ok = node.inputs[0] in known and mode in ("constant", b"constant") and (value is None or float(value.reshape(-1)[0]) >= 0)
        elif node.op_type in KEEPS_SIGN:
            ok = bool(computed) and all(n in known for n in computed) and constants_ok
        else:
            ok = False
        if ok:
            known.update(o for o in node.outputs if o)
    return known


#: Keep ``a * c`` relevance as its two factors between builders that can use them
#: (:class:`.builder.Factored`); the tests turn it off to compare both forms.
FACTORED = True


def moves_batch_axis(graph: Graph) -> bool:
    """Whether the float path moves the batch axis away from axis 0 (torch's multi-head attention
    works sequence-first). Relevance in two halves of one batch (the ``scaled`` contrast) then
    cannot tile the forward tensors on axis 0: the two halves are propagated one after the other."""
    return any((node.op_type == "Transpose" and list(node.attrs.get("perm", [1]))[:1] != [0])
               or (node.op_type == "Gather" and not graph.is_const(node.inputs[1]))  # a gather from a flattened batch
               for node in graph.nodes)


def emit_relevance(ctx: Context, start_relevance: str, blocked: list | None = None) -> str:
    """Propagate ``start_relevance`` (at ``graph.logits``) to the image; returns its tensor name.

    With ``blocked`` (a list), a node whose relevance cannot be emitted does not stop the walk:
    ``(node, reason)`` is appended and its computed inputs get a placeholder relevance, so that
    one walk finds every such node (what :func:`blocking_nodes` reports). The result is then
    meaningless.
    """
    graph = ctx.graph
    pending: dict[str, list[str]] = {graph.logits: [start_relevance]}

    def collect(tensor: str):
        parts = pending.pop(tensor, None)
        if not parts:
            return None
        return ctx.merge(parts if FACTORED else [ctx.materialize(p) for p in parts])

    for node in reversed(graph.nodes):
        relevance_out = [collect(out) if out else None for out in node.outputs]
        if all(r is None for r in relevance_out):
            continue
        if not FACTORED or node.op_type not in TAKES_FACTORED:
            relevance_out = [ctx.materialize(r) for r in relevance_out]
        try:
            builder = BACKWARD.get(node.op_type)
            if builder is None:
                raise UnsupportedModelError(f"unsupported operator: {node.describe(graph)} has no relevance rule")
            relevance_in = builder(ctx, node, relevance_out)
        except UnsupportedModelError as error:
            if blocked is None:
                raise
            blocked.append((node, str(error)))
            placeholder = next(r for r in relevance_out if r is not None)
            # on to the float inputs only: shape tensors never carry relevance
            relevance_in = [placeholder if graph.dtypes.get(name, FLOAT_TYPES[0]) in FLOAT_TYPES else None for name in node.inputs]
        for name, relevance in zip(node.inputs, relevance_in):
            if name and relevance is not None and not graph.is_const(name):
                pending.setdefault(name, []).append(relevance)
    result = ctx.materialize(collect(graph.image))
    if result is None:
        raise UnsupportedModelError(f"no relevance reaches the image input '{graph.image}' from the logits '{graph.logits}'")
    return result


def blocking_nodes(graph: Graph, rules: dict) -> list[tuple]:
    """Every node on the explained path whose relevance rule cannot be emitted, with the reason.

    A dry run of :func:`emit_relevance` on a throw-away emitter; zbox layers get placeholder
    bounds, so that missing or uncarriable bounds (reported on their own) do not hide these.
    """
    placeholder = (np.zeros(1, np.float32), np.ones(1, np.float32))
    bounds = {name: placeholder for name, rule in rules.items() if isinstance(rule, LinearRule) and rule.needs_bounds}
    taken = {name for node in graph.nodes for name in (*node.inputs, *node.outputs)}
    ctx = Context(Emitter(taken), graph, rules, bounds, 1, nonnegative_tensors(graph))
    blocked: list[tuple] = []
    emit_relevance(ctx, "sglrp/dry_run_start", blocked)
    return blocked
