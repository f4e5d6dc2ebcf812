"""Backward builders of the linear layers (canonical ``Conv`` and ``Dense``) for every rule.

The rule (:mod:`sglrp_onnx.rules`) is data; this module turns its terms into ONNX operators: a
modified forward per term (the unmodified one is the forward's own tensor, reused), the
stabilised group denominators, the transpose of the linear map (ConvTranspose for Conv, MatMul by
the transposed weight for Dense), and the reducer.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx import recipes
from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.graph import Node
from sglrp_onnx.recipes import Recipe
from sglrp_onnx.rules import LinearRule, SimpleRule, keep, negative, positive, zero_rule

from .builder import Context, Factored
from .registry import register


#: Emit transposes as Conv where that is faster (see :func:`conv_transpose`); the tests turn it off
#: to compare both forms.
TRANSPOSE_AS_CONV = True

#: Term inputs that do not depend on the image (zbox bounds, ones): the modified forwards of such
#: terms are constants that ONNX Runtime folds at load.
CONSTANT_INPUTS = ("low", "high", "ones")


class ConvMap:
    """Forward and transpose of a canonical Conv with changeable weights."""

    def __init__(self, ctx: Context, node: Node):
        self.ctx, self.node = ctx, node
        attrs = node.attrs
        self.strides = attrs["strides"]
        self.dilations = attrs["dilations"]
        self.group = attrs["group"]
        self.pads = attrs["pads"]
        # "same" padding on a dynamic spatial size: ONNX Runtime pads the forward; the transpose
        # computes the begin padding from the runtime shape.
        self.padding = {"pads": self.pads} if self.pads is not None else {"auto_pad": attrs["auto_pad"]}

    def forward(self, x: str, weight: Recipe, bias: np.ndarray) -> str:
        em = self.ctx.em
        inputs = [x, em.weight(weight, "w")]
        if np.any(bias != 0):
            inputs.append(em.const(bias, "b"))
        return em.op("Conv", inputs, "z", strides=self.strides, dilations=self.dilations, group=self.group, **self.padding)

    def transpose(self, s: str, weight: Recipe) -> str:
        if self.pads is None:
            return same_padding_transpose(self.ctx, self.node, s, weight, self.strides, self.dilations, self.group)
        return conv_transpose(self.ctx, self.node.inputs[0], self.node.outputs[0], s, weight,
                              self.strides, self.dilations, self.pads, self.group)


def conv_transpose(ctx: Context, x: str, y: str, s: str, weight: Recipe | np.ndarray, strides, dilations, pads, group) -> str:
    """The transpose of a convolution applied to ``s`` (shaped like ``y``), shaped like ``x``.

    With static spatial sizes, ONNX Runtime's Conv kernels beat its ConvTranspose at stride 1, so
    stride-1 convolutions are transposed as a Conv with the flipped, group-transposed kernel, and
    grouped strided ones as zeros interleaved plus that Conv. Dense strided ones, where
    ConvTranspose measured faster, and the rest use a ConvTranspose with symmetric pads only (see
    :func:`_symmetric_conv_transpose`), so that ONNX Runtime's CUDA provider keeps it on the GPU.
    """
    if isinstance(weight, np.ndarray):  # a kernel the engine made (average pooling's)
        weight = recipes.constant(weight)
    kernel = list(weight.shape[2:])
    rank = len(kernel)
    begin = list(pads[:rank])
    x_shape, y_shape = ctx.graph.shape(x), ctx.graph.shape(y)
    static = x_shape is not None and y_shape is not None and all(d is not None for d in list(x_shape[2:]) + list(y_shape[2:]))
    if static and TRANSPOSE_AS_CONV:
        as_conv = _transpose_as_conv(ctx, s, weight, list(x_shape[2:]), list(y_shape[2:]), strides, dilations, begin, group)
        if as_conv is not None:
            return as_conv
    weight_name = ctx.em.weight(weight, "w")
    if static:
        return _symmetric_conv_transpose(ctx, s, weight_name, kernel, list(x_shape[2:]), list(y_shape[2:]), strides, dilations, begin, group)
    # Dynamic spatial size: the full transpose (no padding), cut from the begin padding at run time.
    out = ctx.em.op("ConvTranspose", [s, weight_name], "c", strides=strides, dilations=dilations, group=group, pads=[0] * (2 * rank))
    if any(begin):
        axes = ctx.em.const(np.arange(2, 2 + rank, dtype=np.int64))
        start = ctx.em.const(np.array(begin, np.int64))
        out = ctx.em.op("Slice", [out, start, ctx.em.op("Add", [start, ctx.spatial_size(x)]), axes], "c")
    return fit_spatial(ctx, out, x, rank)


def _symmetric_conv_transpose(ctx: Context, s: str, weight_name: str, kernel, in_size, out_size, strides, dilations, begin, group) -> str:
    """ConvTranspose of ``s`` giving the input's spatial size ``in_size``, with symmetric pads only.

    ONNX Runtime's CUDA provider runs ConvTranspose with asymmetric pads (or auto_pad SAME_*) on
    the CPU (``ConvTransposeNeedFallbackToCPU`` in ``cuda_execution_provider.cc``; cuDNN pads
    symmetrically), so the exact fit is made of symmetric pads ``(b, b)`` (``b`` the forward's begin
    padding) plus ``output_padding`` where the output is short by less than the stride, or plus a
    zero ``Pad`` / a ``Slice`` of the end otherwise (SPEC section 8). Output position ``o`` of the
    transpose is position ``o + b`` of the unpadded (full) transpose in every form.
    """
    em = ctx.em
    rank = len(in_size)
    full = [(out_size[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 for i in range(rank)]
    short = [in_size[i] - (full[i] - 2 * begin[i]) for i in range(rank)]  # > 0: rows missing at the end
    if all(n < max(st, d) for n, st, d in zip(short, strides, dilations)):
        attrs = dict(strides=strides, dilations=dilations, group=group, pads=begin + begin)
        if any(n > 0 for n in short):
            attrs["output_padding"] = [max(n, 0) for n in short]
        out = em.op("ConvTranspose", [s, weight_name], "c", **attrs)
        if any(n < 0 for n in short):
            out = em.op("Slice", [out, em.const([0] * rank), em.const(list(in_size)), em.const(list(range(2, 2 + rank)))], "c")
        return out
    # Short by a stride or more: no output_padding fits; cut the window from the full transpose.
    out = em.op("ConvTranspose", [s, weight_name], "c", strides=strides, dilations=dilations, group=group, pads=[0] * (2 * rank))
    beyond = [max(0, begin[i] + in_size[i] - full[i]) for i in range(rank)]
    if any(beyond):  # the window reaches past the full transpose: zeros there
        out = em.op("Pad", [out, em.const(np.array([0] * (2 + rank) + [0, 0] + beyond, np.int64))], "c")
    ends = [begin[i] + in_size[i] for i in range(rank)]
    return em.op("Slice", [out, em.const(list(begin)), em.const(ends), em.const(list(range(2, 2 + rank)))], "c")


def _transpose_as_conv(ctx: Context, s: str, weight: Recipe, in_size, out_size, strides, dilations, begin, group):
    """``ConvTranspose`` rewritten as ``Conv`` (see :func:`conv_transpose`), or None where unfit."""
    rank = len(in_size)
    kernel = list(weight.shape[2:])
    em = ctx.em
    if any(st != 1 for st in strides):
        if group == 1:
            # dense strided, 1x1 too: ConvTranspose measured faster than a polyphase Conv or a 1x1
            # Conv with zeros interleaved (ResNet-50's shapes: 9-11 ms vs 11-27 ms at batch 8)
            return None
        # grouped (depthwise) strided: zeros interleaved, then the stride-1 transpose below, whose
        # wasted multiplications cost little at one input channel per group: faster than ONNX
        # Runtime's grouped ConvTranspose (MobileNetV2's 96-channel layer at batch 8: 10.6 vs
        # 16.7 ms) and than a polyphase Conv + DepthToSpace (28 ms)
        s = _interleave(ctx, s, weight.shape[0], strides)
        out_size = [(o - 1) * st + 1 for o, st in zip(out_size, strides)]
    # stride 1: a Conv of s with the flipped kernel, padded so that its output has the input's size
    pads_begin = [dilations[i] * (kernel[i] - 1) - begin[i] for i in range(rank)]
    pads_end = [in_size[i] - out_size[i] + begin[i] for i in range(rank)]
    if any(p < 0 for p in pads_begin):
        return None
    u = s
    if any(p < 0 for p in pads_end):  # outputs beyond the input's size are cut off
        ends = [o + min(p, 0) for o, p in zip(out_size, pads_end)]
        u = em.op("Slice", [u, em.const([0] * rank), em.const(ends), em.const(list(range(2, 2 + rank)))], "u")
        pads_end = [max(p, 0) for p in pads_end]
    transposed = recipes.group_transposed(weight, group)
    return em.op("Conv", [u, em.weight(transposed, "wt")], "c", dilations=dilations, group=group, pads=pads_begin + pads_end)


def _interleave(ctx: Context, s: str, channels: int, strides) -> str:
    """``stride - 1`` zeros between neighbouring elements along each spatial axis: a 1x1
    depthwise ConvTranspose with unit weights (no padding, so CUDA keeps it on the GPU)."""
    rank = len(strides)
    unit = np.ones([channels, 1] + [1] * rank, np.float32)
    return ctx.em.op("ConvTranspose", [s, ctx.em.const(unit, "unit")], "u", strides=list(strides), group=channels)


def same_padding_transpose(ctx: Context, node: Node, s: str, weight: Recipe, strides, dilations, group) -> str:
    """Transpose of a Conv with ``auto_pad=SAME_*`` on a dynamic spatial size.

    The full ConvTranspose (no padding) is cut from the runtime begin padding
    ``total // 2`` (SAME_UPPER) or ``total - total // 2`` (SAME_LOWER), where
    ``total = max(0, (ceil(in / s) - 1) * s + (k - 1) * d + 1 - in)``, then fitted to the input size.
    """
    em = ctx.em
    kernel = list(weight.shape[2:])
    rank = len(kernel)
    x = node.inputs[0]
    full = em.op("ConvTranspose", [s, em.weight(weight, "w")], "c", strides=strides, dilations=dilations, group=group, pads=[0] * (2 * rank))
    size = ctx.spatial_size(x)
    stride = em.const(np.array(strides, np.int64))
    out = em.op("Div", [em.op("Add", [size, em.const(np.array(strides, np.int64) - 1)]), stride], "out_size")
    reach = em.const(np.array([(k - 1) * d + 1 for k, d in zip(kernel, dilations)], np.int64))
    total = em.op("Sub", [em.op("Add", [em.op("Mul", [em.op("Sub", [out, em.const(np.ones(rank, np.int64))]), stride]), reach]), size])
    total = em.op("Max", [total, em.const(np.zeros(rank, np.int64))], "total_pad")
    half = em.op("Div", [total, em.const(np.full(rank, 2, np.int64))], "half_pad")
    begin = half if node.attrs["auto_pad"] == "SAME_UPPER" else em.op("Sub", [total, half], "begin_pad")
    axes = em.const(np.arange(2, 2 + rank, dtype=np.int64))
    cut = em.op("Slice", [full, begin, em.op("Add", [begin, size]), axes], "c")
    return fit_spatial(ctx, cut, x, rank)


def fit_spatial(ctx: Context, tensor: str, like: str, rank: int) -> str:
    """Pad with zeros / cut ``tensor``'s spatial axes (2..) to the spatial size of ``like``."""
    em = ctx.em
    target = ctx.spatial_size(like)
    current = em.op("Slice", [em.op("Shape", [tensor]), em.const([2]), em.const([2 + rank])], "current")
    missing = em.op("Max", [em.op("Sub", [target, current]), em.const(np.zeros(rank, np.int64))], "missing")
    pads = em.op("Concat", [em.const(np.zeros(2 + rank + 2, np.int64)), missing], "pads", axis=0)
    padded = em.op("Pad", [tensor, pads], "padded")
    axes = em.const(np.arange(2, 2 + rank, dtype=np.int64))
    return em.op("Slice", [padded, em.const(np.zeros(rank, np.int64)), target, axes], "fitted")


class DenseMap:
    """Forward and transpose of a canonical Dense layer (``x @ W + b`` over the last axis)."""

    def __init__(self, ctx: Context, node: Node):
        self.ctx, self.node = ctx, node
        shape = ctx.graph.shape(node.inputs[0])
        self.two_d = shape is not None and len(shape) == 2

    def forward(self, x: str, weight: Recipe, bias: np.ndarray) -> str:
        em = self.ctx.em
        has_bias = bool(np.any(bias != 0))
        if self.two_d:
            inputs = [x, em.weight(weight, "w")] + ([em.const(bias, "b")] if has_bias else [])
            return em.op("Gemm", inputs, "z")
        z = em.op("MatMul", [x, em.weight(weight, "w")], "z")
        return em.op("Add", [z, em.const(bias, "b")], "z") if has_bias else z

    def transpose(self, s: str, weight: Recipe) -> str:
        em = self.ctx.em
        if self.two_d:
            return em.op("Gemm", [s, em.weight(weight, "w")], "c", transB=1)
        return em.op("MatMul", [s, em.weight(recipes.transposed(weight, (1, 0)), "wt")], "c")


def _term_input(ctx: Context, node: Node, kind: str, cache: dict) -> str:
    if kind in cache:
        return cache[kind]
    em = ctx.em
    x = node.inputs[0]
    if kind == "x":
        value = ctx.fwd(x)
    elif kind == "pos":
        value = ctx.fwd(x) if x in ctx.nonnegative else em.op("Relu", [ctx.fwd(x)], "xpos")
    elif kind == "neg":
        value = em.op("Min", [ctx.fwd(x), em.const(np.float32(0))], "xneg")
    elif kind == "ones":
        value = ctx.ones_sample(x)
    else:  # low / high
        bounds = ctx.bounds.get(node.name)
        if bounds is None:
            raise UnsupportedModelError(f"{node.describe(ctx.graph)}: zbox has no bounds")
        array = bounds[0] if kind == "low" else bounds[1]
        value = em.op("Expand", [em.const(array, kind), ctx.sample_shape(x)], kind)
    cache[kind] = value
    return value


def _is_forward(term) -> bool:
    """Whether a term is the layer itself on its input: its output is the forward's own tensor."""
    return term.input == "x" and term.weight is keep and term.bias is keep


#: Sign of each modifier's output (+1: >= 0, -1: <= 0, 0: zero, None: either).
_MODIFIER_SIGNS = {"positive": 1, "ones": 1, "square": 1, "negative": -1, "zero": 0}


def _input_sign(ctx: Context, node: Node, kind: str) -> int | None:
    if kind in ("pos", "ones") or (kind == "x" and node.inputs[0] in ctx.nonnegative):
        return 1
    return -1 if kind == "neg" else None


def _never_negative(ctx: Context, node: Node, term) -> bool:
    """Whether a term's signed output ``sign * f(a_k; W_k, b_k)`` is >= 0 for every input, from
    the signs of its input and modified parameters (z+'s ``x- W-`` term is >= 0 too), so that its
    group's stabiliser needs no sign test."""
    a, w = _input_sign(ctx, node, term.input), _MODIFIER_SIGNS.get(term.weight.name)
    b = _MODIFIER_SIGNS.get(term.bias.name)
    if a is None or w is None or b is None:
        return False
    direction = 1 if term.sign > 0 else -1
    return direction * a * w >= 0 and direction * b >= 0


def _denominator(ctx: Context, node: Node, rule: LinearRule, members: list, outputs: list, nonnegative: bool) -> str:
    """The stabilised sum of one group's signed term outputs (``outputs``, one per term of ``members``)."""
    if _is_own_output(members):
        return ctx.stabilize_forward(node.outputs[0], rule.stabilizer)
    signed = [ctx.scale(z, t.sign, "signed") for t, z in zip(members, outputs)]
    if nonnegative:
        return ctx.add_all(signed, "stab")  # eps is in the first term's bias
    # terms on the bounds or on ones are constants: summed first, ONNX Runtime folds them
    fixed = [z for t, z in zip(members, signed) if t.input in CONSTANT_INPUTS]
    varying = [z for t, z in zip(members, signed) if t.input not in CONSTANT_INPUTS]
    total = ctx.add_all(varying + ([ctx.add_all(fixed, "zfixed")] if fixed else []), "zsum")
    return ctx.stabilize(total, rule.stabilizer)


def emit_linear_rule(ctx: Context, node: Node, relevance: str, rule: LinearRule, layer) -> str:
    """Relevance at the input of a linear layer under ``rule`` (see :mod:`sglrp_onnx.rules`)."""
    em = ctx.em
    weight, bias = node.params["weight"], node.params["bias"]
    x = node.inputs[0]
    terms = [t for t in rule.terms if not (t.input == "neg" and x in ctx.nonnegative)]
    inputs: dict[str, str] = {}
    params: dict[tuple, tuple] = {}
    outputs: list[str] = []
    groups = sorted({t.group for t in terms})
    members = {group: [t for t in terms if t.group == group] for group in groups}
    # A group whose terms are all >= 0 is stabilised by ``+ eps``, folded into the bias of its
    # first term (never the forward's own output, whose sign is unknown).
    nonnegative = {group for group, g in members.items() if all(_never_negative(ctx, node, t) for t in g)}
    biased = {id(members[group][0]) for group in nonnegative}
    for term in terms:
        key = (term.weight, term.bias)
        if key not in params:
            params[key] = (recipes.modified(weight, term.weight, rule.gamma), term.bias(bias, rule.gamma))
        if _is_forward(term):
            outputs.append(ctx.fwd(node.outputs[0]))  # the forward already computed it
        else:
            w_k, b_k = params[key]
            if id(term) in biased:
                b_k = (b_k + np.float32(rule.stabilizer / term.sign)).astype(np.float32)
            outputs.append(layer.forward(_term_input(ctx, node, term.input, inputs), w_k, b_k))
    quotients = {}
    for group in groups:
        mask = rule.masks[group] if group < len(rule.masks) else "all"
        if mask == "all" and _is_own_output(members[group]):
            quotients[group] = ctx.quotient(relevance, node, rule.stabilizer)  # R / stab(y)
            continue
        group_outputs = [z for t, z in zip(terms, outputs) if t.group == group]
        denominator = _denominator(ctx, node, rule, members[group], group_outputs, group in nonnegative)
        numerator = relevance
        if mask != "all":
            compare = "Greater" if mask == "z>0" else "Less"
            selected = em.op(compare, [ctx.fwd(node.outputs[0]), em.const(np.float32(0))], "mask")
            numerator = em.op("Where", [selected, ctx.materialize(relevance), em.const(np.float32(0))], "masked")
        quotients[group] = ctx.divide(numerator, denominator)
    # terms sharing a transpose (same group and weight) share one product with it
    shares: dict[tuple, list] = {}
    for term in terms:
        shares.setdefault((term.group, term.weight), []).append(term)
    if rule.reducer == "input":
        _split_unmodified(shares)
    modified_weights = {modifier: recipe for (modifier, _), (recipe, _) in params.items()}
    contributions = []
    for (group, modifier), sharing in shares.items():
        c = layer.transpose(quotients[group], modified_weights[modifier])
        if rule.reducer == "input":
            if len(shares) == 1 and len(sharing) == 1 and sharing[0].coef == 1 and _term_input(ctx, node, sharing[0].input, inputs) == ctx.fwd(x):
                return Factored(x, c)  # R_in = x * c, the product left to whoever divides it next
            factor = ctx.add_all([ctx.scale(_term_input(ctx, node, t.input, inputs), t.coef, "a") for t in sharing], "a")
            contributions.append(ctx.mul(factor, c, "r"))
        else:
            contributions.append(ctx.scale(c, sum(t.coef for t in sharing), "r"))
    return ctx.add_all(contributions, "r")


def _is_own_output(members: list) -> bool:
    """Whether a group is the layer itself (one unmodified term): its denominator is ``stab(y)``."""
    return len(members) == 1 and _is_forward(members[0]) and members[0].sign > 0


def _split_unmodified(shares: dict) -> None:
    """Drop the transpose by ``W`` where the same group also transposes by ``W+`` and ``W-``.

    ``W^T s = W+^T s + W-^T s``, so a term ``a * W^T s`` joins both other products: zbox's
    ``x W^T s - l W+^T s - h W-^T s`` becomes ``(x - l) W+^T s + (x - h) W-^T s``, two
    transposes instead of three."""
    for group in {g for g, _ in shares}:
        if all((group, m) in shares for m in (keep, positive, negative)):
            unmodified = shares.pop((group, keep))
            shares[(group, positive)] = shares[(group, positive)] + unmodified
            shares[(group, negative)] = shares[(group, negative)] + unmodified


@register("Conv", "Dense", factored=True)
def backward_linear(ctx: Context, node: Node, relevance_out: list) -> list:
    rule = ctx.rules[node.name]
    relevance = relevance_out[0]
    if isinstance(rule, SimpleRule) and rule.name == "pass":
        return [relevance]
    if isinstance(rule, SimpleRule):  # norm: the layer itself, stabilised like LRP-0
        rule = zero_rule(rule.stabilizer)
    layer = ConvMap(ctx, node) if node.op_type == "Conv" else DenseMap(ctx, node)
    return [emit_linear_rule(ctx, node, relevance, rule, layer)]
