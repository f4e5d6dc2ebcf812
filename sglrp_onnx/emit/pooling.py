"""Backward builders of pooling layers.

- MaxPool: winner-take-all, the gradient of max pooling (first maximum in scan order on ties).
  Two forms giving the same relevance: MaxPool's ``Indices`` with
  ``ScatterElements(reduction="add")`` (the default: fastest on ONNX Runtime's CPU provider), and
  for target runtime ``tensorrt`` first-maximum masks of strided slices put back by Pad, Sum and
  DepthToSpace (TensorRT parses it; CUDA gives the same bits every run: no atomics).
- AveragePool, GlobalAveragePool, ReduceMean: the ``norm`` rule,
  ``R_in = a * f^T(R / stab(f(a)))``, with ``f^T`` built from ONNX Runtime's own pooling
  divisors (so ``count_include_pad`` and ``ceil_mode`` agree with the forward by construction).
"""

from __future__ import annotations

import numpy as np
import onnx

from sglrp_onnx.canonicalize import resolve_conv_pads
from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node

from .builder import ONE, Context
from .linear import conv_transpose, fit_spatial
from .registry import register


def _is_pass(ctx: Context, node: Node) -> bool:
    rule = ctx.rules.get(node.name)
    return rule is not None and rule.name == "pass"


@register("MaxPool")
def backward_maxpool(ctx: Context, node: Node, relevance_out: list) -> list:
    """Winner-take-all: each window's relevance goes to its maximum (the first one in scan
    order on ties, as ONNX Runtime's ``Indices``)."""
    if node.attrs.get("storage_order", 0):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: MaxPool with storage_order=1 is not supported")
    if ctx.target_runtime != "tensorrt":
        return [_maxpool_backward_scatter(ctx, node, relevance_out[0])]
    if _static_pads(ctx, node) is None:
        raise UnsupportedModelError(
            f"{node.describe(ctx.graph)}: MaxPool with auto_pad on a dynamic spatial size has no TensorRT form "
            "(export with a fixed input size, or convert with target runtime onnxruntime)"
        )
    return [_maxpool_backward_masked(ctx, node, relevance_out[0])]


def _maxpool_backward_scatter(ctx: Context, node: Node, relevance: str) -> str:
    """Pooling recomputed with its ``Indices`` output (flattened over the whole tensor, so the
    two halves of a ``scaled`` batch index apart by themselves); relevance scattered back with
    ``ScatterElements(reduction="add")`` so that overlapping windows add up."""
    em = ctx.em
    x = ctx.fwd(node.inputs[0])
    attrs = {k: v for k, v in node.attrs.items() if k in ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")}
    _, indices = em.op("MaxPool", [x], "pool", outputs=2, **attrs)
    flat_relevance = em.op("Reshape", [relevance, em.const([-1])], "flat")
    flat_indices = em.op("Reshape", [indices, em.const([-1])], "flat")
    size = em.op("Reshape", [em.op("Size", [x]), em.const([1])], "size")
    zeros = em.op("ConstantOfShape", [size], "zeros")
    scattered = em.op("ScatterElements", [zeros, flat_indices, flat_relevance], "scatter", axis=0, reduction="add")
    return em.op("Reshape", [scattered, ctx.shape_tensor(node.inputs[0])], "r")


def _static_pads(ctx: Context, node: Node) -> list[int] | None:
    """Explicit pads of a pooling node, or None where ``auto_pad`` needs the runtime size."""
    kernel = list(node.attrs["kernel_shape"])
    rank = len(kernel)
    try:
        return resolve_conv_pads(ctx.graph, node, rank, kernel, list(node.attrs.get("strides", [1] * rank)),
                                 list(node.attrs.get("dilations", [1] * rank)))
    except UnsupportedModelError:
        return None


def _maxpool_backward_masked(ctx: Context, node: Node, relevance: str) -> str:
    """MaxPool backward without ``Indices`` and without scatter reductions (SPEC section 8).

    For each kernel tap (scan order), a strided Slice of the input padded with -inf gives the
    value that tap sees in every window, and ``Equal`` with the pooled output says where it is a
    maximum. The tap takes the window's relevance that is still unclaimed there, so a
    window's relevance goes to its first maximum, as with ONNX Runtime's ``Indices``. The taps'
    shares are then put back at their input positions (:func:`_place_taps`).
    """
    em = ctx.em
    kernel = list(node.attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    pads = _static_pads(ctx, node)
    x, y = node.inputs[0], node.outputs[0]
    # ceil_mode: the last window may reach up to stride - 1 beyond the end padding; ONNX Runtime
    # ignores what lies there, and so does -inf.
    extra = [st - 1 for st in strides] if node.attrs.get("ceil_mode", 0) else [0] * rank
    pad_spec = np.array([0, 0, *pads[:rank], 0, 0, *[p + e for p, e in zip(pads[rank:], extra)]], np.int64)
    padded = em.op("Pad", [ctx.fwd(x), em.const(pad_spec), em.const(np.array(-np.inf, np.float32))], "padded", mode="constant")
    pooled = ctx.fwd(y)
    # With ceil_mode, ONNX shape inference counts a last window that starts in the end padding
    # and ONNX Runtime does not: the runtime size of the pooled tensor is the one to follow.
    out_size = None if node.attrs.get("ceil_mode", 0) else _spatial_static(ctx, y)
    axes = em.const(np.arange(2, 2 + rank, dtype=np.int64))
    step = em.const(np.array(strides, np.int64))
    unclaimed, shares = relevance, []
    taps = list(np.ndindex(*kernel))
    for index, tap in enumerate(taps):
        offset = np.array([t * d for t, d in zip(tap, dilations)], np.int64)
        if out_size is not None:
            ends = em.const(offset + (np.array(out_size, np.int64) - 1) * np.array(strides, np.int64) + 1)
        else:
            last = em.op("Mul", [em.op("Sub", [ctx.spatial_size(y), em.const(np.ones(rank, np.int64))]), step], "last")
            ends = em.op("Add", [last, em.const(offset + 1)], "ends")
        seen = em.op("Slice", [padded, em.const(offset), ends, axes, step], "tap")
        hit = em.op("Cast", [em.op("Equal", [seen, pooled], "hit")], "hit", to=onnx.TensorProto.FLOAT)
        share = em.op("Mul", [hit, unclaimed], "share")  # Mul of same shapes: far faster than Where here
        shares.append((offset, share))
        if index + 1 < len(taps):
            unclaimed = em.op("Sub", [unclaimed, share], "unclaimed")
    return _place_taps(ctx, node, shares, strides, pads, out_size)


def _place_taps(ctx: Context, node: Node, shares: list, strides: list[int], pads: list[int], out_size: list[int] | None) -> str:
    """Sum of the taps' shares at their input positions: share ``t`` (output grid) lands at
    ``offset_t + stride * i`` of the padded input, then the padding is cut off.

    The taps of one phase (``offset mod stride``) are shifted on the output grid by
    ``offset // stride`` (Pad) and summed; the phases are then interleaved to the input's
    resolution: by one DepthToSpace for 2-D pooling with equal strides (every CNN's MaxPool2d),
    else each phase spread with zeros (Unsqueeze, Pad, Reshape) and summed.
    """
    em = ctx.em
    x, y = node.inputs[0], node.outputs[0]
    rank = len(strides)
    shift_max = [max(int(offset[i]) // strides[i] for offset, _ in shares) for i in range(rank)]
    phases: dict[tuple, list[str]] = {}
    for offset, share in shares:
        shift = [int(o) // st for o, st in zip(offset, strides)]
        if any(shift_max):
            spec = [0, 0, *shift, 0, 0, *[m - s for m, s in zip(shift_max, shift)]]
            share = em.op("Pad", [share, em.const(np.array(spec, np.int64))], "shifted")
        phases.setdefault(tuple(int(o) % st for o, st in zip(offset, strides)), []).append(share)
    totals = {phase: ctx.add_all(parts, "phase") for phase, parts in phases.items()}
    grid_size = _grid_size(ctx, y, out_size, shift_max)
    if all(st == 1 for st in strides):
        grid = totals[(0,) * rank]
    elif rank == 2 and strides[0] == strides[1]:
        grid = _depth_to_space(ctx, totals, strides[0], grid_size)
    else:
        grid = ctx.add_all([_spread_phase(ctx, total, phase, strides, grid_size) for phase, total in totals.items()], "placed")
    return _cut_padding(ctx, grid, x, pads[:rank])


def _depth_to_space(ctx: Context, totals: dict, stride: int, grid_size) -> str:
    """Interleave the ``stride * stride`` phase grids of a 2-D pooling (CRD order: channel
    ``c * S * S + a * S + b`` goes to row offset ``a``, column offset ``b``)."""
    em = ctx.em
    some = next(iter(totals.values()))
    empty = None
    stacked = []
    for phase in np.ndindex(stride, stride):
        total = totals.get(phase)
        if total is None:  # no tap lands on this phase (kernel smaller than the stride)
            empty = empty or em.op("ConstantOfShape", [em.op("Shape", [some])], "empty")
            total = empty
        stacked.append(em.op("Unsqueeze", [total, em.const([2])], "phase"))
    grouped = em.op("Concat", stacked, "phases", axis=2)
    grouped = em.op("Reshape", [grouped, _merged_phases_shape(ctx, grid_size)], "phases")
    return em.op("DepthToSpace", [grouped], "placed", blocksize=stride, mode="CRD")


def _spread_phase(ctx: Context, total: str, phase: tuple, strides: list[int], grid_size) -> str:
    """A phase grid at the input's resolution: element ``i`` to ``stride * i + phase``, zeros
    between (any rank and strides)."""
    em = ctx.em
    rank = len(strides)
    unit_axes = [3 + 2 * i for i in range(rank)]
    spread = em.op("Unsqueeze", [total, em.const(np.array(unit_axes, np.int64))], "spread")
    begin = [0, 0] + [v for a in phase for v in (0, a)]
    end = [0, 0] + [v for a, st in zip(phase, strides) for v in (0, st - 1 - a)]
    spread = em.op("Pad", [spread, em.const(np.array(begin + end, np.int64))], "spread")
    if isinstance(grid_size, list):
        sizes = em.const(np.array([0, 0, *[g * st for g, st in zip(grid_size, strides)]], np.int64))
    else:
        scaled = em.op("Mul", [grid_size, em.const(np.array(strides, np.int64))], "size")
        sizes = em.op("Concat", [em.const([0, 0]), scaled], "shape", axis=0)
    return em.op("Reshape", [spread, sizes], "spread")


def _grid_size(ctx: Context, y: str, out_size: list[int] | None, shift_max: list[int]):
    """Spatial size of the phase grids: the output's plus the largest shift (static or runtime)."""
    if out_size is not None:
        return [o + m for o, m in zip(out_size, shift_max)]
    return ctx.em.op("Add", [ctx.spatial_size(y), ctx.em.const(np.array(shift_max, np.int64))], "grid")


def _merged_phases_shape(ctx: Context, spatial) -> str:
    """``[N, C * phases, *spatial]`` for Reshape (``spatial`` a list or a runtime tensor)."""
    em = ctx.em
    if isinstance(spatial, list):
        return em.const(np.array([0, -1, *spatial], np.int64))
    return em.op("Concat", [em.const([0, -1]), spatial], "shape", axis=0)


def _cut_padding(ctx: Context, grid: str, x: str, begin: list[int]) -> str:
    """The input's window ``[begin, begin + size)`` of a tensor in padded coordinates (zeros
    where the grid ends before it: input rows no window reads)."""
    em = ctx.em
    rank = len(begin)
    axes = em.const(np.arange(2, 2 + rank, dtype=np.int64))
    start = em.const(np.array(begin, np.int64))
    in_size = _spatial_static(ctx, x)
    if in_size is None:
        ends = em.op("Add", [start, ctx.spatial_size(x)], "ends")
    else:
        ends = em.const(np.array([b + n for b, n in zip(begin, in_size)], np.int64))
    cut = em.op("Slice", [grid, start, ends, axes], "r")
    return fit_spatial(ctx, cut, x, rank)


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
