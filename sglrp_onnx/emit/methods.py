"""The initial relevance at the logits (SPEC section 3) and the final contrast combination.

- ``lrp``: ``z_t`` at the explained class t (Bach et al. 2015).
- ``clrp``: target ``z_t`` at t, dual ``z_t / (K-1)`` at every other class (Gu, Yang and Tresp,
  "Understanding individual decisions of CNNs via contrastive backpropagation", ACCV 2018).
- ``sglrp``: the gradient of the softmax probability ``y_t`` with respect to the logits:
  ``y_t (1 - y_t)`` at t and ``-y_t y_n`` elsewhere (Iwana, Kuroki and Uchida, "Explaining
  convolutional neural networks using softmax gradient layer-wise relevance propagation", ICCV
  Workshops 2019). ``1 - y_t`` is the sum of the other probabilities, never ``1 - y_t`` in float32.

``signed`` contrast propagates ``target - dual`` once. ``scaled`` propagates the target part and
the dual part as two halves of one batch and combines them as
``A_t - A_d * sum(A_t) / sum(A_d)`` per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .builder import Context, Emitter

METHODS = ("lrp", "clrp", "sglrp")
CONTRASTS = ("signed", "scaled")
DEFAULT_CONTRAST = {"lrp": None, "clrp": "scaled", "sglrp": "signed"}


@dataclass
class Start:
    """Tensors made at the logits: the class actually explained and the initial relevance."""

    logits: str  # [N, K]
    explained_class: str  # int64 [N]
    relevance: str  # [N, K] (signed / lrp) or [2N, K] (scaled)
    #: ``scaled`` only: the target and the dual part, each [N, K] (the two halves of ``relevance``)
    halves: tuple[str, str] | None = None


def initial_relevance(em: Emitter, logits: str, target: str, classes: int, method: str, contrast: str | None) -> Start:
    """Emit the target resolution and the initial relevance vector(s) at the logits."""
    predicted = em.op("ArgMax", [logits], "predicted", axis=1, keepdims=0)
    resolved = em.op("Where", [em.op("Less", [target, em.const(np.int64(0))], "negative"), predicted, target], "resolved")
    in_range = em.op("Less", [resolved, em.const(np.int64(classes))], "in_range")
    explained = em.op("Where", [in_range, resolved, em.const(np.int64(-1))], "explained_class")
    class_ids = em.const(np.arange(classes, dtype=np.int64).reshape(1, classes), "class_ids")
    hit = em.op("Equal", [em.op("Unsqueeze", [explained, em.const([1])], "explained"), class_ids], "hit")
    onehot = em.op("Cast", [hit], "onehot", to=1)
    others = em.op("Sub", [em.const(np.float32(1)), onehot], "others")

    def picked(values: str) -> str:
        return em.op("ReduceSum", [em.op("Mul", [values, onehot]), em.const([1])], "picked", keepdims=1)

    if method == "sglrp":
        probabilities = em.op("Softmax", [logits], "probabilities", axis=1)
        y_t = picked(probabilities)
        rest = em.op("ReduceSum", [em.op("Mul", [probabilities, others]), em.const([1])], "one_minus_yt", keepdims=1)
        target_part = em.op("Mul", [onehot, em.op("Mul", [y_t, rest])], "target_part")
        dual_part = em.op("Mul", [em.op("Mul", [others, probabilities]), y_t], "dual_part")
    else:
        z_t = picked(logits)
        target_part = em.op("Mul", [onehot, z_t], "target_part")
        if method == "lrp":
            return Start(logits, explained, target_part)
        dual_part = em.op("Mul", [others, em.op("Div", [z_t, em.const(np.float32(classes - 1))])], "dual_part")
    if contrast == "signed":
        return Start(logits, explained, em.op("Sub", [target_part, dual_part], "initial"))
    both = em.op("Concat", [target_part, dual_part], "initial", axis=0)
    return Start(logits, explained, both, (target_part, dual_part))


def combine_scaled(ctx: Context, relevance: str, image: str) -> str:
    """``A_t - A_d * sum(A_t) / sum(A_d)`` per image from the ``[2N, ...]`` relevance.

    Where ``|sum(A_d)|`` is below ``1e-12 * sum(|A_d|) + tiny``, the result is ``A_t``.
    """
    em = ctx.em
    rank = ctx.rank(image)
    halves_shape = em.op("Concat", [em.const([2, -1]), em.op("Slice", [em.op("Shape", [relevance]), em.const([1]), em.const([rank])])], "halves", axis=0)
    halves = em.op("Reshape", [relevance, halves_shape], "halves")
    target_half = em.op("Gather", [halves, em.const(np.int64(0))], "a_t", axis=0)
    dual_half = em.op("Gather", [halves, em.const(np.int64(1))], "a_d", axis=0)
    axes = em.const(np.arange(1, rank, dtype=np.int64))
    sum_t = em.op("ReduceSum", [target_half, axes], "sum_t", keepdims=1)
    sum_d = em.op("ReduceSum", [dual_half, axes], "sum_d", keepdims=1)
    mass_d = em.op("ReduceSum", [em.op("Abs", [dual_half]), axes], "mass_d", keepdims=1)
    threshold = em.op("Add", [em.op("Mul", [mass_d, em.const(np.float32(1e-12))]), em.const(np.float32(1e-30))], "threshold")
    usable = em.op("Greater", [em.op("Abs", [sum_d]), threshold], "usable")
    safe_d = em.op("Where", [usable, sum_d, em.const(np.float32(1))], "safe_sum_d")
    ratio = em.op("Where", [usable, em.op("Div", [sum_t, safe_d]), em.const(np.float32(0))], "ratio")
    return em.op("Sub", [target_half, em.op("Mul", [dual_half, ratio])], "contrast")
