"""Backward builder of Resize (nearest and linear interpolation; Upsample of opset < 10 arrives
here as Resize, written by ONNX's version converter).

Nearest and linear Resize are linear maps with weights >= 0, separable over the axes:
``y = M_1 ... M_r x`` with one interpolation matrix ``M_a`` (``[out, in]``) per resized axis.
SPEC section 7 gives them the ``norm`` rule over that map, as for average pooling (Zennit's
``Norm``): ``R_in = x * f^T(R / stab(f(x)))``, with ``f(x)`` the forward's own output.

Each ``M_a`` is computed by the runtime itself: the relevance part resizes an identity basis
(``[1, 1, in, in]``) with the node's own attributes and the axis' scale (1 on the other axes,
which ONNX Runtime maps one to one), a constant subgraph the runtime folds once. Computing the
matrices in numpy instead would have to reproduce each runtime's float32 rounding of the source
coordinates: where a coordinate falls on a rounding tie (``half_pixel_symmetric``,
``tf_crop_and_resize``, scales such as 4/7), ONNX Runtime's CPU kernel and a numpy port were
measured to pick different pixels. This way the transpose matches the forward on any runtime.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node

from .axis_maps import apply_transpose_along
from .builder import Context
from .registry import register

#: Attributes of the forward's Resize that the basis Resize copies (``axes`` is not: the basis
#: names every axis).
INTERPOLATION_ATTRIBUTES = ("mode", "coordinate_transformation_mode", "nearest_mode", "extrapolation_value", "antialias")


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _const_floats(ctx: Context, node: Node, index: int) -> np.ndarray | None:
    name = node.inputs[index] if len(node.inputs) > index else ""
    if not name:
        return None
    if not ctx.graph.is_const(name):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Resize whose roi / scales / sizes are computed at run time")
    value = np.asarray(ctx.graph.constants[name]).reshape(-1)
    return value if value.size else None


def _runtime_input(ctx: Context, node: Node, index: int) -> bool:
    name = node.inputs[index] if len(node.inputs) > index else ""
    return bool(name) and not ctx.graph.is_const(name)


def _static_sizes(ctx: Context, node: Node, out_shape) -> np.ndarray:
    """Sizes computed at run time (``F.interpolate(x, size=...)`` writes ``[N, C, h, w]`` with ``N``
    read off ``Shape(x)``): the output's static shape gives them; the batch entry, which may be
    dynamic, is never a resized axis."""
    if node.attrs.get("axes") is not None or out_shape is None or any(d is None for d in out_shape[1:]):
        raise UnsupportedModelError(f"{node.describe(ctx.graph)}: Resize whose sizes are computed at run time needs a static output shape")
    in_batch = ctx.graph.shape(node.inputs[0])[0]
    return np.array([in_batch if in_batch is not None else 1, *out_shape[1:]], np.float64)


def _per_axis(values: np.ndarray, axes: list[int], rank: int, fill: float) -> np.ndarray:
    full = np.full(rank, fill, np.float64)
    full[axes] = values
    return full


class Geometry:
    """What one Resize does on each axis: input and output sizes, the scale ONNX Runtime uses
    (given, or output / input size in float32 when sizes are given), and the roi."""

    def __init__(self, ctx: Context, node: Node):
        where = node.describe(ctx.graph)
        in_shape, out_shape = ctx.graph.shape(node.inputs[0]), ctx.graph.shape(node.outputs[0])
        if in_shape is None:
            raise UnsupportedModelError(f"{where}: Resize needs the rank of its input")
        rank = len(in_shape)
        axes = [int(a) % rank for a in node.attrs.get("axes", range(rank))]
        roi, scales = _const_floats(ctx, node, 1), _const_floats(ctx, node, 2)
        sizes = _static_sizes(ctx, node, out_shape) if _runtime_input(ctx, node, 3) else _const_floats(ctx, node, 3)
        self.by_sizes = sizes is not None
        self.in_sizes = list(in_shape)
        self.out_sizes = list(out_shape) if out_shape is not None else [None] * rank
        if self.by_sizes:
            policy = _text(node.attrs.get("keep_aspect_ratio_policy"), "stretch")
            if policy != "stretch":
                raise UnsupportedModelError(f"{where}: Resize with keep_aspect_ratio_policy={policy} is not supported")
            wanted = _per_axis(sizes.astype(np.float64), axes, rank, np.nan)
            self.out_sizes = [o if np.isnan(w) else int(w) for o, w in zip(self.out_sizes, wanted)]
            self.scales = [1.0 if i is None or o is None or i == o else float(np.float32(o) / np.float32(i))
                           for i, o in zip(self.in_sizes, self.out_sizes)]
        elif scales is not None:
            self.scales = [float(np.float32(s)) for s in _per_axis(scales, axes, rank, 1.0)]
        else:
            raise UnsupportedModelError(f"{where}: Resize without scales or sizes")
        self.roi = (_per_axis(roi[:len(axes)], axes, rank, 0.0), _per_axis(roi[len(axes):], axes, rank, 1.0)) if roi is not None else None

    def resized_axes(self, where: str) -> list[int]:
        """Axes the node changes (scale != 1), each with static sizes."""
        axes = [axis for axis, scale in enumerate(self.scales) if scale != 1.0]
        for axis in axes:
            if axis == 0:
                raise UnsupportedModelError(f"{where}: Resize along the batch axis cannot be explained per image")
            if self.in_sizes[axis] is None or self.out_sizes[axis] is None:
                raise UnsupportedModelError(f"{where}: Resize needs static sizes on the resized axis {axis} (dynamic sizes are not supported)")
        return axes


def interpolation_matrix(ctx: Context, node: Node, geometry: Geometry, axis: int) -> str:
    """``M`` (``[out, in]``) of one axis, from the runtime's own Resize of an identity basis."""
    em = ctx.em
    size_in, size_out = int(geometry.in_sizes[axis]), int(geometry.out_sizes[axis])
    basis = em.const(np.eye(size_in, dtype=np.float32).reshape(1, 1, size_in, size_in), "basis")
    roi = ""
    if geometry.roi is not None:
        roi = em.const(np.array([0, 0, geometry.roi[0][axis], 0, 1, 1, geometry.roi[1][axis], 1], np.float32), "roi")
    if geometry.by_sizes:
        inputs = [basis, roi, "", em.const(np.array([1, 1, size_out, size_in], np.int64), "sizes")]
    else:
        inputs = [basis, roi, em.const(np.array([1, 1, geometry.scales[axis], 1], np.float32), "scales")]
    attrs = {k: v for k, v in node.attrs.items() if k in INTERPOLATION_ATTRIBUTES}
    resized = em.op("Resize", inputs, "interp", **attrs)
    return em.op("Reshape", [resized, em.const(np.array([size_out, size_in], np.int64))], "interp")


@register("Resize")
def backward_resize(ctx: Context, node: Node, relevance_out: list) -> list:
    """``norm`` over the interpolation map: ``R_in = x * M^T (R / stab(y))`` axis by axis."""
    x = node.inputs[0]
    where = node.describe(ctx.graph)
    mode = _text(node.attrs.get("mode"), "nearest")
    if mode not in ("nearest", "linear"):
        raise UnsupportedModelError(f"{where}: Resize mode '{mode}' is not supported (nearest and linear are; cubic weights can be negative)")
    if _text(node.attrs.get("coordinate_transformation_mode"), "half_pixel") == "tf_crop_and_resize" \
            and float(node.attrs.get("extrapolation_value", 0.0)) != 0.0:
        raise UnsupportedModelError(f"{where}: tf_crop_and_resize with a nonzero extrapolation_value is not linear in the input")
    geometry = Geometry(ctx, node)
    rank = len(geometry.in_sizes)
    em = ctx.em
    s = ctx.quotient(relevance_out[0], node)
    for axis in geometry.resized_axes(where):
        s = apply_transpose_along(ctx, s, axis, rank, interpolation_matrix(ctx, node, geometry, axis))
    return [em.op("Mul", [ctx.fwd(x), s], "r")] + [None] * (len(node.inputs) - 1)
