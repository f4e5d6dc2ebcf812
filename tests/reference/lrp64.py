"""Float64 numpy reference of SPEC sections 3 to 5, computed directly from a NetSpec's weights.

Nothing here comes from ``sglrp_onnx``: the forward pass, the canonicalisation (BN / constant
folding, MatMul+Add), the rules and the methods are written again from SPEC.md, with explicit
loops over kernel offsets for Conv / pooling and their transposes. Correctness over speed: keep the
test models small.

Entry points: :func:`forward` (all tensors of the original graph) and :func:`explain` (logits,
explained class, relevance, plus a conditioning report).
"""

from __future__ import annotations

import dataclasses
import fnmatch

import numpy as np

from .netspec import NetSpec, pool_out_size, resolve_conv_pads, slice_index

F32_TINY = float(np.finfo(np.float32).tiny)
COMPOSITES = ("dtd", "epsilon-gamma-box", "epsilon-plus", "epsilon-plus-flat",
              "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat", "epsilon")
RULES = ("epsilon", "zero", "zplus", "alphabeta", "gamma", "zbox", "wsquare", "flat", "pass",
         "norm")


def stab(z, eps):
    """Zennit's stabiliser: z + eps where z >= 0, z - eps where z < 0."""
    return z + np.where(z >= 0, eps, -eps)


# =============================================================================================
# explicit Conv / pooling math on [N, C, H, W] (1D data is handled as H = 1)


def _as2d(x):
    return x[:, :, None, :] if x.ndim == 3 else x


def _conv_params2d(nd, kernel, strides, dilations, pads):
    if nd == 1:
        return [1] + list(kernel), [1] + list(strides), [1] + list(dilations), \
            [0, pads[0], 0, pads[1]]
    return list(kernel), list(strides), list(dilations), list(pads)


def _slices(k_idx, d, s, n_out):
    start = k_idx * d
    return slice(start, start + (n_out - 1) * s + 1, s)


def conv_forward(x, W, b, strides, dilations, pads, group):
    """ONNX Conv. x [N, C, *sp], W [M, C/group, *k], pads [b.., e..] explicit."""
    nd = x.ndim - 2
    k, s, d, p = _conv_params2d(nd, W.shape[2:], strides, dilations, pads)
    x2 = _as2d(x)
    W2 = W.reshape(W.shape[0], W.shape[1], *k)
    N, C, H, Wd = x2.shape
    M, Cg = W2.shape[:2]
    G = group
    Mg = M // G
    xp = np.pad(x2, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    OH = (H + p[0] + p[2] - (k[0] - 1) * d[0] - 1) // s[0] + 1
    OW = (Wd + p[1] + p[3] - (k[1] - 1) * d[1] - 1) // s[1] + 1
    Wg = W2.reshape(G, Mg, Cg, k[0], k[1])
    out = np.zeros((N, G, Mg, OH, OW))
    for kh in range(k[0]):
        for kw in range(k[1]):
            sl = xp[:, :, _slices(kh, d[0], s[0], OH), _slices(kw, d[1], s[1], OW)]
            out += np.einsum("ngchw,gmc->ngmhw", sl.reshape(N, G, Cg, OH, OW), Wg[..., kh, kw])
    out = out.reshape(N, M, OH, OW)
    if b is not None:
        out = out + np.asarray(b).reshape(1, M, 1, 1)
    return out[:, :, 0, :] if nd == 1 else out


def conv_transpose(sgrad, W, in_shape, strides, dilations, pads, group):
    """Transpose of conv_forward's linear part: maps an output-shaped tensor to input shape."""
    nd = len(in_shape) - 2
    k, s, d, p = _conv_params2d(nd, W.shape[2:], strides, dilations, pads)
    s2 = _as2d(sgrad)
    W2 = W.reshape(W.shape[0], W.shape[1], *k)
    N, M, OH, OW = s2.shape
    C = in_shape[1]
    H, Wd = (1, in_shape[2]) if nd == 1 else (in_shape[2], in_shape[3])
    G = group
    Mg, Cg = M // G, W2.shape[1]
    Wg = W2.reshape(G, Mg, Cg, k[0], k[1])
    sg = s2.reshape(N, G, Mg, OH, OW)
    gxp = np.zeros((N, C, H + p[0] + p[2], Wd + p[1] + p[3]))
    for kh in range(k[0]):
        for kw in range(k[1]):
            contrib = np.einsum("ngmhw,gmc->ngchw", sg, Wg[..., kh, kw]).reshape(N, C, OH, OW)
            gxp[:, :, _slices(kh, d[0], s[0], OH), _slices(kw, d[1], s[1], OW)] += contrib
    g = gxp[:, :, p[0]:p[0] + H, p[1]:p[1] + Wd]
    return g[:, :, 0, :] if nd == 1 else g


def _pool_setup(x, attrs, fill):
    nd = x.ndim - 2
    k, s, d, p = _conv_params2d(nd, attrs["kernel_shape"], attrs["strides"],
                                attrs.get("dilations", [1] * nd), attrs["pads"])
    x2 = _as2d(x)
    N, C, H, Wd = x2.shape
    ceil = attrs.get("ceil_mode", 0)
    OH = pool_out_size(H, k[0], s[0], d[0], p[0], p[2], ceil)
    OW = pool_out_size(Wd, k[1], s[1], d[1], p[1], p[3], ceil)
    # extra room at the tail for ceil_mode windows that run past the padded input
    eh = max(0, (OH - 1) * s[0] + (k[0] - 1) * d[0] + 1 - (H + p[0] + p[2]))
    ew = max(0, (OW - 1) * s[1] + (k[1] - 1) * d[1] + 1 - (Wd + p[1] + p[3]))
    xp = np.pad(x2, ((0, 0), (0, 0), (p[0], p[2] + eh), (p[1], p[3] + ew)),
                constant_values=fill)
    return nd, k, s, d, p, (N, C, H, Wd), (OH, OW), xp


def maxpool_forward(x, attrs, return_index=False):
    nd, k, s, d, p, (N, C, H, Wd), (OH, OW), xp = _pool_setup(x, attrs, -np.inf)
    wins = np.stack([xp[:, :, _slices(kh, d[0], s[0], OH), _slices(kw, d[1], s[1], OW)]
                     for kh in range(k[0]) for kw in range(k[1])], axis=-1)
    idx = np.argmax(wins, axis=-1)  # first maximum in scan order (kernel rows, then columns)
    out = np.take_along_axis(wins, idx[..., None], -1)[..., 0]
    out = out[:, :, 0, :] if nd == 1 else out
    if return_index:
        srt = np.sort(wins, axis=-1)
        gap = srt[..., -1] - srt[..., -2] if wins.shape[-1] > 1 else np.full(out.shape, np.inf)
        return out, idx, gap
    return out


def maxpool_backward(R, x, attrs):
    nd, k, s, d, p, (N, C, H, Wd), (OH, OW), xp = _pool_setup(x, attrs, -np.inf)
    _, idx, _ = maxpool_forward(x, attrs, return_index=True)
    R2 = _as2d(R)
    g = np.zeros(xp.shape)
    j = 0
    for kh in range(k[0]):
        for kw in range(k[1]):
            g[:, :, _slices(kh, d[0], s[0], OH), _slices(kw, d[1], s[1], OW)] += R2 * (idx == j)
            j += 1
    g = g[:, :, p[0]:p[0] + H, p[1]:p[1] + Wd]
    return g[:, :, 0, :] if nd == 1 else g


def _avg_counts(attrs, n, k, s, p0, p1, n_out):
    cip = attrs.get("count_include_pad", 0)
    cnt = np.zeros(n_out)
    for o in range(n_out):
        for kk in range(k):
            pos = o * s + kk  # padded coordinate
            if cip:
                cnt[o] += 0 <= pos < n + p0 + p1
            else:
                cnt[o] += p0 <= pos < p0 + n
    return cnt


def avgpool_forward(x, attrs):
    nd, k, s, d, p, (N, C, H, Wd), (OH, OW), xp = _pool_setup(x, attrs, 0.0)
    tot = sum(xp[:, :, _slices(kh, 1, s[0], OH), _slices(kw, 1, s[1], OW)]
              for kh in range(k[0]) for kw in range(k[1]))
    cnt = np.outer(_avg_counts(attrs, H, k[0], s[0], p[0], p[2], OH),
                   _avg_counts(attrs, Wd, k[1], s[1], p[1], p[3], OW))
    out = tot / cnt
    return out[:, :, 0, :] if nd == 1 else out


def avgpool_transpose(sgrad, x, attrs):
    nd, k, s, d, p, (N, C, H, Wd), (OH, OW), xp = _pool_setup(x, attrs, 0.0)
    cnt = np.outer(_avg_counts(attrs, H, k[0], s[0], p[0], p[2], OH),
                   _avg_counts(attrs, Wd, k[1], s[1], p[1], p[3], OW))
    s2 = _as2d(sgrad) / cnt
    g = np.zeros(xp.shape)
    for kh in range(k[0]):
        for kw in range(k[1]):
            g[:, :, _slices(kh, 1, s[0], OH), _slices(kw, 1, s[1], OW)] += s2
    g = g[:, :, p[0]:p[0] + H, p[1]:p[1] + Wd]
    return g[:, :, 0, :] if nd == 1 else g


def _conv_attrs(layer, in_shape):
    a = layer.attrs
    W = layer.params["W"]
    sp = list(in_shape[2:])
    pads = resolve_conv_pads(sp, list(W.shape[2:]), a["strides"], a["dilations"], a.get("pads"),
                             a.get("auto_pad"))
    return dict(strides=a["strides"], dilations=a["dilations"], pads=pads, group=a["group"])


def _bn(x, p, eps):
    shp = (1, -1) + (1,) * (x.ndim - 2)
    inv = p["scale"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + eps)
    return (x - p["mean"].reshape(shp)) * inv.reshape(shp) + p["B"].reshape(shp)


def _affine(x, a):
    c = np.asarray(a["const"], np.float64)
    lhs, rhs = (c, x) if a.get("reverse") else (x, c)
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[a["kind"]](
        lhs, rhs)


def _source_coordinate(o, n_in, n_out, scale, mode, roi):
    """Where output position o samples the input (ONNX Resize's coordinate transformations,
    written from the operator's definition, in float64)."""
    if mode == "asymmetric":
        return o / scale
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if n_out > 1 else 0.0
    if mode == "align_corners":
        return 0.0 if n_out == 1 else o * (n_in - 1) / (n_out - 1)
    if mode == "tf_half_pixel_for_nn":
        return (o + 0.5) / scale
    if mode == "half_pixel_symmetric":
        return n_in / 2 * (1 - n_out / (scale * n_in)) + (o + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        if n_out == 1:
            return 0.5 * (lo + hi) * (n_in - 1)
        return lo * (n_in - 1) + o * (hi - lo) * (n_in - 1) / (n_out - 1)
    raise ValueError(mode)


def resize_maps(in_shape, a):
    """[(axis, M [out, in])] of a Resize: nearest picks one pixel, linear mixes the two around
    the source coordinate (clamped to the input); tf_crop_and_resize is 0 outside the input."""
    rank = len(in_shape)
    axes = a.get("axes", list(range(rank)))
    scales = [1.0] * rank
    outs = list(in_shape)
    for i, axis in enumerate(axes):
        if a.get("sizes") is not None:
            outs[axis] = a["sizes"][i]
            scales[axis] = outs[axis] / in_shape[axis]
        else:
            scales[axis] = float(np.float32(a["scales"][i]))
            outs[axis] = int(np.floor(in_shape[axis] * scales[axis]))
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    nearest = a.get("nearest_mode", "round_prefer_floor")
    roi = a.get("roi")
    maps = []
    for axis in range(rank):
        if scales[axis] == 1.0:
            continue
        n_in, n_out = in_shape[axis], outs[axis]
        M = np.zeros((n_out, n_in))
        for o in range(n_out):
            span = (roi[axis], roi[rank + axis]) if roi is not None else (0.0, 1.0)
            c = _source_coordinate(o, n_in, n_out, scales[axis], ctm, span)
            if ctm == "tf_crop_and_resize" and not 0 <= c <= n_in - 1:
                continue  # extrapolation value 0
            if a["mode"] == "nearest":
                i = {"round_prefer_floor": np.ceil(c - 0.5), "round_prefer_ceil": np.floor(c + 0.5),
                     "floor": np.floor(c), "ceil": np.ceil(c)}[nearest]
                M[o, int(min(max(i, 0), n_in - 1))] = 1.0
            else:
                c = min(max(c, 0.0), n_in - 1.0)
                i0 = int(np.floor(c))
                i1 = min(i0 + 1, n_in - 1)
                M[o, i0] += 1.0 - (c - i0)
                M[o, i1] += c - i0
        maps.append((axis, M))
    return maps


def _reshape_target(in_shape, shape):
    return [in_shape[i] if v == 0 else v for i, v in enumerate(shape)]


# =============================================================================================
# forward of the original graph


def forward(spec: NetSpec, x) -> dict:
    """Every tensor of the original (unfolded) graph, in float64."""
    T = {spec.input_name: np.asarray(x, np.float64)}
    for L in spec.layers:
        xs = [T[i] for i in L.inputs]
        x0 = xs[0]
        a, p, op = L.attrs, {k: np.asarray(v, np.float64) for k, v in L.params.items()}, L.op
        if op == "Conv":
            y = conv_forward(x0, p["W"], p.get("B"), **_conv_attrs(L, x0.shape))
        elif op == "Gemm":
            W = p["W"].T if a["transB"] else p["W"]
            y = a["alpha"] * (x0 @ W)
            if "C" in p:
                y = y + a["beta"] * p["C"]
        elif op == "MatMul":
            y = x0 @ p["W"] + (p["B"] if "B" in p else 0.0)
        elif op == "BatchNormalization":
            y = _bn(x0, p, a["epsilon"])
        elif op == "Relu":
            y = np.maximum(x0, 0)
        elif op == "LeakyRelu":
            y = np.where(x0 >= 0, x0, a["alpha"] * x0)
        elif op == "Clip":
            y = np.clip(x0, a["min"], a["max"])
        elif op == "Sigmoid":
            y = 1 / (1 + np.exp(-x0))
        elif op == "Tanh":
            y = np.tanh(x0)
        elif op == "MaxPool":
            y = maxpool_forward(x0, a)
        elif op == "AveragePool":
            y = avgpool_forward(x0, a)
        elif op == "GlobalAveragePool":
            y = x0.mean(axis=tuple(range(2, x0.ndim)), keepdims=True)
        elif op == "ReduceMean":
            y = x0.mean(axis=tuple(a["axes"]), keepdims=bool(a["keepdims"]))
        elif op in ("Add", "Sum"):
            y = sum(xs)
        elif op == "Concat":
            y = np.concatenate(xs, axis=a["axis"])
        elif op == "Flatten":
            y = x0.reshape(x0.shape[0], -1)
        elif op == "Reshape":
            y = x0.reshape(_reshape_target(x0.shape, a["shape"]))
        elif op == "Squeeze":
            y = np.squeeze(x0, axis=tuple(a["axes"]))
        elif op == "Unsqueeze":
            y = np.expand_dims(x0, axis=tuple(a["axes"]))
        elif op == "Transpose":
            y = np.transpose(x0, a["perm"])
        elif op == "Pad":
            r = x0.ndim
            y = np.pad(x0, [(a["pads"][i], a["pads"][i + r]) for i in range(r)])
        elif op in ("Dropout", "Identity"):
            y = x0
        elif op == "Affine":
            y = _affine(x0, a)
        elif op == "ReduceSum":
            y = x0.sum(axis=tuple(a["axes"]), keepdims=bool(a["keepdims"]))
        elif op == "Gather":
            y = np.take(x0, a["indices"], axis=a["axis"])
        elif op == "Slice":
            y = x0[slice_index(x0.ndim, a)]
        elif op == "Resize":
            y = x0
            for axis, M in resize_maps(x0.shape, a):
                y = np.moveaxis(np.tensordot(M, np.moveaxis(y, axis, 0), axes=1), 0, axis)
        elif op == "Softmax":
            e = np.exp(x0 - x0.max(axis=-1, keepdims=True))
            y = e / e.sum(axis=-1, keepdims=True)
        else:
            raise ValueError(op)
        T[L.output] = y
    return T


# =============================================================================================
# canonical graph for relevance


@dataclasses.dataclass
class Lin:
    """A linear layer after folding: Conv (kind 'conv') or dense (kind 'dense', W [in, out])."""
    name: str
    op_type: str
    kind: str
    inp: str
    out: str
    W: np.ndarray
    b: np.ndarray
    conv: dict | None = None

    def f(self, a, W=None, b=None):
        W = self.W if W is None else W
        b = self.b if b is None else b
        if self.kind == "dense":
            return a @ W + b
        return conv_forward(a, W, b, **self.conv)

    def fT(self, s, W, in_shape):
        if self.kind == "dense":
            return s @ W.T
        return conv_transpose(s, W, in_shape, **self.conv)


@dataclasses.dataclass
class Node:
    """Any other op on the relevance path."""
    name: str
    op: str
    inputs: list
    out: str
    attrs: dict
    params: dict


class Canonical:
    def __init__(self, spec: NetSpec):
        self.spec = spec
        T0 = forward(spec, np.zeros((1,) + tuple(spec.input_shape)))
        self.shapes = {k: v.shape for k, v in T0.items()}
        alias = {}

        def res(t):
            while t in alias:
                t = alias[t]
            return t

        consumers = {}
        for L in spec.layers:
            for i in L.inputs:
                consumers[res(i)] = consumers.get(res(i), 0) + 1
        # logits: the input of a final Softmax, else the output
        last = spec.layer_by_output().get(spec.output)
        self.logits = last.inputs[0] if last is not None and last.op == "Softmax" else spec.output
        self.nodes = []
        by_out = {}
        for L in spec.layers:
            ins = [res(i) for i in L.inputs]
            p = {k: np.asarray(v, np.float64) for k, v in L.params.items()}
            a = L.attrs
            if L.op in ("Dropout", "Identity"):
                alias[L.output] = ins[0]
                consumers[ins[0]] = consumers.get(ins[0], 0) + consumers.get(L.output, 0) - 1
                continue
            if L.op == "Softmax" and L.output == spec.output:
                continue
            prev = by_out.get(ins[0])
            foldable = (isinstance(prev, Lin) and consumers.get(ins[0], 0) == 1
                        and ins[0] != self.logits and ins[0] != spec.output)
            if L.op == "BatchNormalization" and foldable:
                inv = p["scale"] / np.sqrt(p["var"] + a["epsilon"])
                self._scale_out(prev, inv)
                prev.b = (prev.b - p["mean"]) * inv + p["B"]
                self._rebind(prev, L.output, by_out)
                continue
            rev = bool(a.get("reverse"))
            if L.op == "Affine" and foldable and not (rev and a["kind"] == "Div"):
                c = self._per_channel(prev, np.asarray(a["const"], np.float64))
                if c is not None:
                    k = a["kind"]
                    if k == "Sub" and rev:  # c - y = -y + c: a per-channel affine map as well
                        self._scale_out(prev, -np.ones_like(c))
                        prev.b = c - prev.b
                    elif k == "Mul":
                        self._scale_out(prev, c)
                        prev.b = prev.b * c
                    elif k == "Div":
                        self._scale_out(prev, 1 / c)
                        prev.b = prev.b / c
                    elif k == "Add":
                        prev.b = prev.b + c
                    else:
                        prev.b = prev.b - c
                    self._rebind(prev, L.output, by_out)
                    continue
            if L.op == "Conv":
                in_shape = self.shapes[ins[0]]
                n = Lin(L.name, "Conv", "conv", ins[0], L.output, p["W"].copy(),
                        p["B"].copy() if "B" in p else np.zeros(p["W"].shape[0]),
                        _conv_attrs(L, in_shape))
            elif L.op == "Gemm":
                W = (p["W"].T if a["transB"] else p["W"]) * a["alpha"]
                b = p["C"] * a["beta"] if "C" in p else np.zeros(W.shape[1])
                n = Lin(L.name, "Gemm", "dense", ins[0], L.output, W.copy(), b)
            elif L.op == "MatMul":
                n = Lin(L.name, "MatMul", "dense", ins[0], L.output, p["W"].copy(),
                        p["B"].copy() if "B" in p else np.zeros(p["W"].shape[1]))
            else:
                n = Node(L.name, L.op, ins, L.output, a, p)
            self.nodes.append(n)
            by_out[L.output] = n
        self.alias = alias
        self.logits = res(self.logits)
        self.first_layers = self._first_layers()

    @staticmethod
    def _scale_out(lin, c):
        if lin.kind == "dense":
            lin.W = lin.W * c.reshape(1, -1)
        else:
            lin.W = lin.W * c.reshape((-1,) + (1,) * (lin.W.ndim - 1))

    def _per_channel(self, lin, c):
        """The constant as one value per output channel, or None where it is not per channel."""
        n_out = lin.W.shape[1] if lin.kind == "dense" else lin.W.shape[0]
        if c.size == 1:
            return np.full(n_out, float(c.reshape(-1)[0]))
        shp = self.shapes[lin.out]
        if c.ndim > len(shp):
            return None
        cs = (1,) * (len(shp) - c.ndim) + tuple(c.shape)
        ch_axis = 1
        if cs[ch_axis] == n_out and all(v == 1 for i, v in enumerate(cs) if i != ch_axis):
            return c.reshape(-1)
        return None

    @staticmethod
    def _rebind(lin, new_out, by_out):
        del by_out[lin.out]
        lin.out = new_out
        by_out[new_out] = lin

    def _first_layers(self):
        reach = {self.spec.input_name}
        first = set()
        for n in self.nodes:  # topological order
            if isinstance(n, Lin):
                if n.inp in reach:
                    first.add(n.name)
            elif any(i in reach for i in n.inputs):
                reach.add(n.out)
        return first

    def input_bounds(self, low, high, T=None):
        """Per-element bounds for every tensor between the image and the first layers (shapes
        from the forward tensors T where given, else from the spec)."""
        spec = self.spec
        shapes = {k: v.shape for k, v in T.items()} if T is not None else self.shapes
        shp = (1,) + tuple(shapes[spec.input_name][1:])
        ax = spec.channel_axis

        def expand(v):
            v = np.asarray(v, np.float64)
            if v.size == 1:
                return np.full(shp, float(v.reshape(-1)[0]))
            bs = [1] * len(shp)
            bs[ax] = -1
            return np.broadcast_to(v.reshape(bs), shp).copy()

        B = {spec.input_name: (expand(low), expand(high))}
        for n in self.nodes:
            if isinstance(n, Lin) or n.inputs[0] not in B:
                continue
            lo, hi = B[n.inputs[0]]
            a = n.attrs
            if n.op == "Transpose":
                B[n.out] = (np.transpose(lo, a["perm"]), np.transpose(hi, a["perm"]))
            elif n.op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
                tgt = (1,) + tuple(shapes[n.out][1:])
                B[n.out] = (lo.reshape(tgt), hi.reshape(tgt))
            elif n.op == "Affine":
                u, v = _affine(lo, a), _affine(hi, a)
                B[n.out] = (np.minimum(u, v), np.maximum(u, v))
            elif n.op == "BatchNormalization":
                u, v = _bn(lo, n.params, a["epsilon"]), _bn(hi, n.params, a["epsilon"])
                B[n.out] = (np.minimum(u, v), np.maximum(u, v))
        return B


# =============================================================================================
# rules


def normalize_rule(r, gamma=0.25, epsilon=1e-6):
    if isinstance(r, str):
        r = {"rule": r}
    r = dict(r)
    name = r["rule"]
    if name not in RULES:
        raise ValueError(f"unknown rule {name}")
    if name == "gamma":
        r.setdefault("gamma", gamma)
    if name == "alphabeta":
        r.setdefault("alpha", 2.0)
        r.setdefault("beta", 1.0)
    if name == "epsilon":
        r.setdefault("epsilon", epsilon)
    return r


def composite_rule(composite, lin: Lin, first: bool):
    conv = lin.kind == "conv"
    if composite == "dtd":
        return "zbox" if first else "zplus"
    if composite == "epsilon-gamma-box":
        return "zbox" if first else ("gamma" if conv else "epsilon")
    if composite == "epsilon-plus":
        return "zplus" if conv else "epsilon"
    if composite == "epsilon-plus-flat":
        return "flat" if first else ("zplus" if conv else "epsilon")
    if composite == "epsilon-alpha2-beta1":
        return "alphabeta" if conv else "epsilon"
    if composite == "epsilon-alpha2-beta1-flat":
        return "flat" if first else ("alphabeta" if conv else "epsilon")
    if composite == "epsilon":
        return "epsilon"
    raise ValueError(composite)


def select_rule(lin: Lin, first: bool, composite, overrides):
    """Precedence: exact node name > glob on names > op type > composite."""
    overrides = overrides or {}
    if lin.name in overrides:
        return overrides[lin.name]
    globs = [k for k in overrides if any(ch in k for ch in "*?[") and fnmatch.fnmatchcase(
        lin.name, k)]
    if globs:
        if len(globs) > 1:
            raise ValueError(f"ambiguous globs for {lin.name}: {globs}")
        return overrides[globs[0]]
    if lin.op_type in overrides:
        return overrides[lin.op_type]
    return composite_rule(composite, lin, first)


def weightless_rule(n, overrides, default, epsilon, stabilizer):
    """Rule of a weightless node after overrides (exact name > glob > op type), with the
    stabiliser it uses as ``eps`` (``epsilon`` for the epsilon rule)."""
    overrides = overrides or {}
    rule = overrides.get(n.name)
    if rule is None:
        globs = [k for k in overrides if any(ch in k for ch in "*?[") and
                 fnmatch.fnmatchcase(n.name, k)]
        rule = overrides[globs[0]] if globs else overrides.get(n.op, default)
    rule = dict({"rule": rule} if isinstance(rule, str) else rule)
    if rule["rule"] == "epsilon":
        rule["eps"] = rule.get("epsilon", epsilon)
    else:
        rule["eps"] = rule.get("stabilizer", stabilizer)
    return rule


def apply_linear_rule(lin: Lin, a, R, rule: dict, stabilizer, bounds=None, report=None):
    """Relevance at the input of a linear layer (SPEC section 4)."""
    name = rule["rule"]
    W, b = lin.W, lin.b
    zb = np.zeros_like(b)
    pos, neg = (lambda v: np.maximum(v, 0)), (lambda v: np.minimum(v, 0))
    shp = a.shape
    f, fT = lin.f, (lambda s_, W_: lin.fT(s_, W_, shp))

    def kappa(den, absden, mask=None):
        if report is None:
            return
        live = np.abs(R) > 1e-9 * (np.abs(R).max() + 1e-300)
        if mask is not None:
            live &= mask
        if live.any():
            k = (absden[live] / np.maximum(np.abs(den[live]), 1e-300)).max()
            report.append((lin.name, name, float(k)))

    A = np.abs

    def done(out, mag):
        """Record how much the transposed sums cancel (float32 error relative to the result)."""
        if report is not None:
            _cancel(report, lin.name, name, out, mag)
        return out

    if name in ("epsilon", "zero", "norm"):
        eps = rule["epsilon"] if name == "epsilon" else stabilizer
        z = f(a)
        kappa(z, f(A(a), A(W), A(b)))
        s = R / stab(z, eps)
        return done(a * fT(s, W), A(a) * fT(A(s), A(W)))
    if name in ("zplus", "alphabeta"):
        ap, an = pos(a), neg(a)
        zp = f(ap, pos(W), pos(b)) + f(an, neg(W), zb)
        kappa(zp, A(zp))
        sp = R / stab(zp, stabilizer)
        out = ap * fT(sp, pos(W)) + an * fT(sp, neg(W))
        mag = ap * fT(A(sp), pos(W)) - an * fT(A(sp), -neg(W))
        if name == "zplus":
            return done(out, mag)
        zn = f(ap, neg(W), neg(b)) + f(an, pos(W), zb)
        kappa(zn, A(zn))
        sn = R / stab(zn, stabilizer)
        out_n = ap * fT(sn, neg(W)) + an * fT(sn, pos(W))
        mag_n = ap * fT(A(sn), -neg(W)) - an * fT(A(sn), pos(W))
        return done(rule["alpha"] * out - rule["beta"] * out_n,
                    abs(rule["alpha"]) * mag + abs(rule["beta"]) * mag_n)
    if name == "gamma":
        g = rule["gamma"]
        ap, an = pos(a), neg(a)
        z = f(a)
        Wpp, Wpn = W + g * pos(W), W + g * neg(W)
        zpos = f(ap, Wpp, b + g * pos(b)) + f(an, Wpn, zb)
        zneg = f(ap, Wpn, b + g * neg(b)) + f(an, Wpp, zb)
        absden = f(A(a), A(W) * (1 + g), A(b) * (1 + g))
        kappa(zpos, absden, z > 0)
        kappa(zneg, absden, z < 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            s1 = np.where(z > 0, R / stab(zpos, stabilizer), 0.0)
            s2 = np.where(z < 0, R / stab(zneg, stabilizer), 0.0)
        out = ap * fT(s1, Wpp) + an * fT(s1, Wpn) + ap * fT(s2, Wpn) + an * fT(s2, Wpp)
        mag = (ap * fT(A(s1), A(Wpp)) - an * fT(A(s1), A(Wpn)) + ap * fT(A(s2), A(Wpn))
               - an * fT(A(s2), A(Wpp)))
        return done(out, mag)
    if name == "zbox":
        if bounds is None:
            raise ValueError(f"zbox on {lin.name} needs bounds")
        lo, hi = (np.broadcast_to(v, shp) for v in bounds)
        den = f(a) - f(lo, pos(W), pos(b)) - f(hi, neg(W), neg(b))
        kappa(den, f(A(a), A(W), zb) + f(A(lo), A(W), zb) + f(A(hi), A(W), zb))
        s = R / stab(den, stabilizer)
        out = a * fT(s, W) - lo * fT(s, pos(W)) - hi * fT(s, neg(W))
        return done(out, A(a) * fT(A(s), A(W)) + A(lo) * fT(A(s), pos(W))
                    + A(hi) * fT(A(s), -neg(W)))
    if name == "wsquare":
        ones = np.ones(shp)
        den = f(ones, W ** 2, b ** 2)
        s = R / stab(den, stabilizer)
        return done(fT(s, W ** 2), fT(A(s), W ** 2))
    if name == "flat":
        ones, W1 = np.ones(shp), np.ones_like(W)
        den = f(ones, W1, zb)
        s = R / stab(den, stabilizer)
        return done(fT(s, W1), fT(A(s), W1))
    if name == "pass":
        if a.shape != R.shape:
            raise ValueError("pass on a shape-changing linear layer")
        return R
    raise ValueError(name)


# =============================================================================================
# methods


@dataclasses.dataclass
class Result:
    logits: np.ndarray
    explained_class: np.ndarray
    relevance: np.ndarray
    outputs: dict
    kappa: list  # (layer, rule, max amplification) of every denominator met
    pool_gaps: list  # (layer, smallest nonzero top-2 gap relative to the window max)
    A_t: np.ndarray | None = None
    A_d: np.ndarray | None = None
    initial: np.ndarray | None = None


def softmax64(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def initial_relevance(z, t, method):
    """(target part, dual part with positive sign), each [N, K]; signed = target - dual."""
    N, K = z.shape
    At, Ad = np.zeros((N, K)), np.zeros((N, K))
    for i in range(N):
        ti = t[i]
        if ti < 0:
            continue
        others = np.arange(K) != ti
        if method == "lrp":
            At[i, ti] = z[i, ti]
        elif method == "clrp":
            At[i, ti] = z[i, ti]
            Ad[i, others] = z[i, ti] / (K - 1)
        elif method == "sglrp":
            y = softmax64(z[i])
            At[i, ti] = y[ti] * y[others].sum()
            Ad[i, others] = y[ti] * y[others]
        else:
            raise ValueError(method)
    return At, Ad


def propagate(can: Canonical, T: dict, R_logits, composite, overrides, stabilizer,
              bounds_cfg, report, gaps):
    spec = can.spec
    first = can.first_layers
    R = {can.logits: R_logits.reshape(T[can.logits].shape)}
    inb = None

    Rabs, count = {}, {}

    def add(t, v):
        R[t] = R[t] + v if t in R else v
        Rabs[t] = Rabs[t] + np.abs(v) if t in Rabs else np.abs(v)
        count[t] = count.get(t, 0) + 1

    def pop(t):
        """Relevance of t, summed over its consumers (recording how much that sum cancels)."""
        if count.get(t, 0) > 1:
            _cancel(report, t, "consumers", R[t], Rabs[t])
        return R.pop(t)

    for n in reversed(can.nodes):
        if n.out not in R:
            continue
        Ro = pop(n.out)
        if isinstance(n, Lin):
            rule = select_rule(n, n.name in first, composite, overrides)
            rule = normalize_rule(rule, bounds_cfg["gamma"], bounds_cfg["epsilon"])
            bounds = None
            if rule["rule"] == "zbox":
                if "low" in rule:
                    shp = T[n.inp].shape
                    bs = [1] * len(shp)
                    if np.asarray(rule["low"]).size > 1:
                        bs[1] = -1
                    bounds = (np.asarray(rule["low"], np.float64).reshape(bs),
                              np.asarray(rule["high"], np.float64).reshape(bs))
                else:
                    if bounds_cfg["low"] is None:
                        raise ValueError("zbox needs bounds")
                    if inb is None:
                        inb = can.input_bounds(bounds_cfg["low"], bounds_cfg["high"], T)
                    if n.inp not in inb:
                        raise ValueError(f"no bounds reach {n.name}")
                    bounds = inb[n.inp]
            add(n.inp, apply_linear_rule(n, T[n.inp], Ro, rule, stabilizer, bounds, report))
            continue
        op, a = n.op, n.attrs
        x0 = T[n.inputs[0]]
        if op in ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Affine"):
            add(n.inputs[0], Ro)
        elif op == "BatchNormalization":
            # SPEC section 5: epsilon rule of the affine map y = a*x + c with `stabilizer`
            rule = weightless_rule(n, overrides, "zero", bounds_cfg["epsilon"], stabilizer)
            if rule["rule"] == "pass":
                add(n.inputs[0], Ro)
            else:
                y = T[n.out]
                shp = (1, -1) + (1,) * (x0.ndim - 2)
                slope = (n.params["scale"] / np.sqrt(n.params["var"] + a["epsilon"])).reshape(shp)
                offset = _bn(np.zeros_like(x0[:1]), n.params, a["epsilon"])
                _kappa(report, n.name, Ro, y, np.abs(slope * x0) + np.abs(offset))
                add(n.inputs[0], slope * x0 * Ro / stab(y, rule["eps"]))
        elif op == "ReduceSum":
            axes = tuple(ax % x0.ndim for ax in a["axes"])
            z = x0.sum(axis=axes, keepdims=True)
            _kappa(report, n.name, Ro.reshape(z.shape), z, np.abs(x0).sum(axis=axes, keepdims=True))
            add(n.inputs[0], x0 * (Ro.reshape(z.shape) / stab(z, stabilizer)))
        elif op == "Gather":
            back = np.zeros_like(x0)
            idx = np.asarray(a["indices"]) % x0.shape[a["axis"]]
            moved = np.moveaxis(back, a["axis"], 0)  # a view: adding into it fills `back`
            Rm = np.moveaxis(Ro.reshape(x0.shape[:a["axis"]] + (idx.size,) + x0.shape[a["axis"] + 1:]),
                             a["axis"], 0)
            np.add.at(moved, idx.reshape(-1), Rm)
            add(n.inputs[0], back)
        elif op == "Slice":
            back = np.zeros_like(x0)
            back[slice_index(x0.ndim, a)] = Ro
            add(n.inputs[0], back)
        elif op == "Resize":
            y = T[n.out]
            maps = resize_maps(x0.shape, a)
            s = Ro / stab(y, stabilizer)
            mag = np.abs(x0)
            for axis, M in maps:  # |x| through the same (nonnegative) map, for the conditioning
                mag = np.moveaxis(np.tensordot(M, np.moveaxis(mag, axis, 0), axes=1), 0, axis)
            _kappa(report, n.name, Ro, y, mag)
            for axis, M in reversed(maps):
                s = np.moveaxis(np.tensordot(M.T, np.moveaxis(s, axis, 0), axes=1), 0, axis)
            add(n.inputs[0], x0 * s)
        elif op == "MaxPool":
            _, _, gap = maxpool_forward(x0, a, return_index=True)
            y = T[n.out]
            g2 = gap.reshape(y.shape)
            live = (np.abs(Ro) > 0) & (g2 > 0)
            if live.any():
                gaps.append((n.name, float((g2[live] / (np.abs(y[live]) + 1e-30)).min())))
            add(n.inputs[0], maxpool_backward(Ro, x0, a))
        elif op in ("AveragePool", "GlobalAveragePool", "ReduceMean"):
            if op == "AveragePool":
                z = avgpool_forward(x0, a)
                zabs = avgpool_forward(np.abs(x0), a)
                s = Ro / stab(z, stabilizer)
                c = avgpool_transpose(s, x0, a)
            else:
                axes = tuple(range(2, x0.ndim)) if op == "GlobalAveragePool" else tuple(
                    ax % x0.ndim for ax in a["axes"])
                z = x0.mean(axis=axes, keepdims=True)
                zabs = np.abs(x0).mean(axis=axes, keepdims=True)
                cnt = np.prod([x0.shape[ax] for ax in axes])
                s = Ro.reshape(z.shape) / stab(z, stabilizer)
                c = np.broadcast_to(s / cnt, x0.shape)
            _kappa(report, n.name, Ro.reshape(z.shape), z, zabs)
            if op == "AveragePool":
                _cancel(report, n.name, "norm", x0 * c,
                        np.abs(x0) * avgpool_transpose(np.abs(s), x0, a))
            add(n.inputs[0], x0 * c)
        elif op in ("Add", "Sum"):
            xs = [T[i] for i in n.inputs]
            z = sum(xs)
            _kappa(report, n.name, Ro, z, sum(np.abs(v) for v in xs))
            s = Ro / stab(z, stabilizer)
            for i, v in zip(n.inputs, xs):
                add(i, v * s)
        elif op == "Concat":
            ax = a["axis"]
            sizes = np.cumsum([T[i].shape[ax] for i in n.inputs])[:-1]
            for i, piece in zip(n.inputs, np.split(Ro, sizes, axis=ax)):
                add(i, piece)
        elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            add(n.inputs[0], Ro.reshape(x0.shape))
        elif op == "Transpose":
            add(n.inputs[0], np.transpose(Ro, np.argsort(a["perm"])))
        elif op == "Pad":
            sl = tuple(slice(a["pads"][i], a["pads"][i] + x0.shape[i]) for i in range(x0.ndim))
            add(n.inputs[0], Ro[sl])
        else:
            raise ValueError(f"no relevance rule for {op}")
    if spec.input_name not in R:
        return np.zeros(T[spec.input_name].shape)
    return pop(spec.input_name)


def _cancel(report, name, rule, out, mag):
    """Per image: largest magnitude of the summed terms over largest |result|."""
    n = out.shape[0]
    o = np.abs(out).reshape(n, -1).max(1)
    m = mag.reshape(n, -1).max(1)
    live = m > 0
    if live.any():
        report.append((name, rule + ":cancel", float((m[live] / np.maximum(o[live], 1e-300))
                                                     .max())))


def _kappa(report, name, R, den, absden):
    live = np.abs(R) > 1e-9 * (np.abs(R).max() + 1e-300)
    if live.any():
        report.append((name, "norm", float((absden[live] / np.maximum(np.abs(den[live]),
                                                                       1e-300)).max())))


def explain(spec: NetSpec, x, target, method="sglrp", contrast=None, positive=False,
            composite="dtd", low=None, high=None, epsilon=1e-6, stabilizer=1e-6, gamma=0.25,
            rules=None, canonical: Canonical | None = None) -> Result:
    """The reference relevance for a batch x [N, ...] and targets [N] (SPEC sections 3 to 5)."""
    if method == "lrp" and contrast is not None:
        raise ValueError("contrast does not apply to lrp")
    if contrast is None:
        contrast = {"lrp": "signed", "clrp": "scaled", "sglrp": "signed"}[method]
    if composite not in COMPOSITES:
        raise ValueError(composite)
    can = canonical or Canonical(spec)
    T = forward(spec, x)
    # folded layers: record their outputs too (same values as the unfolded chain)
    z = T[can.logits].reshape(len(x), -1)
    N, K = z.shape
    t = np.asarray(target, np.int64).copy()
    t = np.where(t < 0, np.argmax(z, axis=1), t)
    t = np.where(t >= K, -1, t)
    At0, Ad0 = initial_relevance(z, t, method)
    cfg = dict(low=low, high=high, gamma=gamma, epsilon=epsilon)
    report, gaps = [], []
    A_t = A_d = None
    if method == "lrp" or contrast == "signed":
        rel = propagate(can, T, At0 - Ad0, composite, rules, stabilizer, cfg, report, gaps)
    elif contrast == "scaled":
        A_t = propagate(can, T, At0, composite, rules, stabilizer, cfg, report, gaps)
        A_d = propagate(can, T, Ad0, composite, rules, stabilizer, cfg, report, gaps)
        rel = np.empty_like(A_t)
        for i in range(N):
            st, sd = A_t[i].sum(), A_d[i].sum()
            if abs(sd) < 1e-12 * np.abs(A_d[i]).sum() + F32_TINY:
                rel[i] = A_t[i]
            else:
                rel[i] = A_t[i] - A_d[i] * (st / sd)
                _cancel(report, "scaled-contrast", "combine", rel[i:i + 1],
                        np.abs(A_t[i:i + 1]) + np.abs(A_d[i:i + 1] * (st / sd)))
    else:
        raise ValueError(contrast)
    if positive:
        rel = np.maximum(rel, 0)
    rel[t < 0] = 0
    return Result(z, t, rel, T, report, gaps, A_t, A_d, At0 - Ad0)


def max_kappa(res: Result) -> float:
    return max([k for _, _, k in res.kappa], default=1.0)


def min_pool_gap(res: Result) -> float:
    return min([g for _, g in res.pool_gaps], default=np.inf)
