"""A tiny language for test classifiers: a DAG of layers with float32 weights drawn from a seed.

A :class:`NetSpec` is what both :mod:`onnx_builder` (turns it into an ONNX model) and :mod:`lrp64`
(the float64 numpy reference) read. Tensor names equal the name of the layer that computes them
(or ``Layer.out`` where a layer's output is given a special name, e.g. the graph output).

:class:`NetBuilder` grows a spec layer by layer, tracks shapes, and draws weights. In its
``conditioned`` mode it also tracks the sign of every channel and draws weights whose contributions
mostly agree in sign with the chosen sign of each output unit (plus a bias of that sign), so that no
layer output is near zero: the LRP denominators are then far from 0 and float32 and float64 agree
elementwise (SPEC section 6). Without it, weights are plain He-scaled Gaussians.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

LINEAR_OPS = ("Conv", "Gemm", "MatMul")


@dataclasses.dataclass
class Layer:
    op: str
    name: str
    inputs: list
    attrs: dict = dataclasses.field(default_factory=dict)
    params: dict = dataclasses.field(default_factory=dict)
    out: str | None = None  # output tensor name; defaults to the layer's name

    @property
    def output(self) -> str:
        return self.out or self.name


@dataclasses.dataclass
class NetSpec:
    input_name: str
    input_shape: tuple  # without the batch dim, in the model's own layout
    layout: str  # "NCHW" | "NHWC" | "NCL"
    layers: list
    output: str
    opset: int = 17
    shapes: dict = dataclasses.field(default_factory=dict)  # tensor -> shape without batch

    @property
    def channel_axis(self) -> int:
        return len(self.input_shape) if self.layout == "NHWC" else 1

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.shapes[self.output]))

    def layer_by_output(self) -> dict:
        return {layer.output: layer for layer in self.layers}

    def describe(self) -> str:
        rows = [f"input {self.input_name} {self.layout} {self.input_shape} opset {self.opset}"]
        for layer in self.layers:
            attrs = ", ".join(f"{k}={v}" for k, v in layer.attrs.items() if k != "const")
            rows.append(
                f"  {layer.name}: {layer.op}({', '.join(layer.inputs)}) [{attrs}] -> "
                f"{layer.output} {self.shapes.get(layer.output)}"
            )
        rows.append(f"output {self.output}")
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# geometry shared by the builder (shapes) and the reference (forward)


def resolve_conv_pads(in_sp, kernel, strides, dilations, pads, auto_pad):
    """Explicit ONNX pads [b1, b2, .., e1, e2, ..] for a Conv."""
    nd = len(in_sp)
    if auto_pad in (None, "NOTSET"):
        return list(pads) if pads is not None else [0] * (2 * nd)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        head, tail = [], []
        for i in range(nd):
            out = -(-in_sp[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i], 0)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                head.append(small)
                tail.append(big)
            else:
                head.append(big)
                tail.append(small)
        return head + tail
    raise ValueError(auto_pad)


def conv_out_size(n, k, s, d, p0, p1):
    return (n + p0 + p1 - ((k - 1) * d + 1)) // s + 1


def pool_ceil_ambiguous(n, k, s, d, p0, p1):
    """True where ceil_mode's last window would start in the tail padding: ONNX shape inference
    then counts it and ONNX Runtime does not, so models avoid that geometry."""
    span = (k - 1) * d + 1
    out = -(-(n + p0 + p1 - span) // s) + 1
    return (out - 1) * s >= n + p0


def pool_out_size(n, k, s, d, p0, p1, ceil_mode):
    span = (k - 1) * d + 1
    if not ceil_mode:
        return (n + p0 + p1 - span) // s + 1
    out = -(-(n + p0 + p1 - span) // s) + 1
    if (out - 1) * s >= n + p0:  # the last window must start inside the input or the head pad
        out -= 1
    return out


def slice_index(rank, a):
    """numpy index of an ONNX Slice with attrs starts/ends/axes/steps (Python slice semantics)."""
    index = [slice(None)] * rank
    for start, end, axis, step in zip(a["starts"], a["ends"], a["axes"], a["steps"]):
        index[axis % rank] = slice(start, end, step)
    return tuple(index)


# ---------------------------------------------------------------------------------------------
# shape inference


def infer_shape(layer: Layer, in_shapes: list) -> tuple:
    op, a = layer.op, layer.attrs
    x = tuple(in_shapes[0]) if in_shapes else ()
    if op == "Conv":
        w = layer.params["W"]
        sp = x[1:]
        k = list(w.shape[2:])
        s, d = a["strides"], a["dilations"]
        p = resolve_conv_pads(sp, k, s, d, a.get("pads"), a.get("auto_pad"))
        nd = len(sp)
        return (w.shape[0],) + tuple(
            conv_out_size(sp[i], k[i], s[i], d[i], p[i], p[i + nd]) for i in range(nd)
        )
    if op == "Gemm":
        w = layer.params["W"]
        return (w.shape[0] if a["transB"] else w.shape[1],)
    if op == "MatMul":
        return (layer.params["W"].shape[1],)
    if op in ("MaxPool", "AveragePool"):
        sp = x[1:]
        nd = len(sp)
        k, s, p = a["kernel_shape"], a["strides"], a["pads"]
        d = a.get("dilations", [1] * nd)
        return (x[0],) + tuple(
            pool_out_size(sp[i], k[i], s[i], d[i], p[i], p[i + nd], a.get("ceil_mode", 0))
            for i in range(nd)
        )
    if op == "GlobalAveragePool":
        return (x[0],) + (1,) * (len(x) - 1)
    if op == "ReduceMean":
        axes = [ax % (len(x) + 1) for ax in a["axes"]]
        if a["keepdims"]:
            return tuple(1 if i + 1 in axes else n for i, n in enumerate(x))
        return tuple(n for i, n in enumerate(x) if i + 1 not in axes)
    if op == "Concat":
        ax = a["axis"] % (len(x) + 1) - 1
        total = sum(s[ax] for s in in_shapes)
        return tuple(total if i == ax else n for i, n in enumerate(x))
    if op == "Flatten":
        return (int(np.prod(x)),)
    if op == "Reshape":
        full = (1,) + x
        target = [full[i] if v == 0 else v for i, v in enumerate(a["shape"])]
        return np.empty(full).reshape(target).shape[1:]
    if op == "Squeeze":
        axes = [ax % (len(x) + 1) for ax in a["axes"]]
        return tuple(n for i, n in enumerate(x) if i + 1 not in axes)
    if op == "Unsqueeze":
        full = [1] + list(x)
        rank = len(full) + len(a["axes"])
        axes = sorted(ax % rank for ax in a["axes"])
        for ax in axes:
            full.insert(ax, 1)
        return tuple(full[1:])
    if op == "Transpose":
        full = (1,) + x
        return tuple(full[p] for p in a["perm"])[1:]
    if op == "Pad":
        p = a["pads"]  # over all axes incl. batch: [b0, b1, .., e0, e1, ..]
        r = len(x) + 1
        full = (1,) + x
        return tuple(full[i] + p[i] + p[i + r] for i in range(r))[1:]
    if op == "Affine":
        const = np.asarray(a["const"])
        return np.broadcast_shapes((1,) + x, const.shape)[1:]
    if op == "ReduceSum":
        axes = [ax % (len(x) + 1) for ax in a["axes"]]
        if a["keepdims"]:
            return tuple(1 if i + 1 in axes else n for i, n in enumerate(x))
        return tuple(n for i, n in enumerate(x) if i + 1 not in axes)
    if op == "Gather":
        return np.take(np.empty((1,) + x), np.asarray(a["indices"]), axis=a["axis"]).shape[1:]
    if op == "Slice":
        return np.empty((1,) + x)[slice_index(len(x) + 1, a)].shape[1:]
    if op == "Resize":
        full = [1] + list(x)
        axes = a.get("axes", list(range(len(full))))
        for axis, v in zip(axes, a["sizes"] if a.get("sizes") is not None else a["scales"]):
            full[axis] = int(v) if a.get("sizes") is not None else int(math.floor(full[axis] * np.float32(v)))
        return tuple(full[1:])
    # elementwise and same-shape ops
    return x


# ---------------------------------------------------------------------------------------------
# the builder


class NetBuilder:
    """Grows a :class:`NetSpec`; every method returns the name of the tensor it computes."""

    def __init__(self, input_shape, layout="NCHW", seed=0, conditioned=True, opset=17,
                 input_name="input", sign_mode="pos", prefix=""):
        self.rng = np.random.default_rng(seed)
        self.layout = layout
        self.conditioned = conditioned
        self.sign_mode = sign_mode  # default sign of new linear units: "pos" | "mixed"
        self.prefix = prefix
        self.spec = NetSpec(input_name, tuple(input_shape), layout, [], output="", opset=opset)
        self.spec.shapes[input_name] = tuple(input_shape)
        self.signs = {input_name: np.ones(tuple(input_shape))}  # image values are positive
        self._count = {}

    # -- helpers -------------------------------------------------------------------------------
    def shape(self, t):
        return self.spec.shapes[t]

    def _name(self, op, name):
        if name is not None:
            return name
        i = self._count.get(op, 0)
        self._count[op] = i + 1
        return f"{self.prefix}{op.lower()}{i}"

    def _add(self, op, inputs, attrs=None, params=None, name=None, out=None, signs=None):
        layer = Layer(op, self._name(op, name), list(inputs), attrs or {}, params or {}, out)
        shape = infer_shape(layer, [self.spec.shapes[i] for i in inputs])
        self.spec.layers.append(layer)
        self.spec.shapes[layer.output] = tuple(shape)
        if signs is None:
            signs = np.full(shape, np.nan)
        self.signs[layer.output] = np.broadcast_to(signs, shape).astype(float)
        return layer.output

    def channel_signs(self, t):
        """Common nonzero sign of each channel (axis 1 of the tensor; features for 2D): nan if mixed."""
        s = self.signs[t]
        flat = s.reshape(s.shape[0], -1)
        out = np.zeros(s.shape[0])
        for c in range(s.shape[0]):
            v = flat[c]
            if np.isnan(v).any():
                out[c] = np.nan
                continue
            nz = v[v != 0]
            if nz.size == 0:
                out[c] = 0
            elif np.all(nz == nz[0]):
                out[c] = nz[0]
            else:
                out[c] = np.nan
        return out

    def _out_signs(self, n, signs):
        if signs is not None:
            return np.asarray(signs, dtype=float).reshape(n)
        if self.sign_mode == "mixed":
            return self.rng.choice([1.0, -1.0], size=n, p=[0.6, 0.4])
        return np.ones(n)

    def _weights(self, out_signs, in_signs, fan_shape):
        """Weights [out, in, *kernel] (float32)."""
        n_out, n_in = len(out_signs), len(in_signs)
        shape = (n_out, n_in) + tuple(fan_shape)
        fan_in = n_in * int(np.prod(fan_shape))
        if not self.conditioned:
            return (self.rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        main = self.rng.uniform(0.2, 1.0, shape)
        flip = self.rng.random(shape) < 0.2
        mag = np.where(flip, -self.rng.uniform(0.0, 0.25, shape), main)
        rel = out_signs.reshape((n_out, 1) + (1,) * len(fan_shape)) * \
            in_signs.reshape((1, n_in) + (1,) * len(fan_shape))
        rnd = self.rng.choice([1.0, -1.0], size=shape)
        sign = np.where(np.isnan(rel) | (rel == 0), rnd, rel)
        return (sign * mag / (0.5 * fan_in)).astype(np.float32)

    def _bias(self, out_signs):
        n = len(out_signs)
        if not self.conditioned:
            return (self.rng.standard_normal(n) * 0.1).astype(np.float32)
        return (out_signs * self.rng.uniform(0.1, 0.5, n)).astype(np.float32)

    # -- linear layers -------------------------------------------------------------------------
    def conv(self, x, out_ch, kernel=3, stride=1, pads=None, auto_pad=None, dilation=1, groups=1,
             bias=True, signs=None, name=None):
        xs = self.shape(x)
        nd = len(xs) - 1
        k = [kernel] * nd if isinstance(kernel, int) else list(kernel)
        s = [stride] * nd if isinstance(stride, int) else list(stride)
        d = [dilation] * nd if isinstance(dilation, int) else list(dilation)
        if isinstance(pads, int):
            pads = [pads] * (2 * nd)
        if pads is None and auto_pad is None:
            pads = [0] * (2 * nd)
        cin = xs[0]
        assert cin % groups == 0 and out_ch % groups == 0
        cg, mg = cin // groups, out_ch // groups
        osg = self._out_signs(out_ch, signs)
        isg = self.channel_signs(x)
        w = np.zeros((out_ch, cg) + tuple(k), np.float32)
        for g in range(groups):
            w[g * mg:(g + 1) * mg] = self._weights(osg[g * mg:(g + 1) * mg],
                                                   isg[g * cg:(g + 1) * cg], k)
        params = {"W": w}
        if bias:
            params["B"] = self._bias(osg)
        attrs = {"strides": s, "dilations": d, "group": groups}
        if auto_pad is not None:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads)
        return self._add("Conv", [x], attrs, params, name, signs=osg.reshape((-1,) + (1,) * nd))

    def gemm(self, x, n_out, transB=0, alpha=1.0, beta=1.0, bias=True, signs=None, name=None,
             out=None, focus=None):
        """Dense layer. ``focus`` (a fraction) makes each output draw mostly on its own random
        subset of the inputs, so that explanations of different classes differ (contrastive
        methods then do not cancel to rounding level)."""
        n_in = self.shape(x)[0]
        osg = self._out_signs(n_out, signs)
        w = self._weights(osg, self.channel_signs(x), ())  # [out, in]
        if focus is not None:
            keep = self.rng.random(w.shape) < focus
            w = (w * np.where(keep, 1.0, 0.05)).astype(np.float32)
        # the effective weight is alpha * W; keep its signs by dividing by alpha
        w = (w / alpha).astype(np.float32)
        params = {"W": w if transB else np.ascontiguousarray(w.T)}
        if bias:
            params["C"] = (self._bias(osg) / beta).astype(np.float32)
        attrs = {"transB": int(transB), "alpha": float(alpha), "beta": float(beta)}
        return self._add("Gemm", [x], attrs, params, name, out=out, signs=osg * np.sign(alpha))

    def matmul(self, x, n_out, bias=True, signs=None, name=None, out=None):
        osg = self._out_signs(n_out, signs)
        w = self._weights(osg, self.channel_signs(x), ())
        params = {"W": np.ascontiguousarray(w.T)}  # [in, out]
        if bias:
            params["B"] = self._bias(osg)
        return self._add("MatMul", [x], {}, params, name, out=out, signs=osg)

    def batchnorm(self, x, name=None, eps=1e-5):
        c = self.shape(x)[0]
        sg = self.channel_signs(x)
        r = self.rng
        scale = r.uniform(0.5, 1.5, c)
        var = r.uniform(0.5, 2.0, c)
        if self.conditioned:
            s = np.where(np.isnan(sg) | (sg == 0), 1.0, sg)
            mean = -s * r.uniform(0.0, 0.2, c)
            beta = s * r.uniform(0.0, 0.2, c)
        else:
            mean = r.standard_normal(c) * 0.3
            beta = r.standard_normal(c) * 0.3
        params = {k: v.astype(np.float32) for k, v in
                  dict(scale=scale, B=beta, mean=mean, var=var).items()}
        nd = len(self.shape(x)) - 1
        out_sg = sg if self.conditioned else np.full(c, np.nan)
        return self._add("BatchNormalization", [x], {"epsilon": eps}, params, name,
                         signs=out_sg.reshape((-1,) + (1,) * nd))

    # -- activations ---------------------------------------------------------------------------
    def relu(self, x, name=None):
        s = self.signs[x]
        return self._add("Relu", [x], name=name, signs=np.where(s < 0, 0.0, s))

    def leaky_relu(self, x, alpha=0.1, name=None):
        return self._add("LeakyRelu", [x], {"alpha": alpha}, name=name, signs=self.signs[x])

    def clip6(self, x, name=None):
        s = self.signs[x]
        return self._add("Clip", [x], {"min": 0.0, "max": 6.0}, name=name,
                         signs=np.where(s < 0, 0.0, s))

    def sigmoid(self, x, name=None):
        return self._add("Sigmoid", [x], name=name, signs=np.ones(self.shape(x)))

    def tanh(self, x, name=None):
        return self._add("Tanh", [x], name=name, signs=self.signs[x])

    # -- pooling -------------------------------------------------------------------------------
    def _pool_signs(self, x, shape):
        cs = self.channel_signs(x)
        return np.broadcast_to(cs.reshape((-1,) + (1,) * (len(shape) - 1)), shape)

    def maxpool(self, x, kernel=2, stride=None, pads=0, dilation=1, ceil_mode=0, name=None):
        nd = len(self.shape(x)) - 1
        k = [kernel] * nd if isinstance(kernel, int) else list(kernel)
        stride = k if stride is None else stride
        s = [stride] * nd if isinstance(stride, int) else list(stride)
        d = [dilation] * nd if isinstance(dilation, int) else list(dilation)
        p = [pads] * (2 * nd) if isinstance(pads, int) else list(pads)
        attrs = {"kernel_shape": k, "strides": s, "pads": p, "dilations": d,
                 "ceil_mode": int(ceil_mode)}
        self._check_ceil(x, attrs)
        layer_out = self._add("MaxPool", [x], attrs, name=name)
        self.signs[layer_out] = self._pool_signs(x, self.shape(layer_out)).astype(float)
        return layer_out

    def avgpool(self, x, kernel=2, stride=None, pads=0, count_include_pad=0, ceil_mode=0,
                name=None):
        nd = len(self.shape(x)) - 1
        k = [kernel] * nd if isinstance(kernel, int) else list(kernel)
        stride = k if stride is None else stride
        s = [stride] * nd if isinstance(stride, int) else list(stride)
        p = [pads] * (2 * nd) if isinstance(pads, int) else list(pads)
        attrs = {"kernel_shape": k, "strides": s, "pads": p,
                 "count_include_pad": int(count_include_pad), "ceil_mode": int(ceil_mode)}
        self._check_ceil(x, attrs)
        layer_out = self._add("AveragePool", [x], attrs, name=name)
        self.signs[layer_out] = self._pool_signs(x, self.shape(layer_out)).astype(float)
        return layer_out

    def ceil_ok(self, x, kernel, stride, pads, dilation=1):
        """Whether ceil_mode=1 is unambiguous for this pooling geometry (see pool_ceil_ambiguous)."""
        sp = self.shape(x)[1:]
        nd = len(sp)
        k = [kernel] * nd if isinstance(kernel, int) else list(kernel)
        s = [stride] * nd if isinstance(stride, int) else list(stride)
        d = [dilation] * nd if isinstance(dilation, int) else list(dilation)
        p = [pads] * (2 * nd) if isinstance(pads, int) else list(pads)
        return not any(pool_ceil_ambiguous(sp[i], k[i], s[i], d[i], p[i], p[i + nd])
                       for i in range(nd))

    def _check_ceil(self, x, a):
        if a["ceil_mode"] and not self.ceil_ok(x, a["kernel_shape"], a["strides"], a["pads"],
                                               a.get("dilations", 1)):
            raise ValueError("ambiguous ceil_mode pooling geometry")

    def gap(self, x, name=None):
        layer_out = self._add("GlobalAveragePool", [x], name=name)
        self.signs[layer_out] = self._pool_signs(x, self.shape(layer_out)).astype(float)
        return layer_out

    def reduce_mean(self, x, axes=None, keepdims=1, name=None):
        nd = len(self.shape(x)) - 1
        axes = list(range(2, 2 + nd)) if axes is None else list(axes)
        layer_out = self._add("ReduceMean", [x], {"axes": axes, "keepdims": int(keepdims)},
                              name=name)
        shp = self.shape(layer_out)
        cs = self.channel_signs(x)
        self.signs[layer_out] = np.broadcast_to(
            cs.reshape((-1,) + (1,) * (len(shp) - 1)), shp).astype(float)
        return layer_out

    def reduce_sum(self, x, axes, keepdims=1, name=None):
        """ReduceSum over non-batch axes; a sum keeps the sign its elements share (nan if mixed)."""
        out = self._add("ReduceSum", [x], {"axes": list(axes), "keepdims": int(keepdims)},
                        name=name)
        sg = self.signs[x]
        red = tuple(ax % (sg.ndim + 1) - 1 for ax in axes)
        pos, neg = (sg > 0).all(axis=red, keepdims=True), (sg < 0).all(axis=red, keepdims=True)
        zero = (sg == 0).all(axis=red, keepdims=True)
        out_sg = np.where(pos, 1.0, np.where(neg, -1.0, np.where(zero, 0.0, np.nan)))
        self.signs[out] = out_sg.reshape(self.shape(out))
        return out

    def gather(self, x, indices, axis, name=None):
        """Gather with constant indices (any rank, negative and repeated ones allowed)."""
        out = self._add("Gather", [x], {"indices": np.asarray(indices, np.int64), "axis": axis},
                        name=name)
        self.signs[out] = np.take(self.signs[x], np.asarray(indices), axis=axis - 1)
        return out

    def slice(self, x, starts, ends, axes, steps, name=None):
        a = {"starts": list(starts), "ends": list(ends), "axes": list(axes), "steps": list(steps)}
        out = self._add("Slice", [x], a, name=name)
        self.signs[out] = self.signs[x][None][slice_index(len(self.shape(x)) + 1, a)][0]
        return out

    def resize(self, x, mode="nearest", scales=None, sizes=None, name=None, **attrs):
        """Resize of the spatial axes (weights >= 0: the channel signs are kept)."""
        a = {"mode": mode, "scales": None if scales is None else [float(v) for v in scales],
             "sizes": None if sizes is None else [int(v) for v in sizes], **attrs}
        out = self._add("Resize", [x], a, name=name)
        shp = self.shape(out)
        cs = self.channel_signs(x)
        self.signs[out] = np.broadcast_to(cs.reshape((-1,) + (1,) * (len(shp) - 1)), shp)
        return out

    # -- merges --------------------------------------------------------------------------------
    @staticmethod
    def _merge_signs(sgs):
        out = sgs[0].copy()
        for s in sgs[1:]:
            both = (out != 0) & (s != 0)
            out = np.where(out == 0, s, out)
            out = np.where(both & (out != s), np.nan, out)
        return out

    def add(self, a, b, name=None):
        return self._add("Add", [a, b], name=name,
                         signs=self._merge_signs([self.signs[a], self.signs[b]]))

    def sum(self, xs, name=None):
        return self._add("Sum", list(xs), name=name,
                         signs=self._merge_signs([self.signs[t] for t in xs]))

    def concat(self, xs, axis=1, name=None):
        return self._add("Concat", list(xs), {"axis": axis}, name=name,
                         signs=np.concatenate([self.signs[t] for t in xs], axis=axis - 1
                                              if axis > 0 else axis))

    # -- shape ops -----------------------------------------------------------------------------
    def flatten(self, x, name=None):
        return self._add("Flatten", [x], {"axis": 1}, name=name, signs=self.signs[x].reshape(-1))

    def reshape(self, x, shape, name=None):
        out = self._add("Reshape", [x], {"shape": list(shape)}, name=name)
        self.signs[out] = self.signs[x].reshape(self.shape(out))
        return out

    def squeeze(self, x, axes, name=None):
        out = self._add("Squeeze", [x], {"axes": list(axes)}, name=name)
        self.signs[out] = self.signs[x].reshape(self.shape(out))
        return out

    def unsqueeze(self, x, axes, name=None):
        out = self._add("Unsqueeze", [x], {"axes": list(axes)}, name=name)
        self.signs[out] = self.signs[x].reshape(self.shape(out))
        return out

    def transpose(self, x, perm, name=None):
        sg = np.transpose(self.signs[x][None], perm)[0]
        return self._add("Transpose", [x], {"perm": list(perm)}, name=name, signs=sg)

    def pad(self, x, pads_spatial, name=None):
        """Constant zero Pad of the spatial axes: pads_spatial = [b_h, b_w, e_h, e_w] (or 1D)."""
        nd = len(self.shape(x)) - 1
        ps = list(pads_spatial)
        pads = [0, 0] + ps[:nd] + [0, 0] + ps[nd:]
        sg = np.pad(self.signs[x], [(0, 0)] + [(ps[i], ps[i + nd]) for i in range(nd)])
        return self._add("Pad", [x], {"pads": pads}, name=name, signs=sg)

    def dropout(self, x, name=None):
        return self._add("Dropout", [x], name=name, signs=self.signs[x])

    def identity(self, x, name=None):
        return self._add("Identity", [x], name=name, signs=self.signs[x])

    def affine(self, x, kind, const, name=None, reverse=False):
        """``x kind const`` (``const kind x`` when reverse) with a constant broadcast on x."""
        const = np.asarray(const, np.float32)
        xs = self.signs[x]
        cs = np.broadcast_to(np.sign(const), (1,) + xs.shape)[0] if const.ndim else np.sign(const)
        if kind in ("Mul", "Div"):
            sg = xs * cs
        else:
            c = cs if kind == "Add" or reverse else -cs
            xv = -xs if (kind == "Sub" and reverse) else xs
            sg = np.where(xv == 0, c, np.where(xv == c, xv, np.nan))
        return self._add("Affine", [x], {"kind": kind, "const": const, "reverse": bool(reverse)},
                         name=name, signs=sg)

    def softmax(self, x, name=None, out=None):
        return self._add("Softmax", [x], {"axis": -1}, name=name, out=out,
                         signs=np.ones(self.shape(x)))

    def build(self, output=None) -> NetSpec:
        self.spec.output = output or self.spec.layers[-1].output
        return self.spec


def input_array(spec: NetSpec, batch=1, seed=0, kind="uniform") -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    shape = (batch,) + tuple(spec.input_shape)
    if kind == "uniform":
        return rng.uniform(0.2, 1.0, shape).astype(np.float32)
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    raise ValueError(kind)
