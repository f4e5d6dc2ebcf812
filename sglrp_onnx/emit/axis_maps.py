"""Linear maps along one axis of a tensor, as MatMuls: the transposes of Gather, strided Slice
and Resize.

Each of these ops acts on one axis at a time through a constant matrix ``M`` (``[out, in]``):
Gather and Slice pick rows of the identity, Resize interpolates. Their backward is ``M^T``
applied along the same axis. A MatMul by a constant runs on every runtime and provider (no
ScatterElements reductions, which TensorRT supports only partly: SPEC section 1), and a one-hot
row copies a value exactly.
"""

from __future__ import annotations

import numpy as np

from .builder import Context


def selection_matrix(positions: list[int] | np.ndarray, size: int) -> np.ndarray:
    """``[len(positions), size]`` one-hot rows: row ``i`` picks input position ``positions[i]``
    (a position picked twice gets the relevance of both picks)."""
    matrix = np.zeros((len(positions), size), np.float32)
    matrix[np.arange(len(positions)), np.asarray(positions, np.int64)] = 1.0
    return matrix


def apply_transpose_along(ctx: Context, tensor: str, axis: int, rank: int, matrix: np.ndarray | str) -> str:
    """``result[..., j, ...] = sum_i tensor[..., i, ...] * matrix[i, j]`` along ``axis``.

    ``matrix`` is the forward map ``[out, in]`` (a numpy array, or the name of a tensor computed
    in the graph), so this is ``M^T`` applied to a tensor shaped like the op's output; the last two
    axes need no Transpose of the data (MatMul broadcasts the leading ones).
    """
    em = ctx.em
    forward_map = em.const(matrix, "axis_map") if isinstance(matrix, np.ndarray) else matrix
    if axis == rank - 1:
        return em.op("MatMul", [tensor, forward_map], "mapped")
    if axis == rank - 2:
        if isinstance(matrix, np.ndarray):
            transposed = em.const(np.ascontiguousarray(matrix.T), "axis_map_t")
        else:
            transposed = em.op("Transpose", [matrix], "axis_map_t", perm=[1, 0])
        return em.op("MatMul", [transposed, tensor], "mapped")
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = em.op("Transpose", [tensor], "moved", perm=perm)
    mapped = em.op("MatMul", [moved, forward_map], "mapped")
    return em.op("Transpose", [mapped], "mapped", perm=[int(i) for i in np.argsort(perm)])
