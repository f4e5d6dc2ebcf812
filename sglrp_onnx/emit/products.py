"""Backward builders of products of two computed tensors: attention, gates, gated MLPs (SPEC section 7).

Which rule a product ``C = A * B`` (Mul, MatMul or a two-operand Einsum) gets depends on where its
factors come from:

- attention weights (a factor produced by a Softmax, through shape-only ops): with the default
  ``attention="cp"`` they count as a constant, CP-LRP (Ali et al. 2022, "XAI for Transformers: Better
  Explanations through Conservative Propagation", ICML): ``R_V = V * A^T (R / stab(A V))``; with
  ``attention="attnlrp"`` the product takes the uniform rule and the Softmax its own rule (Achtibat et
  al. 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML);
- a gate, a factor computed from the other factor (squeeze-excitation, x * sigmoid(x), decomposed
  GELU, ResNeSt's split attention): the gate counts as a constant; for an elementwise Mul that
  is ``pass`` to the other factor (SPEC section 5), for a MatMul LRP-0 through it;
- otherwise (gated MLPs, q k^T under AttnLRP) the uniform rule, AttnLRP Eq. 7:
  ``R_A = 1/2 * A * ((R / stab(C)) B^T)`` and ``R_B = 1/2 * B * (A^T (R / stab(C)))``.

Every division is stabilised with the conversion's ``stabilizer`` (SPEC section 4).
"""

from __future__ import annotations

from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node

from .builder import Context
from .registry import register
from .support import gated_factor

#: Ops that move values around without changing them: looking through them finds a Softmax.
SHAPE_ONLY = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Cast", "Expand")


def unbroadcast(ctx: Context, relevance: str, tensor: str, out: str) -> str:
    """Sum relevance over the axes along which ``tensor`` was broadcast to the output's shape."""
    shape, out_shape = ctx.graph.shape(tensor), ctx.graph.shape(out)
    if shape == out_shape:
        return relevance
    if shape is None or out_shape is None:
        raise UnsupportedModelError(f"cannot undo the broadcast of '{tensor}' to '{out}': shapes unknown")
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    axes = [i for i, (a, b) in enumerate(zip(padded, out_shape)) if a == 1 and b != 1]
    if axes:
        relevance = ctx.reduce_sum(relevance, axes, "unbroadcast")
    if len(shape) != len(out_shape):
        relevance = ctx.em.op("Reshape", [relevance, ctx.batch_shape(tensor)], "unbroadcast")
    return relevance


def is_attention_weights(ctx: Context, tensor: str) -> bool:
    """Whether ``tensor`` is a Softmax output, possibly reshaped or transposed on the way."""
    node = ctx.producers.get(tensor)
    while node is not None and node.op_type in SHAPE_ONLY:
        node = ctx.producers.get(node.inputs[0])
    return node is not None and node.op_type == "Softmax"


def constant_factor(ctx: Context, node: Node) -> int | None:
    """Index (0 or 1) of the factor that counts as a constant, or None for the uniform rule."""
    if ctx.attention == "cp":
        for index in (0, 1):
            if is_attention_weights(ctx, node.inputs[index]):
                return index
    gated = _gated_factor(ctx, node)
    return None if gated is None else 1 - gated


class MatMulMap:
    """``C = A @ B`` (numpy matmul semantics, rank >= 2) and the products of its transpose."""

    def __init__(self, ctx: Context, node: Node):
        self.ctx, self.node = ctx, node
        for name in node.inputs[:2]:
            shape = ctx.graph.shape(name)
            if shape is None or len(shape) < 2:
                raise UnsupportedModelError(f"{node.describe(ctx.graph)}: MatMul of two computed tensors needs both of rank >= 2")

    def _swap_last(self, tensor: str, rank: int) -> str:
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return self.ctx.em.op("Transpose", [tensor], "t", perm=perm)

    def to_first(self, s: str, b: str) -> str:
        """``s @ B^T``: the relevance quotient carried back to the first factor."""
        return self.ctx.em.op("MatMul", [s, self._swap_last(b, self.ctx.rank(self.node.inputs[1]))], "c")

    def to_second(self, s: str, a: str) -> str:
        """``A^T @ s``: carried back to the second factor."""
        return self.ctx.em.op("MatMul", [self._swap_last(a, self.ctx.rank(self.node.inputs[0])), s], "c")


class EinsumMap:
    """A two-operand Einsum without ellipses or repeated indices, and its transposes (as Einsums)."""

    def __init__(self, ctx: Context, node: Node):
        self.ctx, self.node = ctx, node
        equation = node.attrs["equation"]
        equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
        if "->" not in equation or "." in equation:
            raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Einsum '{equation}' needs an explicit output and no ellipsis")
        operands, self.out = equation.split("->")
        parts = operands.split(",")
        if len(parts) != 2 or any(len(set(p)) != len(p) for p in parts + [self.out]):
            raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Einsum '{equation}' is not a product of two operands with distinct indices")
        self.first, self.second = parts
        for mine, other in ((self.first, self.second), (self.second, self.first)):
            if any(ch not in other and ch not in self.out for ch in mine):
                raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Einsum '{equation}' sums an index of one operand alone")

    def to_first(self, s: str, b: str) -> str:
        return self.ctx.em.op("Einsum", [s, b], "c", equation=f"{self.out},{self.second}->{self.first}")

    def to_second(self, s: str, a: str) -> str:
        return self.ctx.em.op("Einsum", [a, s], "c", equation=f"{self.first},{self.out}->{self.second}")


def emit_product(ctx: Context, node: Node, relevance: str, layer) -> list:
    """Relevance of both factors of ``node`` under the rule :func:`constant_factor` chooses."""
    em = ctx.em
    a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
    s = ctx.quotient(relevance, node)
    constant = constant_factor(ctx, node)
    result: list = [None] * len(node.inputs)
    if constant != 0:  # the first factor receives relevance
        share = em.op("Mul", [ctx.fwd(a), layer.to_first(s, ctx.fwd(b))], "r")
        result[0] = ctx.scale(unbroadcast(ctx, share, a, out), 0.5 if constant is None else 1.0, "half")
    if constant != 1:
        share = em.op("Mul", [ctx.fwd(b), layer.to_second(s, ctx.fwd(a))], "r")
        result[1] = ctx.scale(unbroadcast(ctx, share, b, out), 0.5 if constant is None else 1.0, "half")
    return result


class ElementwiseMap:
    """``C = A * B`` elementwise: the transposes are products with the other factor."""

    def __init__(self, ctx: Context, node: Node):
        self.ctx = ctx

    def to_first(self, s: str, b: str) -> str:
        return self.ctx.em.op("Mul", [s, b], "c")

    def to_second(self, s: str, a: str) -> str:
        return self.ctx.em.op("Mul", [s, a], "c")


@register("Mul")
def backward_mul(ctx: Context, node: Node, relevance_out: list) -> list:
    """By a constant: ``pass``. Two computed factors: gate, attention or uniform rule (module doc)."""
    computed = ctx.computed_inputs(node)
    result: list = [None] * len(node.inputs)
    if len(computed) == 1:
        result[computed[0]] = unbroadcast(ctx, relevance_out[0], node.inputs[computed[0]], node.outputs[0])
        return result
    if node.inputs[0] == node.inputs[1]:  # x * x: the square of one tensor, relevance passes to it
        result[0] = relevance_out[0]
        return result
    gated = _gated_factor(ctx, node)
    if gated is not None:  # a gate counts as a constant: Mul by a constant is `pass` (SPEC section 5)
        result[gated] = unbroadcast(ctx, relevance_out[0], node.inputs[gated], node.outputs[0])
        return result
    return emit_product(ctx, node, relevance_out[0], ElementwiseMap(ctx, node))


def _gated_factor(ctx: Context, node: Node) -> int | None:
    """Index of the factor an elementwise gate multiplies (the other is computed from it)."""
    return gated_factor(ctx.producers, node)


@register("MatMul")
def backward_matmul(ctx: Context, node: Node, relevance_out: list) -> list:
    """MatMul of two computed tensors (a MatMul with a constant weight is a canonical Dense layer)."""
    return emit_product(ctx, node, relevance_out[0], MatMulMap(ctx, node))


@register("Einsum")
def backward_einsum(ctx: Context, node: Node, relevance_out: list) -> list:
    computed = ctx.computed_inputs(node)
    if len(node.inputs) != 2:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Einsum with {len(node.inputs)} operands is not supported")
    layer = EinsumMap(ctx, node)
    if len(computed) == 2:
        return emit_product(ctx, node, relevance_out[0], layer)
    # one constant operand: a linear map of the other, LRP-0 through it (the epsilon rule's form)
    em = ctx.em
    index = computed[0]
    x, w = node.inputs[index], node.inputs[1 - index]
    s = ctx.quotient(relevance_out[0], node)
    back = layer.to_first(s, w) if index == 0 else layer.to_second(s, w)
    result: list = [None, None]
    result[index] = em.op("Mul", [ctx.fwd(x), back], "r")
    return result


@register("Softmax")
def backward_softmax(ctx: Context, node: Node, relevance_out: list) -> list:
    """AttnLRP's softmax rule (Achtibat et al. 2024, Prop. 3.3): ``R_x = x * (R - y * sum(R))``,
    the sum over the softmax axis. Reached only under ``attention="attnlrp"`` (CP-LRP holds the
    attention weights constant, so no relevance arrives at their Softmax)."""
    em = ctx.em
    rank = ctx.rank(node.inputs[0])
    axis = int(node.attrs.get("axis", -1)) % rank
    relevance = relevance_out[0]
    total = ctx.reduce_sum(relevance, [axis], "sum_r")
    inner = em.op("Sub", [relevance, em.op("Mul", [ctx.fwd(node.outputs[0]), total])], "r")
    return [em.op("Mul", [ctx.fwd(node.inputs[0]), inner], "r")]
