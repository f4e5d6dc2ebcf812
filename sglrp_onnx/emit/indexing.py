"""Backward builders of Gather with constant indices and of Slice with steps other than 1.

SPEC section 7: relevance goes back to the gathered / sliced positions and the positions left
out get 0 (the class token ``x[:, 0]``, Swin's patch merging ``x[:, 0::2, 1::2, :]``, LeViT's
subsampling). Both are one-hot selections along an axis, so their backward is the transposed
selection matrix applied as a MatMul (:mod:`.axis_maps`); this needs the static size of the
indexed axis, and an index picked twice gets the relevance of both picks.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node

from .axis_maps import apply_transpose_along, selection_matrix
from .builder import Context
from .registry import register


def _static_axis_size(ctx: Context, node: Node, tensor: str, axis: int) -> int:
    shape = ctx.graph.shape(tensor)
    size = None if shape is None else shape[axis]
    if size is None:
        raise UnsupportedModelError(
            f"{node.describe(ctx.graph)}: {node.op_type} on axis {axis} needs a static size of that axis "
            "(it is only known at run time)"
        )
    return int(size)


@register("Gather")
def backward_gather(ctx: Context, node: Node, relevance_out: list) -> list:
    """Relevance of each gathered element goes back to its source position; 0 elsewhere."""
    data, indices = node.inputs[0], node.inputs[1]
    if not ctx.graph.is_const(indices):
        return [_runtime_index_gather(ctx, node, relevance_out[0]), None]
    rank = ctx.rank(data)
    axis = int(node.attrs.get("axis", 0)) % rank
    if axis == 0 and ctx.passes > 1:  # one pass: axis 0 may hold other things (torch's stacked q, k, v)
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Gather along the batch axis is not supported")
    size = _static_axis_size(ctx, node, data, axis)
    index = np.asarray(ctx.graph.constants[indices]).astype(np.int64)
    if ((index < -size) | (index >= size)).any():
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Gather index out of range for axis {axis} of size {size}")
    relevance = _index_dims_to_one_axis(ctx, node, relevance_out[0], index, data, axis)
    mapped = apply_transpose_along(ctx, relevance, axis, rank, selection_matrix(index.reshape(-1) % size, size))
    return [mapped, None]


def _runtime_index_gather(ctx: Context, node: Node, relevance: str) -> str:
    """Gather from a flat tensor with indices computed from shapes at run time: the dynamo
    exporter's ``as_strided`` (a flatten of ``[N, C, 1, 1]`` as ``Gather(Reshape(x, [-1]),
    Range(N) * C + ...)``). Relevance is added back at the gathered positions with
    ScatterElements (``reduction="add"``, so that a position picked twice gets both)."""
    data, indices = node.inputs[0], node.inputs[1]
    if ctx.rank(data) != 1 or indices in ctx.producers:
        raise UnsupportedModelError(
            f"{node.describe(ctx.graph)}: Gather with indices computed at run time is supported from a flat tensor "
            "with indices computed from shapes only"
        )
    if ctx.graph.opset < 16:  # ScatterElements' reduction
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Gather with indices computed at run time needs opset 16 or newer")
    if ctx.target_runtime == "tensorrt":
        raise UnsupportedModelError(
            f"{node.describe(ctx.graph)}: Gather with indices computed at run time needs a scatter with reduction 'add', "
            "which TensorRT refuses; convert with target runtime onnxruntime"
        )
    em = ctx.em
    flat = em.const(np.array([-1], np.int64))
    index = em.op("Reshape", [em.op("Cast", [indices], "index", to=7), flat], "index")  # INT64
    size = em.op("Shape", [ctx.fwd(data)], "size")
    wrapped = em.op("Where", [em.op("Less", [index, em.const(np.int64(0))], "negative"), em.op("Add", [index, size]), index], "index")
    zeros = em.op("ConstantOfShape", [size], "zeros")
    updates = em.op("Reshape", [relevance, flat], "r")
    return em.op("ScatterElements", [zeros, wrapped, updates], "r", axis=0, reduction="add")


@register("GatherND")
def backward_gather_nd(ctx: Context, node: Node, relevance_out: list) -> list:
    """GatherND (the dynamo exporter's adaptive pooling to a size that is no factor of the input):
    relevance is added back at the gathered positions with ScatterND (``reduction="add"``)."""
    data, indices = node.inputs[0], node.inputs[1]
    if int(node.attrs.get("batch_dims", 0)) != 0:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: GatherND with batch_dims > 0 is not supported")
    if indices in ctx.producers:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: GatherND with indices computed from the image is not supported")
    if ctx.graph.opset < 16:  # ScatterND's reduction
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: GatherND needs opset 16 or newer")
    em = ctx.em
    reduction = "add"
    if ctx.graph.is_const(indices):
        values = np.asarray(ctx.graph.constants[indices]).astype(np.int64)
        index = em.const(values, "index")
        if ctx.target_runtime == "tensorrt" and _distinct_targets(ctx, data, values):
            reduction = "none"  # every position is written once: nothing to add up
    else:
        index = em.op("Cast", [indices], "index", to=7)  # INT64
    if reduction == "add" and ctx.target_runtime == "tensorrt":
        raise UnsupportedModelError(
            f"{node.describe(ctx.graph)}: GatherND picking a position twice (or with indices computed at run time) needs "
            "a scatter with reduction 'add', which TensorRT refuses; convert with target runtime onnxruntime"
        )
    zeros = em.op("ConstantOfShape", [em.op("Shape", [ctx.fwd(data)], "shape")], "zeros")
    return [em.op("ScatterND", [zeros, index, relevance_out[0]], "r", reduction=reduction), None]


def _distinct_targets(ctx: Context, data: str, index: np.ndarray) -> bool:
    """Whether constant GatherND indices address every element at most once (indices that
    address whole slices or wrap around count once they are resolved against the static shape)."""
    shape = ctx.graph.shape(data)
    depth = index.shape[-1]
    if shape is None or any(d is None for d in shape[:depth]):
        return False
    dims = np.array(shape[:depth], np.int64)
    resolved = np.where(index < 0, index + dims, index).reshape(-1, depth)
    return len({tuple(row) for row in resolved.tolist()}) == len(resolved)


def _index_dims_to_one_axis(ctx: Context, node: Node, relevance: str, index: np.ndarray, data: str, axis: int) -> str:
    """Gather's output holds ``index.ndim`` axes in place of ``axis``: make that exactly one."""
    em = ctx.em
    if index.ndim == 1:
        return relevance
    if index.ndim == 0:  # a scalar index drops the axis
        return em.op("Unsqueeze", [relevance, em.const(np.array([axis], np.int64))], "r")
    shape = ctx.graph.shape(data)
    if shape is None or any(d is None for d in shape[1:]):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Gather with {index.ndim}-D indices needs static input dims")
    target = [-1, *shape[1:]]
    target[axis] = index.size
    return em.op("Reshape", [relevance, em.const(np.array(target, np.int64))], "r")


def slice_positions(start: int, end: int, step: int, size: int) -> list[int]:
    """Input positions an ONNX Slice keeps on one axis, in output order (negative steps too).

    ONNX clamps starts/ends as Python's slice does: negative values count from the end, and an
    end of ``INT64_MIN`` with a negative step runs to the first element.
    """
    if step == 0:
        raise ValueError("step 0")
    return list(range(size))[slice(start, end, step)]


def strided_slice_backward(ctx: Context, node: Node, relevance: str, axes: list[int], starts: list[int] | None,
                           ends: list[int] | None, steps: list[int]) -> str:
    """Backward of a Slice with any steps: a selection matrix per sliced axis."""
    if starts is None or ends is None:
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Slice with steps other than 1 needs constant starts and ends")
    x, y = node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    out_shape = ctx.graph.shape(y)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Slice with step 0")
        size = _static_axis_size(ctx, node, x, axis)
        positions = slice_positions(start, end, step, size)
        if out_shape is not None and out_shape[axis] is not None and out_shape[axis] != len(positions):
            raise UnsupportedModelError(
                f"{node.describe(ctx.graph)}: Slice keeps {len(positions)} elements on axis {axis}, "
                f"but its output has {out_shape[axis]}"
            )
        if len(positions) == 0:
            raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Slice keeps no element on axis {axis}")
        if positions != list(range(size)):
            relevance = apply_transpose_along(ctx, relevance, axis, rank, selection_matrix(positions, size))
    return relevance
