"""Backward builder of the canonical ``Normalization`` node (LayerNorm, InstanceNorm, GroupNorm, RMS norm).

SPEC section 7, after CP-LRP (Ali et al. 2022, "XAI for Transformers: Better Explanations through
Conservative Propagation"): the standard deviation sigma is held constant at its forward value, so
the layer is the affine map ``y = gamma * (x - mean(x)) / sigma + beta`` over the normalised axes,
and relevance follows LRP-0 of that map, stabilised with ``stabilizer`` (beta absorbs its share,
the mean passes relevance):

    s = R / stab(y),  u = s * gamma / sigma,  R_x = x * (u - mean(u))

RMS norms (no centring) give ``R_x = x * u``. Grouped norms reshape ``x`` to ``[N, groups, -1]``
and normalise over the last axis. sigma is recomputed from ``x`` here (the forward node's optional
statistics outputs are not there in general).
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.graph import Node

from .builder import Context
from .registry import register


def _grouped(ctx: Context, tensor: str, groups: int) -> str:
    return ctx.em.op("Reshape", [tensor, ctx.em.const(np.array([0, groups, -1], np.int64))], "grouped") if groups else tensor


@register("Normalization")
def backward_normalization(ctx: Context, node: Node, relevance_out: list) -> list:
    rule = ctx.rules.get(node.name)
    if rule is not None and rule.name == "pass":
        return [relevance_out[0]]
    em = ctx.em
    attrs = node.attrs
    groups, axes = attrs["groups"], attrs["axes"]
    s = ctx.quotient(relevance_out[0], node)
    gamma = node.params["gamma"]
    u = s if np.all(gamma == 1) else em.op("Mul", [s, em.const(gamma, "gamma")], "u")
    x = _grouped(ctx, ctx.fwd(node.inputs[0]), groups)
    u = _grouped(ctx, u, groups)
    if attrs["centered"]:
        centred = em.op("Sub", [x, ctx.reduce_mean(x, axes)], "centred")
    else:
        centred = x
    variance = ctx.reduce_mean(em.op("Mul", [centred, centred], "square"), axes, "variance")
    sigma = em.op("Sqrt", [em.op("Add", [variance, em.const(np.float32(attrs["epsilon"]))], "variance")], "sigma")
    u = em.op("Div", [u, sigma], "u")
    if attrs["centered"]:
        u = em.op("Sub", [u, ctx.reduce_mean(u, axes)], "u")
    relevance = em.op("Mul", [x, u], "r")
    if groups:
        relevance = em.op("Reshape", [relevance, ctx.batch_shape(node.inputs[0])], "r")
    return [relevance]
