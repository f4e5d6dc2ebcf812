"""Backward builder of a standalone BatchNormalization (one not folded into a Conv/Gemm).

In inference mode the layer is the per-channel affine map ``y = a * x + c`` with
``a = scale / sqrt(var + eps)`` and ``c = B - mean * a``. SPEC section 5 gives it the epsilon
rule of that map, stabilised with ``stabilizer``: ``R_x = a * x * R / stab(y)``; the offset ``c``
absorbs its share (Zennit's ``Epsilon`` rule on the module, ``zennit/rules.py``). Zennit's default
``Pass`` for such layers (and this engine's until 2026-12) lets epsilon-LRP grow by orders of
magnitude through DenseNet's pre-activation norms (docs/design.md, "Numerics"); ``pass`` stays
available as an override.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node

from .builder import Context
from .registry import register


def batchnorm_slope(ctx: Context, node: Node) -> np.ndarray:
    """``a = scale / sqrt(var + eps)`` per channel, from the layer's constant parameters."""
    names = node.inputs[1:5]
    if len(names) != 4 or not all(name and ctx.graph.is_const(name) for name in names):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: BatchNormalization needs constant scale, bias, mean and variance")
    scale, _, _, var = (np.asarray(ctx.graph.constants[name], np.float64).reshape(-1) for name in names)
    eps = float(node.attrs.get("epsilon", 1e-5))
    return scale / np.sqrt(var + eps)


@register("BatchNormalization", "Affine")
def backward_batchnorm(ctx: Context, node: Node, relevance_out: list) -> list:
    """``R_x = a * x * R / stab(y)`` (epsilon rule of the affine map), or ``pass`` by override.

    ``Affine`` is the canonical form of a BatchNorm exported as Mul + Add (canonicalize/fuse_affine.py)."""
    rule = ctx.rules.get(node.name)
    unused = [None] * (len(node.inputs) - 1)
    if rule is not None and rule.name == "pass":
        return [relevance_out[0]] + unused
    if node.attrs.get("training_mode", 0):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: BatchNormalization in training mode cannot be explained")
    x = node.inputs[0]
    rank = ctx.rank(x)
    if node.op_type == "Affine":
        slope = node.params["slope"]
    else:
        slope = batchnorm_slope(ctx, node).reshape([-1] + [1] * (rank - 2))
    em = ctx.em
    s = ctx.quotient(relevance_out[0], node)
    weighted = em.op("Mul", [ctx.fwd(x), em.const(slope.astype(np.float32), "bn_slope")], "ax")
    return [em.op("Mul", [weighted, s], "r")] + unused
