"""Backward builders of layers without weights: activations, sums, gates, and shape operations.

SPEC section 5 fixes each rule: activations and constant affine ops pass relevance unchanged;
residual sums split it in proportion to the summands (``norm``); a gate computed from the tensor
it multiplies counts as a constant; shape operations are undone.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node

from .builder import Context, Factored
from .indexing import strided_slice_backward
from .products import unbroadcast as _unbroadcast
from .registry import register

ACTIVATIONS = (
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Celu", "Gelu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Erf", "LRN",
    "Neg", "Abs", "Swish",
)


@register(*ACTIVATIONS, factored=True)
def backward_pass(ctx: Context, node: Node, relevance_out: list) -> list:
    """``pass``: all relevance to the first input (other inputs are parameters)."""
    return [relevance_out[0]] + [None] * (len(node.inputs) - 1)


@register("Add", "Sum", factored=True)
def backward_sum(ctx: Context, node: Node, relevance_out: list) -> list:
    """``norm`` over the computed summands: ``R_i = a_i * R / stab(sum)``.

    A constant summand (a bias, a position embedding) lets relevance ``pass`` by default; with an
    ``epsilon`` / ``zero`` override it absorbs its share, as gradient x input does (SPEC section 7).
    """
    computed = ctx.computed_inputs(node)
    relevance = relevance_out[0]
    result: list = [None] * len(node.inputs)
    rule = ctx.rules.get(node.name)
    if len(computed) == 1 and (rule is None or rule.name not in ("epsilon", "zero")):
        result[computed[0]] = _unbroadcast(ctx, ctx.materialize(relevance), node.inputs[computed[0]], node.outputs[0])
        return result
    return _signed_sum(ctx, node, relevance, computed, [1.0] * len(node.inputs))


def _signed_sum(ctx: Context, node: Node, relevance: str, computed: list[int], signs: list[float]) -> list:
    """LRP-0 of ``sum_i sign_i * a_i``: ``R_i = sign_i * a_i * R / stab(out)`` (constants absorb theirs)."""
    s = ctx.quotient(relevance, node)
    result: list = [None] * len(node.inputs)
    for i in computed:
        x = node.inputs[i]
        if signs[i] == 1.0 and ctx.graph.shape(x) == ctx.graph.shape(node.outputs[0]) and ctx.graph.shape(x) is not None:
            result[i] = Factored(x, s)  # R_i = x_i * s, the product left to whoever divides it next
            continue
        share = ctx.scale(ctx.mul(ctx.fwd(x), s, "r"), signs[i], "signed")
        result[i] = _unbroadcast(ctx, share, x, node.outputs[0])
    return result


@register("Sub", "Div")
def backward_constant_affine(ctx: Context, node: Node, relevance_out: list) -> list:
    """By a constant: ``pass``. ``a - b`` of two computed tensors (PoolFormer's ``pool(x) - x``):
    LRP-0 of the signed sum, ``R_a = a R / stab(a - b)``, ``R_b = -b R / stab(a - b)`` (SPEC section 7)."""
    computed = ctx.computed_inputs(node)
    if node.op_type == "Sub" and len(computed) == 2:
        return _signed_sum(ctx, node, relevance_out[0], computed, [1.0, -1.0])
    if len(computed) != 1 or (node.op_type == "Div" and computed[0] != 0):
        raise UnsupportedModelError(
            f"{node.describe(ctx.graph)}: {node.op_type} of two computed tensors has no relevance rule"
        )
    result: list = [None] * len(node.inputs)
    result[computed[0]] = _unbroadcast(ctx, relevance_out[0], node.inputs[computed[0]], node.outputs[0])
    return result


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def backward_reshape(ctx: Context, node: Node, relevance_out: list) -> list:
    x = node.inputs[0]
    reshaped = ctx.reshape_batched(relevance_out[0], x, node.outputs[0])
    return [reshaped] + [None] * (len(node.inputs) - 1)


@register("Transpose")
def backward_transpose(ctx: Context, node: Node, relevance_out: list) -> list:
    rank = ctx.rank(node.inputs[0])
    perm = list(node.attrs.get("perm", list(reversed(range(rank)))))
    if perm[0] != 0 and ctx.passes > 1:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: a Transpose that moves the batch axis is not supported")
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return [ctx.em.op("Transpose", [relevance_out[0]], "r", perm=inverse)]


def _axis_sizes(ctx: Context, node: Node, tensors: list[str], axis: int) -> str:
    sizes = []
    for name in tensors:
        shape = ctx.graph.shape(name)
        sizes.append(None if shape is None else shape[axis])
    if all(s is not None for s in sizes):
        return ctx.em.const(np.array(sizes, np.int64), "split")
    parts = [ctx.em.op("Gather", [ctx.shape_tensor(name), ctx.em.const(np.array([axis], np.int64))], "size") for name in tensors]
    return ctx.em.op("Concat", parts, "split", axis=0)


@register("Concat")
def backward_concat(ctx: Context, node: Node, relevance_out: list) -> list:
    rank = ctx.rank(node.outputs[0])
    axis = int(node.attrs["axis"]) % rank
    if axis == 0 and ctx.passes > 1:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Concat along the batch axis is not supported")
    inputs = [name for name in node.inputs if name]
    if len(inputs) == 1:
        return [relevance_out[0]]
    pieces = ctx.em.op("Split", [relevance_out[0], _axis_sizes(ctx, node, inputs, axis)], "r", outputs=len(inputs), axis=axis)
    return [None if ctx.graph.is_const(name) else piece for name, piece in zip(inputs, pieces)]


@register("Split")
def backward_split(ctx: Context, node: Node, relevance_out: list) -> list:
    rank = ctx.rank(node.inputs[0])
    axis = int(node.attrs.get("axis", 0)) % rank
    if axis == 0 and ctx.passes > 1:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Split along the batch axis is not supported")
    pieces = []
    for out, relevance in zip(node.outputs, relevance_out):
        if relevance is None:
            shape = ctx.em.op("Shape", [ctx.fwd(out)], "shape")
            relevance = ctx.em.op("ConstantOfShape", [shape], "zeros")
        pieces.append(relevance)
    return [ctx.em.op("Concat", pieces, "r", axis=axis)] + [None] * (len(node.inputs) - 1)


def _const_ints(ctx: Context, node: Node, index: int, what: str) -> list[int] | None:
    if len(node.inputs) <= index or not node.inputs[index]:
        return None
    name = node.inputs[index]
    if not ctx.graph.is_const(name):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: its {what} are computed at run time")
    return [int(v) for v in ctx.graph.constants[name].reshape(-1)]


@register("Pad")
def backward_pad(ctx: Context, node: Node, relevance_out: list) -> list:
    """The padded border is cut off."""
    x = node.inputs[0]
    rank = ctx.rank(x)
    pads = node.attrs.get("pads") or _const_ints(ctx, node, 1, "pads")
    axes = _const_ints(ctx, node, 3, "axes") or list(range(rank))
    axes = [a % rank for a in axes]
    count = len(axes)
    begins, ends = pads[:count], pads[count:]
    if any(p < 0 for p in pads):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Pad with negative pads is not supported")
    negative = [0] * rank * 2
    for axis, b, e in zip(axes, begins, ends):
        negative[axis], negative[rank + axis] = -b, -e
    cut = ctx.em.op("Pad", [relevance_out[0], ctx.em.const(np.array(negative, np.int64))], "r")
    return [cut] + [None] * (len(node.inputs) - 1)


@register("Slice")
def backward_slice(ctx: Context, node: Node, relevance_out: list) -> list:
    """Relevance goes back to the sliced positions; the parts cut away get zero.

    With constant starts/ends and static sizes the padding is computed here; otherwise (channel
    splits exported as Slice with starts computed from shapes) it is computed at run time from the
    forward's own starts/ends tensors. Steps other than 1 (negative too) go to
    :func:`.indexing.strided_slice_backward`.
    """
    x = node.inputs[0]
    shape = ctx.graph.shape(x)
    if shape is None:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Slice needs the rank of its input")
    rank = len(shape)
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = list(node.attrs.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _maybe_const_ints(ctx, node, 1), _maybe_const_ints(ctx, node, 2)
        count = len(starts) if starts is not None else (ctx.graph.shape(node.inputs[1]) or [None])[0]
        axes = _const_ints(ctx, node, 3, "axes") or (list(range(count)) if count is not None else None)
        steps = _const_ints(ctx, node, 4, "steps") or [1] * len(axes or [])
    if axes is None:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Slice whose axes cannot be known")
    axes = [a % rank for a in axes]
    if 0 in axes and ctx.passes > 1:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Slice along the batch axis is not supported")
    if any(step != 1 for step in steps):  # strided or reversed: selection matrices (emit/indexing.py)
        return [strided_slice_backward(ctx, node, relevance_out[0], axes, starts, ends, steps)] + [None] * (len(node.inputs) - 1)
    static = starts is not None and ends is not None and all(shape[a] is not None for a in axes)
    if static:
        pads = [0] * rank * 2
        for axis, start, end in zip(axes, starts, ends):
            first, stop, _ = slice(start, end, 1).indices(shape[axis])
            pads[axis], pads[rank + axis] = first, shape[axis] - max(stop, first)
        pads_tensor = ctx.em.const(np.array(pads, np.int64))
    else:
        pads_tensor = _runtime_slice_pads(ctx, node, rank, axes, starts, ends)
    padded = ctx.em.op("Pad", [relevance_out[0], pads_tensor], "r")
    return [padded] + [None] * (len(node.inputs) - 1)


def _maybe_const_ints(ctx: Context, node: Node, index: int) -> list[int] | None:
    name = node.inputs[index] if len(node.inputs) > index else ""
    if name and ctx.graph.is_const(name):
        return [int(v) for v in ctx.graph.constants[name].reshape(-1)]
    return None


def _runtime_slice_pads(ctx: Context, node: Node, rank: int, axes: list[int], starts, ends) -> str:
    """Pad amounts ``[begin..., end...]`` of Slice's backward, from the runtime shape and bounds."""
    em = ctx.em
    axes_tensor = em.const(np.array(axes, np.int64))
    dims = em.op("Gather", [ctx.shape_tensor(node.inputs[0]), axes_tensor], "dims", axis=0)
    zero = em.const(np.zeros(len(axes), np.int64))

    def bound(values, index):
        if values is not None:
            value = em.const(np.array(values, np.int64))
        else:
            value = em.op("Cast", [node.inputs[index]], "bound", to=7)  # INT64
        wrapped = em.op("Where", [em.op("Less", [value, zero]), em.op("Add", [value, dims]), value], "bound")
        return em.op("Min", [em.op("Max", [wrapped, zero]), dims], "bound")

    first = bound(starts, 1)
    stop = em.op("Max", [bound(ends, 2), first], "stop")
    after = em.op("Sub", [dims, stop], "after")
    positions = em.const(np.array(axes + [rank + a for a in axes], np.int64))
    amounts = em.op("Concat", [first, after], "amounts", axis=0)
    return em.op("ScatterElements", [em.const(np.zeros(2 * rank, np.int64)), positions, amounts], "pads", axis=0)
