"""Float64 numpy reference of SPEC section 7 (transformers and other modern blocks).

Written from SPEC.md sections 3, 4, 5 and 7 only; nothing here comes from ``sglrp_onnx``. A
:class:`Tape` records the forward pass of a test model, op by op, each op with the relevance rule
SPEC gives it; :meth:`Tape.backward` then walks the tape in reverse and sums the relevance of a
tensor over its consumers (SPEC section 5, last row). Test models (``modern_models.py``) call the
op functions below with the same float32 weights that their ONNX graph holds.

Rules (SPEC section 7 table unless said otherwise; stab = Zennit's stabiliser of section 4):
- normalisation (LayerNorm, InstanceNorm, GroupNorm), sigma held at its forward value:
  s = R / stab(y), u = s * gamma / sigma, R_x = x * (u - mean(u)) over the normalised axes;
- attention, CP-LRP (Ali et al. 2022): A = Softmax(...) is a constant,
  R_V = V * A^T (R / stab(A V));
- uniform rule (Achtibat et al. 2024, "AttnLRP", ICML, Eq. 7) for a product C = A B of two computed
  tensors: R_A = 1/2 * A * ((R / stab(C)) B^T), R_B = 1/2 * B * (A^T (R / stab(C))); for the
  elementwise product each factor gets R/2 * C / stab(C);
- AttnLRP's softmax rule (Achtibat et al. 2024, Proposition 3.1, the Taylor decomposition of the
  softmax at its input with the bias term absorbed): R_in = x * (R - y * sum(R)), sums over the
  softmax axis. It equals x * J^T (R / y), J the softmax Jacobian (checked in the tests);
- signed sums: R_a = a R / stab(a - b), R_b = -b R / stab(a - b); residual Add: `norm`;
- Add of a learned constant: `pass`, or with an Add override LRP-0 over x with the constant
  absorbing its share: R_x = x R / stab(x + c) (stabiliser = the override rule's parameter);
- GELU (also decomposed), Mul by constants: `pass`; Concat with a constant: its slice dropped;
  Gather of constant indices on a non-batch axis: relevance back to the gathered positions;
- linear layers (MatMul by a constant + bias, Conv): the composite's rule, section 4. Only the
  `epsilon` composite and `dtd` (zbox on first layers, zplus elsewhere) are written here.

Every division records its conditioning (sum of |terms| over |denominator| where relevance is
live) in ``Tape.kappa`` so that tests can tell well-conditioned inputs from ill-conditioned ones.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .lrp64 import (F32_TINY, avgpool_forward, avgpool_transpose, initial_relevance, softmax64,
                    stab)


@dataclasses.dataclass
class Config:
    """The conversion options a reference run mirrors (names as in ``sglrp_onnx.convert``)."""

    composite: str = "epsilon"
    epsilon: float = 1e-6
    stabilizer: float = 1e-6
    low: float | np.ndarray | None = None
    high: float | np.ndarray | None = None
    add_rule: str = "pass"  # rule of an Add of a learned constant; "epsilon" / "zero" = override
    attention: str = "cp-lrp"  # or "attnlrp"

    def linear_rule(self, first: bool) -> str:
        """SPEC section 4's composite table, for the two composites this reference covers."""
        if self.composite == "epsilon":
            return "epsilon"
        if self.composite == "dtd":
            return "zbox" if first else "zplus"
        raise ValueError(f"composite {self.composite} not in this reference")

    def add_eps(self) -> float:
        """Stabiliser of an overridden Add: `epsilon` uses the epsilon rule's parameter."""
        return self.epsilon if self.add_rule == "epsilon" else self.stabilizer


class Node:
    """A tensor on the tape: its float64 value and an id."""

    def __init__(self, value, ident):
        self.value = np.asarray(value, np.float64)
        self.id = ident

    @property
    def shape(self):
        return self.value.shape


class Tape:
    """Forward values plus, per op, a function from output relevance to input relevances."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.steps = []  # (input nodes, output node, backward)
        self.kappa = []  # (op label, conditioning)
        self._count = 0

    def node(self, value) -> Node:
        self._count += 1
        return Node(value, self._count)

    def record(self, label, inputs, value, backward) -> Node:
        out = self.node(value)
        self.steps.append((label, list(inputs), out, backward))
        return out

    def condition(self, label, R, terms_abs, den):
        """Record max(sum|terms| / |den|) where R is live: the amplification of rounding."""
        R = np.broadcast_to(R, den.shape)
        live = np.abs(R) > 1e-9 * (np.abs(R).max() + 1e-300)
        if live.any():
            k = np.broadcast_to(terms_abs, den.shape)[live] / np.maximum(np.abs(den[live]), 1e-300)
            self.kappa.append((label, float(k.max())))

    def backward(self, out: Node, R) -> dict:
        """Relevance of every node reached from ``out`` (seeded with R), by node id."""
        rel = {out.id: np.asarray(R, np.float64).reshape(out.shape)}
        for label, inputs, node, back in reversed(self.steps):
            if node.id not in rel:
                continue  # no relevance reaches this op (e.g. Q and K under CP-LRP)
            R_out = rel.pop(node.id)
            for inp, R_in in zip(inputs, back(R_out)):
                if inp is None or R_in is None:
                    continue
                R_in = np.broadcast_to(R_in, inp.shape)
                rel[inp.id] = rel[inp.id] + R_in if inp.id in rel else np.array(R_in)
        return rel


# =============================================================================================
# linear layers (SPEC section 4)


def _pos(a):
    return np.maximum(a, 0)


def _neg(a):
    return np.minimum(a, 0)


def _dense_relevance(t: Tape, label, x, W, b, R, rule, low=None, high=None):
    """R_in of z = x @ W + b (x [..., Din], W [Din, Dout]) under one section-4 rule."""
    cfg = t.cfg
    b = np.zeros(W.shape[1]) if b is None else b
    if rule == "epsilon" or rule == "zero":
        eps = cfg.epsilon if rule == "epsilon" else cfg.stabilizer
        z = x @ W + b
        t.condition(label, R, np.abs(x) @ np.abs(W) + np.abs(b), z)
        return x * ((R / stab(z, eps)) @ W.T)
    if rule == "zplus":
        Wp, Wn = _pos(W), _neg(W)
        z = _pos(x) @ Wp + _pos(b) + _neg(x) @ Wn
        t.condition(label, R, np.abs(z), z)
        s = R / stab(z, cfg.stabilizer)
        return _pos(x) * (s @ Wp.T) + _neg(x) * (s @ Wn.T)
    if rule == "zbox":
        Wp, Wn = _pos(W), _neg(W)
        z = x @ W - low @ Wp - high @ Wn
        terms = np.abs(x) @ np.abs(W) + np.abs(low) @ Wp + np.abs(high) @ np.abs(Wn)
        t.condition(label, R, terms, z)
        s = R / stab(z, cfg.stabilizer)
        return x * (s @ W.T) - low * (s @ Wp.T) - high * (s @ Wn.T)
    raise ValueError(rule)


def dense(t: Tape, x: Node, W, b=None, first=False, label="dense") -> Node:
    """MatMul by a constant (plus a bias Add): y = x @ W + b on the last axis."""
    W = np.asarray(W, np.float64)
    b = None if b is None else np.asarray(b, np.float64)
    y = x.value @ W + (0 if b is None else b)
    rule = t.cfg.linear_rule(first)

    def back(R):
        low = high = None
        if rule == "zbox":
            low = np.broadcast_to(np.asarray(t.cfg.low, np.float64), x.shape)
            high = np.broadcast_to(np.asarray(t.cfg.high, np.float64), x.shape)
        return [_dense_relevance(t, label, x.value, W, b, R, rule, low, high)]

    return t.record(label, [x], y, back)


def _patchify(img, p):
    """[N, C, H, W] -> [N, H/p * W/p, C*p*p] (rows: patches in raster order)."""
    N, C, H, W = img.shape
    a = img.reshape(N, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)
    return a.reshape(N, (H // p) * (W // p), C * p * p)


def _unpatchify(cols, shape, p):
    N, C, H, W = shape
    a = cols.reshape(N, H // p, W // p, C, p, p).transpose(0, 3, 1, 4, 2, 5)
    return a.reshape(shape)


def patch_embed(t: Tape, img: Node, Wc, bc, first=True, label="patch_embed") -> Node:
    """Conv with kernel = stride = p and no padding (a ViT patch embedding), written as a dense
    layer on the image's patches: output [N, D, H/p, W/p] like the Conv."""
    Wc = np.asarray(Wc, np.float64)
    D, C, p, _ = Wc.shape
    N, _, H, Wd = img.shape
    W = Wc.reshape(D, C * p * p).T
    b = np.asarray(bc, np.float64)
    cols = _patchify(img.value, p)
    y = (cols @ W + b).reshape(N, H // p, Wd // p, D).transpose(0, 3, 1, 2)
    rule = t.cfg.linear_rule(first)

    def back(R):
        Rc = R.transpose(0, 2, 3, 1).reshape(N, -1, D)
        low = high = None
        if rule == "zbox":
            low = _patchify(_bounds_image(t.cfg.low, img.shape), p)
            high = _patchify(_bounds_image(t.cfg.high, img.shape), p)
        return [_unpatchify(_dense_relevance(t, label, cols, W, b, Rc, rule, low, high),
                            img.shape, p)]

    return t.record(label, [img], y, back)


def _bounds_image(v, shape):
    """Scalar or per-channel (axis 1, NCHW) bound as an image-shaped array."""
    v = np.asarray(v, np.float64)
    if v.size > 1:
        v = v.reshape(1, -1, 1, 1)
    return np.broadcast_to(v, shape)


# =============================================================================================
# normalisation layers (SPEC section 7, first row)


def normalize(t: Tape, x: Node, axes, gamma, beta, eps, label="norm") -> Node:
    """y = gamma * (x - mean) / sigma + beta over ``axes`` (sigma = sqrt(var + eps), population
    variance); gamma/beta broadcast against x. Relevance with sigma held constant."""
    axes = tuple(a % x.value.ndim for a in axes)
    xv = x.value
    mean = xv.mean(axis=axes, keepdims=True)
    sigma = np.sqrt(((xv - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    gamma = np.asarray(gamma, np.float64)
    beta = np.asarray(beta, np.float64)
    y = gamma * (xv - mean) / sigma + beta

    def back(R):
        t.condition(label, R, np.abs(gamma * (xv - mean) / sigma) + np.abs(beta), y)
        s = R / stab(y, t.cfg.stabilizer)
        u = s * gamma / sigma
        return [xv * (u - u.mean(axis=axes, keepdims=True))]

    return t.record(label, [x], y, back)


def rms_norm(t: Tape, x: Node, gamma, eps, label="rmsnorm") -> Node:
    """y = gamma * x / rms over the last axis, rms = sqrt(mean(x^2) + eps); rms held constant
    (SPEC section 7: the normalisation rule without centering): R_x = x * s * gamma / rms."""
    xv = x.value
    rms = np.sqrt((xv ** 2).mean(axis=-1, keepdims=True) + eps)
    gamma = np.asarray(gamma, np.float64)
    y = gamma * xv / rms

    def back(R):
        t.condition(label, R, np.abs(y), y)
        return [xv * gamma / rms * R / stab(y, t.cfg.stabilizer)]

    return t.record(label, [x], y, back)


def layer_norm(t, x, gamma, beta, eps=1e-5, label="layernorm"):
    """LayerNormalization over the last axis."""
    return normalize(t, x, (-1,), gamma, beta, eps, label)


def group_norm(t, x, groups, gamma, beta, eps=1e-5, label="groupnorm"):
    """GroupNorm on [N, C, ...]: statistics per (sample, group), gamma/beta per channel. Written
    as a normalisation over the group's axes of an [N, G, C/G, ...] view."""
    shp = x.shape
    N, C = shp[:2]
    view = reshape(t, x, (N, groups, C // groups) + shp[2:])
    g = np.asarray(gamma, np.float64).reshape((1, groups, C // groups) + (1,) * (len(shp) - 2))
    b = np.asarray(beta, np.float64).reshape(g.shape)
    y = normalize(t, view, tuple(range(2, len(shp) + 1)), g, b, eps, label)
    return reshape(t, y, shp)


# =============================================================================================
# attention and products of computed tensors


def attention_values(t: Tape, A, v: Node, label="attn_AV") -> Node:
    """CP-LRP: out = A @ V with A a constant (the softmax output, a plain array)."""
    A = np.asarray(A, np.float64)
    y = A @ v.value

    def back(R):
        t.condition(label, R, np.abs(A) @ np.abs(v.value), y)
        s = R / stab(y, t.cfg.stabilizer)
        return [v.value * (np.swapaxes(A, -1, -2) @ s)]

    return t.record(label, [v], y, back)


def matmul_uniform(t: Tape, a: Node, b: Node, label="matmul_uniform") -> Node:
    """C = a @ b of two computed tensors, uniform rule (AttnLRP Eq. 7)."""
    y = a.value @ b.value

    def back(R):
        t.condition(label, R, np.abs(a.value) @ np.abs(b.value), y)
        s = R / stab(y, t.cfg.stabilizer)
        return [0.5 * a.value * (s @ np.swapaxes(b.value, -1, -2)),
                0.5 * b.value * (np.swapaxes(a.value, -1, -2) @ s)]

    return t.record(label, [a, b], y, back)


def mul_uniform(t: Tape, a: Node, b: Node, label="mul_uniform") -> Node:
    """Elementwise C = a * b of two computed tensors: each gets half, R/2 * C / stab(C)."""
    y = a.value * b.value

    def back(R):
        t.condition(label, R, np.abs(y), y)
        half = 0.5 * y * R / stab(y, t.cfg.stabilizer)
        return [half, half]

    return t.record(label, [a, b], y, back)


def softmax_attnlrp(t: Tape, x: Node, label="softmax") -> Node:
    """Softmax over the last axis with AttnLRP's rule R_in = x * (R - y * sum(R))."""
    y = softmax64(x.value)

    def back(R):
        return [x.value * (R - y * R.sum(axis=-1, keepdims=True))]

    return t.record(label, [x], y, back)


# =============================================================================================
# sums, constants, shape operations


def add(t: Tape, a: Node, b: Node, eps=None, label="add") -> Node:
    """Residual Add of two computed tensors: `norm` (LRP-0 over the summands)."""
    y = a.value + b.value

    def back(R):
        e = t.cfg.stabilizer if eps is None else eps
        t.condition(label, R, np.abs(a.value) + np.abs(b.value), y)
        s = R / stab(y, e)
        return [a.value * s, b.value * s]

    return t.record(label, [a, b], y, back)


def sub(t: Tape, a: Node, b: Node, label="sub") -> Node:
    """Signed sum a - b: R_a = a R / stab(a - b), R_b = -b R / stab(a - b)."""
    y = a.value - b.value

    def back(R):
        t.condition(label, R, np.abs(a.value) + np.abs(b.value), y)
        s = R / stab(y, t.cfg.stabilizer)
        return [a.value * s, -b.value * s]

    return t.record(label, [a, b], y, back)


def add_const(t: Tape, x: Node, c, label="add_const") -> Node:
    """Add of a learned constant (position embedding): `pass`, or with an Add override
    R_x = x R / stab(x + c), the constant absorbing its share."""
    c = np.asarray(c, np.float64)
    y = x.value + c
    rule = t.cfg.add_rule

    def back(R):
        if rule == "pass":
            return [R]
        t.condition(label, R, np.abs(x.value) + np.abs(c), y)
        return [x.value * R / stab(y, t.cfg.add_eps())]

    return t.record(label, [x], y, back)


def passthrough(t: Tape, x: Node, fn, label="pass") -> Node:
    """An elementwise op with the `pass` rule (GELU, Mul by a constant)."""
    return t.record(label, [x], fn(x.value), lambda R: [R])


def gelu(t: Tape, x: Node, label="gelu") -> Node:
    """Exact (erf) GELU, `pass` rule."""
    erf = np.vectorize(math.erf)
    return passthrough(t, x, lambda v: 0.5 * v * (1.0 + erf(v / math.sqrt(2.0))), label)


def reshape(t: Tape, x: Node, shape, label="reshape") -> Node:
    return t.record(label, [x], x.value.reshape(shape), lambda R: [R.reshape(x.shape)])


def transpose(t: Tape, x: Node, perm, label="transpose") -> Node:
    inv = np.argsort(perm)
    return t.record(label, [x], x.value.transpose(perm), lambda R: [R.transpose(inv)])


def concat_const(t: Tape, const, x: Node, axis, label="concat") -> Node:
    """Concat(const, x) along ``axis`` (const broadcast over the batch): the constant's slice of
    the relevance is dropped."""
    c = np.asarray(const, np.float64)
    c = np.broadcast_to(c, (x.shape[0],) + c.shape[1:])
    y = np.concatenate([c, x.value], axis=axis)
    n = c.shape[axis]

    def back(R):
        return [np.take(R, np.arange(n, R.shape[axis]), axis=axis)]

    return t.record(label, [x], y, back)


def gather(t: Tape, x: Node, axis, index, label="gather") -> Node:
    """Gather of one index on a non-batch axis (the axis is removed, as for a scalar index)."""
    y = np.take(x.value, index, axis=axis)

    def back(R):
        out = np.zeros(x.shape)
        idx = [slice(None)] * x.value.ndim
        idx[axis] = index
        out[tuple(idx)] = R
        return [out]

    return t.record(label, [x], y, back)


def avgpool_norm(t: Tape, x: Node, attrs, label="avgpool") -> Node:
    """AveragePool with SPEC section 5's `norm` rule (lrp64's pooling arithmetic)."""
    y = avgpool_forward(x.value, attrs)

    def back(R):
        t.condition(label, R, avgpool_forward(np.abs(x.value), attrs), y)
        s = R / stab(y, t.cfg.stabilizer)
        return [x.value * avgpool_transpose(s, x.value, attrs)]

    return t.record(label, [x], y, back)


# =============================================================================================
# one explanation


@dataclasses.dataclass
class Result:
    logits: np.ndarray
    explained_class: np.ndarray
    relevance: np.ndarray
    initial: np.ndarray
    kappa: list

    @property
    def max_kappa(self) -> float:
        return max([k for _, k in self.kappa], default=1.0)


def explain(build, x, targets, method="sglrp", cfg: Config | None = None, contrast=None,
            positive=False) -> Result:
    """Reference relevance of ``build`` (a function (tape, input node) -> logits node) for a batch
    x and targets (SPEC section 3): ``signed`` propagates target minus dual once, ``scaled``
    propagates both parts and returns A_t - A_d * sum(A_t) / sum(A_d) per image."""
    cfg = cfg or Config()
    if contrast is None:
        contrast = {"lrp": "signed", "clrp": "scaled", "sglrp": "signed"}[method]
    tape = Tape(cfg)
    xin = tape.node(x)
    logits = build(tape, xin)
    z = logits.value.reshape(len(x), -1)
    K = z.shape[1]
    t = np.asarray(targets, np.int64).copy()
    t = np.where(t < 0, np.argmax(z, axis=1), t)
    t = np.where(t >= K, -1, t)
    At, Ad = initial_relevance(z, t, method)

    def propagate(R0):
        rel = tape.backward(logits, R0.reshape(logits.shape))
        return np.array(rel.get(xin.id, np.zeros(x.shape)))

    if method == "lrp" or contrast == "signed":
        R = propagate(At - Ad)
    elif contrast == "scaled":
        R_t, R_d = propagate(At), propagate(Ad)
        R = np.empty_like(R_t)
        for i in range(len(x)):
            st, sd = R_t[i].sum(), R_d[i].sum()
            small = abs(sd) < 1e-12 * np.abs(R_d[i]).sum() + F32_TINY
            R[i] = R_t[i] if small else R_t[i] - R_d[i] * (st / sd)
    else:
        raise ValueError(contrast)
    if positive:
        R = np.maximum(R, 0)
    R[t < 0] = 0
    return Result(z, t, R, At - Ad, tape.kappa)
