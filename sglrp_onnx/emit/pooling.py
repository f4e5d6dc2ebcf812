"""Backward builders of pooling layers.

- MaxPool: winner-take-all, the gradient of max pooling. The relevance part recomputes the
  pooling with its ``Indices`` output (flattened over the whole tensor, so the two halves of a
  ``scaled`` batch index apart by themselves) and scatters relevance back with
  ``ScatterElements(reduction="add")``, so that overlapping windows add up.
- AveragePool, GlobalAveragePool, ReduceMean: the ``norm`` rule,
  ``R_in = a * f^T(R / stab(f(a)))``, with ``f^T`` built from ONNX Runtime's own pooling
  divisors (so ``count_include_pad`` and ``ceil_mode`` agree with the forward by construction).
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.canonicalize import resolve_conv_pads
from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node

from .builder import ONE, Context
from .linear import conv_transpose
from .registry import register


def _is_pass(ctx: Context, node: Node) -> bool:
    rule = ctx.rules.get(node.name)
    return rule is not None and rule.name == "pass"


@register("MaxPool")
def backward_maxpool(ctx: Context, node: Node, relevance_out: list) -> list:
    em = ctx.em
    if node.attrs.get("storage_order", 0):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: MaxPool with storage_order=1 is not supported")
    x = ctx.fwd(node.inputs[0])
    attrs = {k: v for k, v in node.attrs.items() if k in ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")}
    _, indices = em.op("MaxPool", [x], "pool", outputs=2, **attrs)
    flat_relevance = em.op("Reshape", [relevance_out[0], em.const([-1])], "flat")
    flat_indices = em.op("Reshape", [indices, em.const([-1])], "flat")
    size = em.op("Reshape", [em.op("Size", [x]), em.const([1])], "size")
    zeros = em.op("ConstantOfShape", [size], "zeros")
    scattered = em.op("ScatterElements", [zeros, flat_indices, flat_relevance], "scatter", axis=0, reduction="add")
    return [em.op("Reshape", [scattered, ctx.shape_tensor(node.inputs[0])], "r")]


def _spatial_static(ctx: Context, tensor: str) -> list[int] | None:
    shape = ctx.graph.shape(tensor)
    if shape is None or any(d is None for d in shape[2:]):
        return None
    return list(shape[2:])


@register("AveragePool")
def backward_avgpool(ctx: Context, node: Node, relevance_out: list) -> list:
    if _is_pass(ctx, node):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: 'pass' cannot change the shape")
    em = ctx.em
    x, y = node.inputs[0], node.outputs[0]
    shape = ctx.graph.shape(x)
    channels = shape[1] if shape is not None else None
    if channels is None:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: AveragePool needs a known channel count")
    kernel = list(node.attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    pads = resolve_conv_pads(ctx.graph, node, rank, kernel, strides, dilations)
    # 1 / divisor of each window, measured on ONNX Runtime's own AveragePool: avg(ones) / count(valid)
    spatial = _spatial_static(ctx, x)
    if spatial is not None:
        ones = em.const(np.ones([1, 1, *spatial], np.float32), "ones")
    else:
        shape_1 = em.op("Concat", [em.const([1, 1]), ctx.spatial_size(x)], "shape", axis=0)
        ones = em.op("ConstantOfShape", [shape_1], "ones", value=ONE)
    pool_attrs = {k: v for k, v in node.attrs.items() if k in ("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "strides")}
    averaged = em.op("AveragePool", [ones], "avg_ones", **pool_attrs)
    extra = [s - 1 for s in strides] if node.attrs.get("ceil_mode", 0) else [0] * rank
    counted = em.op(
        "Conv", [ones, em.const(np.ones([1, 1, *kernel], np.float32), "k")], "count",
        strides=strides, dilations=dilations, pads=pads[:rank] + [p + e for p, e in zip(pads[rank:], extra)],
    )
    if any(extra):
        out_spatial = _spatial_static(ctx, y)
        ends = em.const(out_spatial) if out_spatial is not None else em.op("Slice", [em.op("Shape", [averaged]), em.const([2]), em.const([2 + rank])])
        counted = em.op("Slice", [counted, em.const([0] * rank), ends, em.const(list(range(2, 2 + rank)))], "count")
    counted = em.op("Max", [counted, em.const(np.float32(1))], "count")
    inverse_count = em.op("Div", [averaged, counted], "inv_count")
    s = ctx.quotient(relevance_out[0], node)
    s = em.op("Mul", [s, inverse_count], "s")
    kernel_weight = np.ones([channels, 1, *kernel], np.float32)
    c = conv_transpose(ctx, x, y, s, kernel_weight, strides, dilations, pads, channels)
    return [em.op("Mul", [ctx.fwd(x), c], "r")]


def _mean_backward(ctx: Context, node: Node, relevance: str, axes: list[int], keepdims: bool, mean: bool = True) -> str:
    """``norm`` over a mean (``mean``) or a sum of the elements along ``axes``:
    ``R_in = x * broadcast(R / stab(y))``, divided by the count for a mean."""
    em = ctx.em
    x = node.inputs[0]
    s = ctx.quotient(relevance, node)
    if not keepdims:
        s = em.op("Unsqueeze", [s, em.const(np.array(axes, np.int64))], "s")
    if mean:
        s = em.op("Div", [s, _element_count(ctx, x, axes)], "s")
    return em.op("Mul", [ctx.fwd(x), s], "r")


def _element_count(ctx: Context, x: str, axes: list[int]) -> str:
    """Number of elements a mean over ``axes`` of ``x`` divides by (static where known)."""
    em = ctx.em
    shape = ctx.graph.shape(x)
    sizes = [shape[a] for a in axes] if shape is not None else [None]
    if all(d is not None for d in sizes):
        return em.const(np.float32(np.prod(sizes)))
    dims = em.op("Gather", [ctx.shape_tensor(x), em.const(np.array(axes, np.int64))], "dims")
    return em.op("Cast", [em.op("ReduceProd", [dims], "count", keepdims=0)], "count", to=1)


@register("GlobalAveragePool")
def backward_global_avgpool(ctx: Context, node: Node, relevance_out: list) -> list:
    rank = ctx.rank(node.inputs[0])
    return [_mean_backward(ctx, node, relevance_out[0], list(range(2, rank)), True)]


def _reduce_axes(ctx: Context, node: Node) -> list[int] | None:
    """Sorted non-batch axes of a ReduceMean / ReduceSum (attribute or constant input); None
    for a no-op (empty axes with ``noop_with_empty_axes``)."""
    rank = ctx.rank(node.inputs[0])
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        if not ctx.graph.is_const(node.inputs[1]):
            raise UnsupportedModelError(f"{node.describe(ctx.graph)}: {node.op_type} with axes computed at run time")
        axes = ctx.graph.constants[node.inputs[1]].reshape(-1).tolist()
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    axes = sorted({int(a) % rank for a in axes})
    if 0 in axes:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: {node.op_type} over the batch axis cannot be explained per image")
    return axes


@register("ReduceMean")
def backward_reduce_mean(ctx: Context, node: Node, relevance_out: list) -> list:
    axes = _reduce_axes(ctx, node)
    if axes is None:
        return [relevance_out[0]]
    return [_mean_backward(ctx, node, relevance_out[0], axes, bool(node.attrs.get("keepdims", 1)))]


@register("ReduceSum")
def backward_reduce_sum(ctx: Context, node: Node, relevance_out: list) -> list:
    """``norm`` over the summed elements (SPEC section 7): ``R_in = x * broadcast(R / stab(sum))``."""
    axes = _reduce_axes(ctx, node)
    unused = [None] * (len(node.inputs) - 1)
    if axes is None:
        return [relevance_out[0]] + unused
    return [_mean_backward(ctx, node, relevance_out[0], axes, bool(node.attrs.get("keepdims", 1)), mean=False)] + unused
