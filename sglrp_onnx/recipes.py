"""Weights of the relevance part as recipes over the model's own constant tensors.

A rule's modified weights (``W+``, ``W-``, ``W + gamma W+``, ``W * W``), the kernels that the
transposes use as Conv weights (flipped, group-transposed) and a canonical weight with
a BatchNormalization folded in are all functions of the model's initializers. Stored as new
initializers, they made the converted file 2.8x the original (ResNet-50), 3x for VGG-16. A
:class:`Recipe` records instead how such a tensor derives from a named constant tensor of the
forward model. :meth:`sglrp_onnx.emit.builder.Emitter.weight` writes it as a few ONNX nodes that
read that constant (``Relu(W)``, ``Mul(W, factor)``, ``Slice`` with step -1, ``Transpose``,
``Gather``), which ONNX Runtime's constant folding evaluates once when a session is created, or,
where the runtime needs weights as initializers (TensorRT, SPEC section 8), evaluates the same
recipe with numpy and stores the result.

Each recipe has a structural ``key`` (its op, parameters and its parents' keys), so that the same
tensor needed twice (``W+`` of the modified forward and of its transpose, a weight shared by two
layers) is emitted once.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx

#: ``ends`` of a Slice with step -1 that runs to the beginning of the axis (ONNX clamps it to -1).
TO_START = np.iinfo(np.int64).min


class Recipe:
    """A float tensor computed from the forward model's constants by a few ONNX operators.

    ``evaluate(*parent_values)`` computes it with numpy (float64), ``emit(emitter, *parent_names)``
    writes the ONNX nodes and returns the output name (float32).
    """

    __slots__ = ("op", "key", "shape", "parents", "attrs", "_evaluate", "_emit")

    def __init__(self, op: str, key: tuple, shape, parents: tuple, evaluate: Callable, emit: Callable, **attrs: Any):
        self.op = op
        self.key = key
        self.shape = tuple(int(d) for d in shape)
        self.parents = parents
        self.attrs = attrs
        self._evaluate = evaluate
        self._emit = emit

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def value(self) -> np.ndarray:
        """The tensor as a float64 numpy array (computed on each call, nothing is cached, so that
        materialised weights are held one at a time)."""
        return self._evaluate(*[parent.value() for parent in self.parents])

    def emit(self, emitter, parent_names: list[str]) -> str:
        """Write the ONNX nodes of this step (the parents are already written)."""
        return self._emit(emitter, *parent_names)

    def __repr__(self) -> str:
        return f"Recipe({self.op}, shape={list(self.shape)})"


def source(name: str, array: np.ndarray) -> Recipe:
    """The constant tensor ``name`` of the forward model (``array``: its value, not copied)."""

    def emit(em) -> str:
        if name not in em.shared:  # not readable as a constant in the converted model: store a copy
            return em.const(array, "w")
        if array.dtype == np.float32:
            return name
        return em.op("Cast", [name], "w32", to=onnx.TensorProto.FLOAT)

    return Recipe("source", ("source", name), array.shape, (), lambda: np.asarray(array, np.float64), emit, name=name)


def constant(array: np.ndarray) -> Recipe:
    """A literal array the engine made (an averaging kernel), stored as an initializer as it is."""
    array = np.asarray(array)
    key = ("constant", array.shape, array.tobytes()) if array.size <= 1 << 16 else ("constant", id(array))
    return Recipe("constant", key, array.shape, (), lambda: np.asarray(array, np.float64), lambda em: em.const(array, "k"))


def scaled(recipe: Recipe, factor: np.ndarray) -> Recipe:
    """``recipe * factor`` with a small ``factor`` broadcast against it (a per-channel scale of a
    folded BatchNormalization / Mul / Div, Gemm's alpha); consecutive scales merge into one."""
    factor = np.asarray(factor, np.float64)
    if recipe.op == "scale":
        factor = recipe.attrs["factor"] * factor
        recipe = recipe.parents[0]
    if np.broadcast_shapes(factor.shape, recipe.shape) != recipe.shape:
        raise ValueError(f"scale of shape {factor.shape} does not broadcast to the weight's {recipe.shape}")
    key = ("scale", recipe.key, factor.shape, factor.tobytes())
    return Recipe("scale", key, recipe.shape, (recipe,), lambda w: w * factor,
                  lambda em, w: em.op("Mul", [w, em.const(factor, "factor")], "w"), factor=factor)


def transposed(recipe: Recipe, perm: tuple[int, ...]) -> Recipe:
    """``recipe`` with its axes permuted; two permutations in a row compose into one (or none)."""
    perm = tuple(perm)
    if recipe.op == "transpose":
        inner = recipe.attrs["perm"]
        perm = tuple(inner[p] for p in perm)
        recipe = recipe.parents[0]
    if perm == tuple(range(recipe.ndim)):
        return recipe
    shape = [recipe.shape[p] for p in perm]
    return Recipe("transpose", ("transpose", recipe.key, perm), shape, (recipe,), lambda w: np.transpose(w, perm),
                  lambda em, w: em.op("Transpose", [w], "w", perm=list(perm)), perm=perm)


def modified(recipe: Recipe, modifier, gamma: float) -> Recipe:
    """A rule's parameter modifier (:class:`sglrp_onnx.rules.Modifier`) applied to ``recipe``."""
    if modifier.name == "keep":
        return recipe
    key = ("modify", modifier.name, float(gamma) if modifier.uses_gamma else None, recipe.key)
    shape = recipe.shape
    return Recipe("modify", key, shape, (recipe,), lambda w: modifier(w, gamma),
                  lambda em, w: modifier.emit(em, w, gamma, shape))


def flipped(recipe: Recipe) -> Recipe:
    """The kernel reversed along its spatial axes (2..), by a Slice with step -1 (axes of size 1 kept)."""
    axes = [axis for axis in range(2, recipe.ndim) if recipe.shape[axis] > 1]
    if not axes:
        return recipe
    index = tuple(slice(None, None, -1) if axis in axes else slice(None) for axis in range(recipe.ndim))
    count = len(axes)

    def emit(em, w) -> str:
        return em.op("Slice", [w, em.const([-1] * count), em.const([TO_START] * count), em.const(axes), em.const([-1] * count)], "w")

    return Recipe("flip", ("flip", recipe.key), recipe.shape, (recipe,), lambda w: np.ascontiguousarray(w[index]), emit)


def reshaped(recipe: Recipe, shape) -> Recipe:
    """``recipe`` reshaped (same element order)."""
    shape = tuple(int(d) for d in shape)
    if shape == recipe.shape:
        return recipe
    if recipe.op == "reshape":
        recipe = recipe.parents[0]
    return Recipe("reshape", ("reshape", recipe.key, shape), shape, (recipe,), lambda w: w.reshape(shape),
                  lambda em, w: em.op("Reshape", [w, em.const(np.array(shape, np.int64))], "w"))


def group_transposed(recipe: Recipe, group: int, flip: bool = True) -> Recipe:
    """Kernel of the transposed convolution for a plain Conv: ``[C_out, C_in/g, *k]`` becomes
    ``[C_in, C_out/g, *k]`` with the groups kept apart, spatially flipped when ``flip``."""
    out_channels, in_per_group, *kernel = recipe.shape
    per_group = out_channels // group
    if flip:
        recipe = flipped(recipe)
    target = (group * in_per_group, per_group, *kernel)
    if per_group == 1 or in_per_group == 1:
        return reshaped(recipe, target)  # swapping an axis of size 1 keeps the element order
    if group == 1:
        return transposed(recipe, (1, 0, *range(2, recipe.ndim)))
    split = reshaped(recipe, (group, per_group, in_per_group, *kernel))
    swapped = transposed(split, (0, 2, 1, *range(3, split.ndim)))
    return reshaped(swapped, target)
