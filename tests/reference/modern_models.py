"""Tiny transformer-style test classifiers: each one both as an ONNX graph (``onnx.helper`` only)
and as a :mod:`modern64` reference build that reads the very same float32 weights.

A :class:`Case` holds the model, the reference build ``build(tape, x) -> logits node`` and an input
sampler. Weights are drawn "conditioned" where a test compares elementwise: contributions to every
unit of a linear layer agree in sign with that unit's chosen sign (and so does its bias), and
normalisation layers get a beta that dominates gamma * x_hat, so no LRP denominator is near 0.
The ViT block (:func:`vit`) uses plain random weights instead (relative-L2 comparisons).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import modern64 as m64

NUM_CLASSES = 4


# =============================================================================================
# ONNX graph builder


class Graph:
    """Collects nodes and float32/int64 initializers; names are generated unless given."""

    def __init__(self, opset=17):
        self.opset = opset
        self.nodes, self.inits = [], []
        self._n = 0

    def _name(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, arr, base="c", dtype=np.float32):
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def ints(self, values, base="shape"):
        return self.const(np.asarray(values, np.int64), base, np.int64)

    def op(self, op_type, inputs, name=None, **attrs):
        name = name or self._name(op_type)
        out = name + "_out"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def model(self, in_name, in_shape, out, out_shape) -> onnx.ModelProto:
        """The model with a dynamic batch ``N``, lowest ir_version for the opset, checked."""
        self.nodes.append(helper.make_node("Identity", [out], ["scores"], name="output"))
        graph = helper.make_graph(
            self.nodes, "modern_net",
            [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N"] + list(in_shape))],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"] + list(out_shape))],
            initializer=self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="sglrp-tests")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        onnx.checker.check_model(model, full_check=True)
        return model

    # -- layers that tests reuse ---------------------------------------------------------------

    def dense(self, x, W, b=None, name=None):
        """MatMul by a constant plus a bias Add (as torch exports nn.Linear on 3D tensors)."""
        name = name or self._name("linear")
        y = self.op("MatMul", [x, self.const(W, name + ".weight")], name=name)
        if b is not None:
            y = self.op("Add", [y, self.const(b, name + ".bias")], name=name + "_bias")
        return y

    def reshape(self, x, shape):
        return self.op("Reshape", [x, self.ints(shape)])

    def transpose(self, x, perm):
        return self.op("Transpose", [x], perm=list(perm))

    def reduce_mean_last(self, x, axis=-1):
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints([axis], "axes")], keepdims=1)
        return self.op("ReduceMean", [x], axes=[axis], keepdims=1)

    def layer_norm(self, x, gamma, beta, eps, decomposed=False, name=None):
        """LayerNormalization over the last axis, as one op or as older exporters wrote it."""
        name = name or self._name("ln")
        g, b = self.const(gamma, name + ".weight"), self.const(beta, name + ".bias")
        if not decomposed:
            return self.op("LayerNormalization", [x, g, b], name=name, axis=-1, epsilon=eps)
        mean = self.reduce_mean_last(x)
        d = self.op("Sub", [x, mean])
        var = self.reduce_mean_last(self.op("Pow", [d, self.const(2.0)]))
        sd = self.op("Sqrt", [self.op("Add", [var, self.const(eps)])])
        return self.op("Add", [self.op("Mul", [self.op("Div", [d, sd]), g]), b])

    def gelu_decomposed(self, h):
        """TorchScript's exact GELU: Mul(Mul(h, Add(Erf(Div(h, sqrt 2)), 1)), 0.5)."""
        e = self.op("Erf", [self.op("Div", [h, self.const(math.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [h, self.op("Add", [e, self.const(1.0)])]),
                               self.const(0.5)])

    def batch_expand(self, const, like):
        """``const`` [1, ...] expanded to the batch of ``like`` via Shape/Gather (torch export)."""
        n = self.op("Unsqueeze", [self.op("Gather", [self.op("Shape", [like]),
                                                     self.ints(0, "idx")], axis=0),
                                  self.ints([0], "axes")])
        shape = self.op("Concat", [n, self.ints(list(np.shape(const)[1:]))], axis=0)
        return self.op("Expand", [self.const(const, "cls_token"), shape])


# =============================================================================================
# weights


def signed_weight(rng, in_signs, out_signs, scale=1.0):
    """W [Din, Dout] with sign(W[j, k]) = in_sign[j] * out_sign[k] and bias of sign out_sign:
    every term of output k then has the sign out_sign[k] when input j has the sign in_sign[j]."""
    in_signs, out_signs = np.asarray(in_signs, float), np.asarray(out_signs, float)
    mag = rng.uniform(0.2, 1.0, (len(in_signs), len(out_signs))) / math.sqrt(len(in_signs))
    W = scale * mag * in_signs[:, None] * out_signs[None, :]
    b = out_signs * rng.uniform(0.1, 0.3, len(out_signs))
    return W.astype(np.float32), b.astype(np.float32)


def random_signs(rng, n):
    return np.where(rng.random(n) < 0.5, -1.0, 1.0)


def ones(n):
    return np.ones(n)


def gaussian(rng, shape, scale=1.0):
    fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * scale / math.sqrt(fan_in)).astype(np.float32)


def f32(a):
    return np.asarray(a, np.float32)


@dataclasses.dataclass
class Case:
    name: str
    model: onnx.ModelProto
    build: Callable  # (tape, input node) -> logits node
    input_shape: tuple  # without the batch dim
    low: float = 0.2  # inputs drawn uniformly from [low, high]
    high: float = 1.0
    conditioned: bool = True

    def inputs(self, n, seed=0):
        rng = np.random.default_rng(1000 + seed)
        return rng.uniform(self.low, self.high, (n,) + self.input_shape).astype(np.float32)


# =============================================================================================
# (a) LayerNormalization, one op or decomposed

T, D, H = 5, 8, 2  # tokens, width, heads


def _head(rng, in_signs):
    """A conditioned classifier head: random class signs."""
    return signed_weight(rng, in_signs, random_signs(rng, NUM_CLASSES))


def layer_norm_case(seed=0, decomposed=False, opset=17, bias_free=False) -> Case:
    """x [N, T, D] -> Linear -> LayerNorm -> flatten -> Linear head."""
    rng = np.random.default_rng(seed)
    sig = random_signs(rng, D)
    W1, b1 = signed_weight(rng, ones(D), sig)
    gamma = f32(rng.uniform(0.3, 0.6, D))
    # beta dominates gamma * x_hat (|x_hat| < sqrt(D - 1)): LN outputs stay positive
    beta = f32(np.zeros(D) if bias_free else rng.uniform(2.5, 3.5, D))
    Wh, bh = _head(rng, ones(T * D))
    if bias_free:
        b1, bh = None, None
    eps = 1e-5

    g = Graph(opset)
    h = g.dense("x", W1, b1, name="fc1")
    y = g.layer_norm(h, gamma, beta, eps, decomposed=decomposed, name="ln")
    out = g.dense(g.reshape(y, [-1, T * D]), Wh, bh, name="head")
    model = g.model("x", (T, D), out, (NUM_CLASSES,))

    def build(t, x):
        h = m64.dense(t, x, W1, b1)
        y = m64.layer_norm(t, h, gamma, beta, eps)
        return m64.dense(t, m64.reshape(t, y, (-1, T * D)), Wh, bh)

    kind = "decomposed" if decomposed else "op"
    return Case(f"layernorm-{kind}-opset{opset}" + ("-biasfree" if bias_free else ""), model,
                build, (T, D))


def rms_norm_case(seed=0, form="div") -> Case:
    """x [N, T, D] -> Linear -> RMSNorm (decomposed: Pow, ReduceMean, Add eps, Sqrt, then
    ``form`` "div" = Div(x, rms) or "rsqrt" = Mul(x, Reciprocal(rms)) as torch writes
    x * torch.rsqrt(...)) -> Mul gamma -> flatten -> head. With rms held constant the map is
    diagonal, so the rule gives R_x = R (up to the stabiliser): the test checks that the pattern
    is recognised as one normalisation and that no relevance leaks into the rms branch."""
    rng = np.random.default_rng(seed)
    W1, b1 = signed_weight(rng, ones(D), ones(D))  # x > 0 -> RMSNorm output > 0
    gamma = f32(rng.uniform(0.5, 1.5, D))
    Wh, bh = _head(rng, ones(T * D))
    eps = 1e-6
    g = Graph(17)
    h = g.dense("x", W1, b1, name="fc1")
    ms = g.reduce_mean_last(g.op("Pow", [h, g.const(2.0)]))
    rms = g.op("Sqrt", [g.op("Add", [ms, g.const(eps)])])
    if form == "div":
        y = g.op("Div", [h, rms])
    else:
        y = g.op("Mul", [h, g.op("Reciprocal", [rms])])
    y = g.op("Mul", [y, g.const(gamma, "rms.weight")])
    out = g.dense(g.reshape(y, [-1, T * D]), Wh, bh, name="head")
    model = g.model("x", (T, D), out, (NUM_CLASSES,))

    def build(t, x):
        y = m64.rms_norm(t, m64.dense(t, x, W1, b1), gamma, eps)
        return m64.dense(t, m64.reshape(t, y, (-1, T * D)), Wh, bh)

    return Case(f"rmsnorm-{form}", model, build, (T, D))


# =============================================================================================
# (b) InstanceNormalization, GroupNorm (decomposed and as one op)

C, S, G = 4, 4, 2  # channels, spatial size, groups


def _norm_params(rng, n):
    return f32(rng.uniform(0.3, 0.6, n)), f32(rng.uniform(2.5, 3.5, n))


def channel_layer_norm_case(seed=0) -> Case:
    """x [N, C, S, S] -> LayerNorm over the channel axis written out as ConvNeXt's LayerNorm2d
    exports (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div over axis 1, then Mul gamma[C, 1, 1],
    Add beta[C, 1, 1]) -> flatten -> head."""
    rng = np.random.default_rng(seed)
    gamma, beta = _norm_params(rng, C)
    Wh, bh = _head(rng, ones(C * S * S))
    eps = 1e-6
    g = Graph(17)
    d = g.op("Sub", ["x", g.reduce_mean_last("x", axis=1)])
    var = g.reduce_mean_last(g.op("Pow", [d, g.const(2.0)]), axis=1)
    y = g.op("Div", [d, g.op("Sqrt", [g.op("Add", [var, g.const(eps)])])])
    y = g.op("Add", [g.op("Mul", [y, g.const(gamma.reshape(C, 1, 1))]),
                     g.const(beta.reshape(C, 1, 1))])
    out = g.dense(g.op("Flatten", [y], axis=1), Wh, bh, name="head")
    model = g.model("x", (C, S, S), out, (NUM_CLASSES,))

    def build(t, x):
        y = m64.normalize(t, x, (1,), gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1), eps)
        return m64.dense(t, m64.reshape(t, y, (-1, C * S * S)), Wh, bh)

    return Case("layernorm2d-channels-first", model, build, (C, S, S))


def instance_norm_case(seed=0) -> Case:
    """x [N, C, S, S] -> InstanceNormalization -> flatten -> head."""
    rng = np.random.default_rng(seed)
    gamma, beta = _norm_params(rng, C)
    Wh, bh = _head(rng, ones(C * S * S))
    g = Graph(17)
    y = g.op("InstanceNormalization", ["x", g.const(gamma), g.const(beta)], epsilon=1e-5)
    out = g.dense(g.op("Flatten", [y], axis=1), Wh, bh, name="head")
    model = g.model("x", (C, S, S), out, (NUM_CLASSES,))

    def build(t, x):
        y = m64.normalize(t, x, (2, 3), gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1),
                          1e-5)
        return m64.dense(t, m64.reshape(t, y, (-1, C * S * S)), Wh, bh)

    return Case("instancenorm", model, build, (C, S, S))


def group_norm_case(seed=0, form="decomposed", annotate=False, groups=G) -> Case:
    """x [N, C, S, S] -> GroupNorm(G) -> flatten -> head. ``form``: "decomposed" = torch's
    Reshape -> InstanceNormalization(1, 0) -> Reshape(Shape(x)) -> Mul gamma -> Add beta;
    "op21" = the GroupNormalization op of opset 21 (scale/bias per channel; opset 18's version,
    per group, is deprecated and refused by the ONNX checker). ONNX's shape inference gives the
    GroupNormalization-21 output no type; ``annotate`` writes it into ``value_info`` as an
    exporter might, so that the rule can be tested apart from shape inference. ``groups=1`` is
    PoolFormer's GroupNorm."""
    rng = np.random.default_rng(seed)
    gamma, beta = _norm_params(rng, C)
    Wh, bh = _head(rng, ones(C * S * S))
    eps = 1e-5
    g = Graph({"decomposed": 17, "op21": 21}[form])
    if form == "decomposed":
        v = g.op("Reshape", ["x", g.ints([0, groups, -1])])
        v = g.op("InstanceNormalization", [v, g.const(np.ones(groups)), g.const(np.zeros(groups))],
                 epsilon=eps)
        v = g.op("Reshape", [v, g.op("Shape", ["x"])])
        v = g.op("Mul", [v, g.const(gamma.reshape(C, 1, 1))])
        y = g.op("Add", [v, g.const(beta.reshape(C, 1, 1))])
    else:
        y = g.op("GroupNormalization", ["x", g.const(gamma), g.const(beta)], num_groups=groups,
                 epsilon=eps)
    out = g.dense(g.op("Flatten", [y], axis=1), Wh, bh, name="head")
    model = g.model("x", (C, S, S), out, (NUM_CLASSES,))
    if annotate:
        model.graph.value_info.append(
            helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", C, S, S]))

    def build(t, x):
        y = m64.group_norm(t, x, groups, gamma, beta, eps)
        return m64.dense(t, m64.reshape(t, y, (-1, C * S * S)), Wh, bh)

    return Case(f"groupnorm{groups}-{form}" + ("-annotated" if annotate else ""), model, build,
                (C, S, S))


# =============================================================================================
# (c, d) attention


def _attention_weights(rng, conditioned=True):
    """q, k, v and output projections. Conditioned: q, k, v > 0 for positive inputs (so q k^T > 0
    and A V > 0), output projection signed per unit."""
    if conditioned:
        Wq, bq = signed_weight(rng, ones(D), ones(D), scale=0.7)
        Wk, bk = signed_weight(rng, ones(D), ones(D), scale=0.7)
        Wv, bv = signed_weight(rng, ones(D), ones(D))
        Wo, bo = signed_weight(rng, ones(D), random_signs(rng, D))
        return dict(Wq=Wq, bq=bq, Wk=Wk, bk=bk, Wv=Wv, bv=bv, Wo=Wo, bo=bo)
    p = {f"W{n}": gaussian(rng, (D, D)) for n in "qkvo"}
    p.update({f"b{n}": f32(rng.normal(0, 0.1, D)) for n in "qkvo"})
    return p


def onnx_attention(g: Graph, x, p, scale_from_shape=False, prefix="attn", einsum=False,
                   split_scale=False):
    """Multi-head self-attention as the TorchScript exporter writes it (H heads of D/H);
    ``einsum``: both products as Einsum (MaxViT-style), k not transposed beforehand;
    ``split_scale``: q and k^T each multiplied by sqrt(scale) before the product, as the dynamo
    exporter decomposes scaled_dot_product_attention."""
    dh = D // H
    q = g.dense(x, p["Wq"], p["bq"], name=f"{prefix}.q")
    k = g.dense(x, p["Wk"], p["bk"], name=f"{prefix}.k")
    v = g.dense(x, p["Wv"], p["bv"], name=f"{prefix}.v")
    q = g.transpose(g.reshape(q, [0, T, H, dh]), [0, 2, 1, 3])
    kt = g.transpose(g.reshape(k, [0, T, H, dh]), [0, 2, 3, 1])
    v = g.transpose(g.reshape(v, [0, T, H, dh]), [0, 2, 1, 3])
    if split_scale:
        root = g.const(dh ** -0.25)
        q, kt = g.op("Mul", [q, root]), g.op("Mul", [kt, root])
    if einsum:
        k = g.transpose(kt, [0, 1, 3, 2])
        scores = g.op("Einsum", [q, k], name=f"{prefix}.qk", equation="bhid,bhjd->bhij")
    else:
        scores = g.op("MatMul", [q, kt], name=f"{prefix}.qk")
    if split_scale:
        pass
    elif scale_from_shape:  # Sqrt(Cast(Gather(Shape(q), -1))) as torch exporters write it
        d = g.op("Gather", [g.op("Shape", [q]), g.ints(-1, "idx")], axis=0)
        sq = g.op("Sqrt", [g.op("Cast", [d], to=TensorProto.FLOAT)])
        scores = g.op("Div", [scores, sq])
    else:
        scores = g.op("Mul", [scores, g.const(1.0 / math.sqrt(dh))])
    A = g.op("Softmax", [scores], axis=-1, name=f"{prefix}.softmax")
    if einsum:
        o = g.op("Einsum", [A, v], name=f"{prefix}.av", equation="bhij,bhjd->bhid")
    else:
        o = g.op("MatMul", [A, v], name=f"{prefix}.av")
    o = g.reshape(g.transpose(o, [0, 2, 1, 3]), [0, T, D])
    return g.dense(o, p["Wo"], p["bo"], name=f"{prefix}.out")


def ref_attention(t: m64.Tape, x, p, first=False, split_scale=False):
    """Reference of :func:`onnx_attention`: CP-LRP or AttnLRP after ``t.cfg.attention``."""
    dh = D // H

    def heads(n, perm):
        return m64.transpose(t, m64.reshape(t, n, (-1, T, H, dh)), perm)

    q = heads(m64.dense(t, x, p["Wq"], p["bq"], first), (0, 2, 1, 3))
    kt = heads(m64.dense(t, x, p["Wk"], p["bk"], first), (0, 2, 3, 1))
    v = heads(m64.dense(t, x, p["Wv"], p["bv"], first), (0, 2, 1, 3))
    scale = 1.0 / math.sqrt(dh)
    if split_scale:  # Mul by a constant: `pass`; the product then needs no scale
        root = dh ** -0.25
        q = m64.passthrough(t, q, lambda v: v * root, "scale_q")
        kt = m64.passthrough(t, kt, lambda v: v * root, "scale_k")
        scale = 1.0
    if t.cfg.attention == "attnlrp":
        scores = m64.matmul_uniform(t, q, kt, "qk")
        scores = m64.passthrough(t, scores, lambda s: s * scale, "scale")
        A = m64.softmax_attnlrp(t, scores)
        o = m64.matmul_uniform(t, A, v, "av")
    elif t.cfg.attention == "cp-lrp":
        A = m64.softmax64(q.value @ kt.value * scale)  # a constant: no relevance to Q, K
        o = m64.attention_values(t, A, v)
    else:
        raise ValueError(t.cfg.attention)
    o = m64.reshape(t, m64.transpose(t, o, (0, 2, 1, 3)), (-1, T, D))
    return m64.dense(t, o, p["Wo"], p["bo"])


def attention_case(seed=0, scale_from_shape=False, bias_free=False, einsum=False,
                   split_scale=False) -> Case:
    """x [N, T, D] -> multi-head self-attention -> flatten -> head."""
    rng = np.random.default_rng(seed)
    p = _attention_weights(rng)
    out_signs = np.sign(p["bo"])
    Wh, bh = _head(rng, np.tile(out_signs, T))
    if bias_free:
        p.update(bq=None, bk=None, bv=None, bo=None)
        bh = None
    g = Graph(17)
    o = onnx_attention(g, "x", p, scale_from_shape, einsum=einsum, split_scale=split_scale)
    out = g.dense(g.reshape(o, [-1, T * D]), Wh, bh, name="head")
    model = g.model("x", (T, D), out, (NUM_CLASSES,))

    def build(t, x):
        o = ref_attention(t, x, p, split_scale=split_scale)
        return m64.dense(t, m64.reshape(t, o, (-1, T * D)), Wh, bh)

    name = "attention" + ("-shape-scale" if scale_from_shape else "") + (
        "-biasfree" if bias_free else "") + ("-einsum" if einsum else "") + (
        "-split-scale" if split_scale else "")
    return Case(name, model, build, (T, D))


# =============================================================================================
# (e) products of two computed tensors, (f) signed sums


def gated_case(seed=0, form="mul") -> Case:
    """x [N, T, D] -> a = Linear1(x), b = Linear2(x) (both > 0) -> ``form``: "mul" = a * b
    -> Linear3; "matmul" = a^T b [N, D1, D2] -> flatten -> head."""
    rng = np.random.default_rng(seed)
    d1 = 6
    W1, b1 = signed_weight(rng, ones(D), ones(d1))
    W2, b2 = signed_weight(rng, ones(D), ones(d1))
    sig = random_signs(rng, D)
    W3, b3 = signed_weight(rng, ones(d1), sig)
    g = Graph(17)
    a = g.dense("x", W1, b1, name="fc1")
    b = g.dense("x", W2, b2, name="fc2")
    if form == "mul":
        c = g.dense(g.op("Mul", [a, b], name="gate"), W3, b3, name="fc3")
        flat, in_signs = T * D, np.tile(sig, T)
    else:
        c = g.op("MatMul", [g.transpose(a, [0, 2, 1]), b], name="bilinear")
        flat, in_signs = d1 * d1, ones(d1 * d1)
    Wh, bh = _head(rng, in_signs)
    out = g.dense(g.reshape(c, [-1, flat]), Wh, bh, name="head")
    model = g.model("x", (T, D), out, (NUM_CLASSES,))

    def build(t, x):
        a, b = m64.dense(t, x, W1, b1), m64.dense(t, x, W2, b2)
        if form == "mul":
            c = m64.dense(t, m64.mul_uniform(t, a, b), W3, b3)
        else:
            c = m64.matmul_uniform(t, m64.transpose(t, a, (0, 2, 1)), b)
        return m64.dense(t, m64.reshape(t, c, (-1, flat)), Wh, bh)

    return Case(f"gated-{form}", model, build, (T, D))


def softmax_gate_case(seed=0) -> Case:
    """x [N, T, D] -> h = Linear(x) -> gate = Softmax(Linear(h)) -> h * gate -> Linear -> head:
    a Softmax inside the network gating the tensor it was computed from (ResNeSt's split
    attention in small): the gate is a constant, all relevance goes to h (SPEC 5 and 7)."""
    rng = np.random.default_rng(seed)
    W1, b1 = signed_weight(rng, ones(D), ones(D))
    Wg, bg = gaussian(rng, (D, D)), f32(rng.normal(0, 0.3, D))
    sig = random_signs(rng, D)
    W3, b3 = signed_weight(rng, ones(D), sig)
    Wh, bh = _head(rng, np.tile(sig, T))
    g = Graph(17)
    h = g.dense("x", W1, b1, name="fc1")
    gate = g.op("Softmax", [g.dense(h, Wg, bg, name="gate_fc")], axis=-1, name="gate")
    y = g.dense(g.op("Mul", [h, gate], name="apply_gate"), W3, b3, name="fc3")
    out = g.dense(g.reshape(y, [-1, T * D]), Wh, bh, name="head")
    model = g.model("x", (T, D), out, (NUM_CLASSES,))

    def build(t, x):
        h = m64.dense(t, x, W1, b1)
        gate = m64.softmax64(h.value @ Wg + bg)  # a constant: no relevance into the gate
        y = m64.dense(t, m64.passthrough(t, h, lambda v: v * gate, "apply_gate"), W3, b3)
        return m64.dense(t, m64.reshape(t, y, (-1, T * D)), Wh, bh)

    return Case("softmax-gate", model, build, (T, D))


POOL = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)


def _conv1x1(g, x, W, b, name):
    """A 1x1 Conv whose weight is the dense W [Cin, Cout]."""
    return g.op("Conv", [x, g.const(W.T[:, :, None, None], name + ".weight"),
                         g.const(b, name + ".bias")], name=name, kernel_shape=[1, 1])


def _ref_conv1x1(t, x, W, b):
    """1x1 Conv as a dense layer on the channel axis."""
    h = m64.dense(t, m64.transpose(t, x, (0, 2, 3, 1)), W, b)
    return m64.transpose(t, h, (0, 3, 1, 2))


def poolformer_case(seed=0, literal=False) -> Case:
    """x [N, C, S, S] -> Sub(AveragePool(h1), h2) -> flatten -> head (PoolFormer's token
    mixer). ``literal``: h2 = h1 (pool(h) - h, whose output can come near 0: relative L2);
    otherwise h1 = Conv1x1(x) ~ 3 and h2 = another Conv1x1(x) ~ 0.5, so a - b stays > 1."""
    rng = np.random.default_rng(seed)
    W1, b1 = signed_weight(rng, ones(C), ones(C), scale=1.0)
    b1 = b1 + f32(2.5)
    W2, b2 = signed_weight(rng, ones(C), ones(C), scale=0.2)
    Wh, bh = _head(rng, ones(C * S * S)) if not literal else (
        gaussian(rng, (C * S * S, NUM_CLASSES)), f32(rng.normal(0, 0.1, NUM_CLASSES)))
    g = Graph(17)
    h1 = _conv1x1(g, "x", W1, b1, "proj1")
    h2 = h1 if literal else _conv1x1(g, "x", W2, b2, "proj2")
    d = g.op("Sub", [g.op("AveragePool", [h1], **POOL), h2], name="mixer")
    out = g.dense(g.op("Flatten", [d], axis=1), Wh, bh, name="head")
    model = g.model("x", (C, S, S), out, (NUM_CLASSES,))

    def build(t, x):
        h1 = _ref_conv1x1(t, x, W1, b1)
        h2 = h1 if literal else _ref_conv1x1(t, x, W2, b2)
        d = m64.sub(t, m64.avgpool_norm(t, h1, POOL), h2)
        return m64.dense(t, m64.reshape(t, d, (-1, C * S * S)), Wh, bh)

    return Case("poolformer" + ("-literal" if literal else ""), model, build, (C, S, S),
                conditioned=not literal)


# =============================================================================================
# (g) position embedding, (h) GELU, class token, Gather


def position_case(seed=0) -> Case:
    """x [N, T, D] -> Linear (> 0) -> Add position embedding [1, T, D] -> flatten -> head."""
    rng = np.random.default_rng(seed)
    W1, b1 = signed_weight(rng, ones(D), ones(D))
    pos = f32(rng.uniform(-0.2, 0.6, (1, T, D)))  # h + pos stays > 0
    Wh, bh = _head(rng, ones(T * D))
    g = Graph(17)
    h = g.dense("x", W1, b1, name="fc1")
    h = g.op("Add", [h, g.const(pos, "pos_embedding")], name="add_pos")
    out = g.dense(g.reshape(h, [-1, T * D]), Wh, bh, name="head")
    model = g.model("x", (T, D), out, (NUM_CLASSES,))

    def build(t, x):
        h = m64.add_const(t, m64.dense(t, x, W1, b1), pos)
        return m64.dense(t, m64.reshape(t, h, (-1, T * D)), Wh, bh)

    return Case("position-embedding", model, build, (T, D))


def gelu_case(seed=0) -> Case:
    """x [N, T, D] -> Linear (outputs of both signs, some below -3) -> decomposed GELU ->
    flatten -> head. GELU is `pass`: its relevance must not depend on `stabilizer` (a product
    rule on Mul(h, 1 + erf(h / sqrt 2)) would scale it by c / stab(c))."""
    rng = np.random.default_rng(seed)
    sig = random_signs(rng, D)
    W1, b1 = signed_weight(rng, ones(D), sig, scale=4.0)
    Wh, bh = _head(rng, np.tile(sig, T))
    g = Graph(17)
    h = g.gelu_decomposed(g.dense("x", W1, b1, name="fc1"))
    out = g.dense(g.reshape(h, [-1, T * D]), Wh, bh, name="head")
    model = g.model("x", (T, D), out, (NUM_CLASSES,))

    def build(t, x):
        h = m64.gelu(t, m64.dense(t, x, W1, b1))
        return m64.dense(t, m64.reshape(t, h, (-1, T * D)), Wh, bh)

    return Case("gelu", model, build, (T, D))


def class_token_case(seed=0) -> Case:
    """x [N, T-1, D] -> Linear -> GELU (decomposed) -> Concat(class token, .) -> token-mixing
    Linear (over the token axis) -> Gather(axis 1, index 0) -> head."""
    rng = np.random.default_rng(seed)
    W1, b1 = signed_weight(rng, ones(D), ones(D))  # h > 0: GELU(h) > 0
    cls = f32(rng.uniform(0.2, 1.0, (1, 1, D)))
    Wt, bt = signed_weight(rng, ones(T), ones(T))  # mixes tokens; outputs > 0
    Wh, bh = _head(rng, ones(D))
    g = Graph(17)
    h = g.gelu_decomposed(g.dense("x", W1, b1, name="fc1"))
    h = g.op("Concat", [g.batch_expand(cls, h), h], axis=1, name="cat_cls")
    h = g.transpose(g.dense(g.transpose(h, [0, 2, 1]), Wt, bt, name="token_mix"), [0, 2, 1])
    c = g.op("Gather", [h, g.ints(0, "idx")], axis=1, name="take_cls")
    out = g.dense(c, Wh, bh, name="head")
    model = g.model("x", (T - 1, D), out, (NUM_CLASSES,))

    def build(t, x):
        h = m64.gelu(t, m64.dense(t, x, W1, b1))
        h = m64.concat_const(t, cls, h, axis=1)
        h = m64.transpose(t, m64.dense(t, m64.transpose(t, h, (0, 2, 1)), Wt, bt), (0, 2, 1))
        return m64.dense(t, m64.gather(t, h, 1, 0), Wh, bh)

    return Case("gelu-classtoken-gather", model, build, (T - 1, D))


# =============================================================================================
# (i) a whole tiny ViT block

IMG, PATCH = 8, 4  # 2x2 patches + class token = T tokens


def vit_case(seed=0, attention_from_shape=False, take="gather") -> Case:
    """image [N, 3, 8, 8] -> patch Conv (4x4, stride 4) -> tokens -> Concat(class token) -> Add
    position -> pre-LN attention + residual -> pre-LN MLP (GELU) + residual -> LN -> class token
    -> head. Plain random weights (compare by relative L2). ``take``: the class token is taken
    by Gather(axis 1, index 0) (torch's x[:, 0]) or by Slice(0:1 on axis 1) + Squeeze."""
    rng = np.random.default_rng(seed)
    Wp = (rng.standard_normal((D, 3, PATCH, PATCH)) / math.sqrt(3 * PATCH * PATCH)).astype(
        np.float32)
    bp = f32(rng.normal(0, 0.1, D))
    cls = f32(rng.normal(0, 0.5, (1, 1, D)))
    pos = f32(rng.normal(0, 0.3, (1, T, D)))
    ln = [(f32(rng.uniform(0.5, 1.5, D)), f32(rng.normal(0, 0.2, D))) for _ in range(3)]
    p = _attention_weights(rng, conditioned=False)
    W1, b1 = gaussian(rng, (D, 2 * D)), f32(rng.normal(0, 0.1, 2 * D))
    W2, b2 = gaussian(rng, (2 * D, D)), f32(rng.normal(0, 0.1, D))
    Wh, bh = gaussian(rng, (D, NUM_CLASSES), 2.0), f32(rng.normal(0, 0.1, NUM_CLASSES))
    eps = 1e-6

    g = Graph(17)
    e = g.op("Conv", ["image", g.const(Wp, "patch.weight"), g.const(bp, "patch.bias")],
             name="patch_embed", kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    tok = g.transpose(g.reshape(e, [0, D, -1]), [0, 2, 1])
    h = g.op("Concat", [g.batch_expand(cls, tok), tok], axis=1, name="cat_cls")
    h = g.op("Add", [h, g.const(pos, "pos_embedding")], name="add_pos")
    a = onnx_attention(g, g.layer_norm(h, *ln[0], eps, name="ln1"), p, attention_from_shape)
    h = g.op("Add", [h, a], name="residual1")
    m = g.dense(g.layer_norm(h, *ln[1], eps, name="ln2"), W1, b1, name="mlp.fc1")
    m = g.dense(g.gelu_decomposed(m), W2, b2, name="mlp.fc2")
    h = g.op("Add", [h, m], name="residual2")
    h = g.layer_norm(h, *ln[2], eps, name="ln_final")
    if take == "gather":
        c = g.op("Gather", [h, g.ints(0, "idx")], axis=1, name="take_cls")
    else:
        c = g.op("Slice", [h, g.ints([0]), g.ints([1]), g.ints([1])], name="take_cls")
        c = g.op("Squeeze", [c, g.ints([1], "axes")])
    out = g.dense(c, Wh, bh, name="head")
    model = g.model("image", (3, IMG, IMG), out, (NUM_CLASSES,))

    def build(t, x):
        eps_add = t.cfg.add_eps() if t.cfg.add_rule != "pass" else None
        e = m64.patch_embed(t, x, Wp, bp, first=True)
        tok = m64.transpose(t, m64.reshape(t, e, (-1, D, T - 1)), (0, 2, 1))
        h = m64.add_const(t, m64.concat_const(t, cls, tok, axis=1), pos)
        a = ref_attention(t, m64.layer_norm(t, h, *ln[0], eps), p)
        h = m64.add(t, h, a, eps_add, "residual1")
        m = m64.dense(t, m64.layer_norm(t, h, *ln[1], eps), W1, b1)
        m = m64.dense(t, m64.gelu(t, m), W2, b2)
        h = m64.add(t, h, m, eps_add, "residual2")
        c = m64.gather(t, m64.layer_norm(t, h, *ln[2], eps), 1, 0)
        return m64.dense(t, c, Wh, bh)

    name = "vit-block" + ("-shape-scale" if attention_from_shape else "") + f"-{take}"
    return Case(name, model, build,
                (3, IMG, IMG), low=0.0, high=1.0, conditioned=False)
