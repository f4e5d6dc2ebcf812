"""Property test: random classifier graphs, random methods / composites / overrides, engine vs the
float64 reference (tests/reference).

Each example draws a network from the spec language (NCHW / NHWC-with-Transpose / 1D fronts,
optional per-channel preprocessing, one or two stems, conv blocks with random kernel, stride,
padding, auto_pad, dilation, groups, BN, activations, residual adds, concats, pooling, a dense or
fully convolutional head, optional Softmax), converts it once with a random method, contrast,
positive flag, composite and override, and runs two images with random targets (out-of-range and
negative ones included).

Why relative L2 (per image) and not elementwise: the graphs are random, so some map of some
example has a near-tie in a max-pooling window or a denominator / contrast that cancels, where a
float32 engine and a float64 reference may legitimately differ in a few pixels (SPEC section 6).
The weights are drawn "conditioned" (netspec.NetBuilder), which keeps most examples well
conditioned, and the reference measures each example's conditioning: where a denominator or a
cancelling sum amplifies rounding by more than KAPPA_SKIP, or a pooling window's winner is decided
by less than GAP_SKIP, only the contract checks (finite values, explained_class, logits, zero rows
for out-of-range targets) apply to that example; `hypothesis.event` counts those.

Reproducible: ``derandomize=True`` and no example database. SGLRP_FUZZ_EXAMPLES sets the number of
examples (default 200).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

ort.set_default_logger_severity(3)  # no warnings from graph optimisers on stderr
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import lrp64, netspec, onnx_builder  # noqa: E402

L2_TOL = 1e-3
KAPPA_SKIP = 1e4
GAP_SKIP = 1e-5
EXAMPLES = int(os.environ.get("SGLRP_FUZZ_EXAMPLES", "200"))

ACTS = ["relu", "leaky_relu", "clip6", "tanh", "sigmoid", "none"]


def _act(b, h, name):
    if name == "none":
        return h
    return getattr(b, name)(h)


def draw_net(data) -> tuple[netspec.NetSpec, dict]:
    d = data.draw
    layout = d(st.sampled_from(["NCHW", "NCHW", "NHWC", "NCL"]), label="layout")
    cin = d(st.integers(1, 4), label="in_channels")
    if layout == "NCL":
        size = (d(st.integers(6, 20), label="length"),)
    else:
        size = (d(st.integers(5, 11), label="height"), d(st.integers(5, 11), label="width"))
    shape = (cin,) + size if layout != "NHWC" else size + (cin,)
    seed = d(st.integers(0, 2 ** 16), label="weight_seed")
    b = netspec.NetBuilder(shape, layout=layout, seed=seed,
                           sign_mode=d(st.sampled_from(["pos", "mixed"]), label="signs"),
                           opset=d(st.sampled_from([13, 17, 17, 18]), label="opset"))
    nd = len(size)
    h = "input"
    if layout == "NHWC":
        h = b.transpose(h, [0, 3, 1, 2])
    pre = d(st.sampled_from(["none", "scale", "standardise"]), label="preprocessing")
    cshape = (cin,) + (1,) * nd
    if pre == "scale":
        h = b.affine(h, "Mul", np.linspace(0.5, 2.0, cin).reshape(cshape))
        h = b.affine(h, "Add", np.float32(0.1))
    elif pre == "standardise":
        h = b.affine(h, "Sub", np.linspace(0.3, 0.6, cin).reshape(cshape))
        h = b.affine(h, "Div", np.linspace(0.2, 0.3, cin).reshape(cshape))

    def conv(x, out_ch, label, same=False, signs=None):
        c = b.shape(x)[0]
        sp = b.shape(x)[1:]
        k = d(st.integers(1, min(3, min(sp))), label=f"{label}.k")
        groups = d(st.sampled_from([g for g in (1, 2, 3, 4, c) if c % g == 0 and out_ch % g == 0]),
                   label=f"{label}.groups")
        if same:
            return b.conv(x, out_ch, k, auto_pad="SAME_UPPER", groups=groups, signs=signs)
        stride = d(st.integers(1, 2), label=f"{label}.stride") if min(sp) >= 4 else 1
        mode = d(st.sampled_from(["pads", "SAME_UPPER", "VALID"]), label=f"{label}.padding")
        if mode == "VALID" and min(sp) < k:
            mode = "pads"
        if mode == "pads":
            dil = d(st.integers(1, 2), label=f"{label}.dilation") if min(sp) > 2 * k else 1
            pads = [d(st.integers(0, k - 1 if k > 1 else 0), label=f"{label}.pad{i}")
                    for i in range(2 * nd)]
            span = (k - 1) * dil + 1
            if any(sp[i] + pads[i] + pads[i + nd] < span for i in range(nd)):
                dil = 1
            return b.conv(x, out_ch, k, stride=stride, pads=pads, dilation=dil, groups=groups,
                          bias=d(st.booleans(), label=f"{label}.bias"), signs=signs)
        return b.conv(x, out_ch, k, stride=stride, auto_pad=mode, groups=groups, signs=signs)

    width = d(st.integers(2, 6), label="width")
    n_stems = d(st.integers(1, 2), label="stems")
    stems = [conv(h, width, f"stem{i}", same=n_stems > 1) for i in range(n_stems)]
    if n_stems == 2:
        h = b.concat([_act(b, s, "relu") for s in stems])
    else:
        h = stems[0]
        if d(st.booleans(), label="stem_bn"):
            h = b.batchnorm(h)
        h = _act(b, h, d(st.sampled_from(ACTS[:4]), label="stem_act"))

    depth = d(st.integers(0, 3), label="depth")
    for i in range(depth):
        kind = d(st.sampled_from(["conv", "residual", "concat", "pool", "pad_sum"]),
                 label=f"block{i}")
        sp = b.shape(h)[1:]
        if kind == "conv":
            h = conv(h, d(st.integers(2, 6), label=f"block{i}.width"), f"block{i}")
            post = d(st.sampled_from(["none", "bn", "Add", "Sub", "Mul", "Div"]),
                     label=f"block{i}.post")
            if post == "bn":  # folded into the conv
                h = b.batchnorm(h)
            elif post != "none":  # a per-channel constant after the conv: folded too
                c = b.shape(h)[0]
                h = b.affine(h, post, np.linspace(0.5, 1.5, c).reshape((c,) + (1,) * nd))
            h = _act(b, h, d(st.sampled_from(ACTS), label=f"block{i}.act"))
        elif kind == "residual":
            r = conv(h, b.shape(h)[0], f"block{i}", same=True, signs=b.channel_signs(h))
            h = b.add(h, r)
            if d(st.booleans(), label=f"block{i}.standalone_bn"):
                h = b.batchnorm(h)
            h = _act(b, h, d(st.sampled_from(ACTS[:4]), label=f"block{i}.act"))
        elif kind == "concat":
            u = conv(h, d(st.integers(1, 4), label=f"block{i}.wa"), f"block{i}a", same=True)
            v = conv(h, d(st.integers(1, 4), label=f"block{i}.wb"), f"block{i}b", same=True)
            h = b.concat([b.relu(u), b.relu(v)])
        elif kind == "pool" and min(sp) >= 3:
            k = d(st.integers(2, 3), label=f"block{i}.k")
            s = d(st.integers(1, 2), label=f"block{i}.s")
            pads = [d(st.integers(0, k // 2), label=f"block{i}.p{j}") for j in range(2 * nd)]
            ceil = d(st.booleans(), label=f"block{i}.ceil")
            if d(st.booleans(), label=f"block{i}.max"):
                dil = d(st.integers(1, 2), label=f"block{i}.dil") if min(sp) >= 5 else 1
                ceil = ceil and b.ceil_ok(h, k, s, pads, dil)
                h = b.maxpool(h, k, s, pads=pads, dilation=dil, ceil_mode=ceil)
            else:
                ceil = ceil and b.ceil_ok(h, k, s, pads)
                h = b.avgpool(h, k, s, pads=pads, ceil_mode=ceil,
                              count_include_pad=d(st.booleans(), label=f"block{i}.cip"))
        elif kind == "pad_sum":
            p = b.pad(h, [1] * nd + [0] * nd)
            q = b.pad(h, [0] * nd + [1] * nd)
            h = b.sum([p, q, b.pad(h, [1] * nd + [0] * nd)])

    K = d(st.integers(2, 6), label="classes")
    head = d(st.sampled_from(["gap", "reduce_mean", "flatten", "fcn"]), label="head")
    if head == "fcn" and nd == 2:
        h = b.conv(h, K, 1)
        return b.build(b.gap(h)), dict(K=K)
    if head == "gap" or head == "fcn":
        h = b.flatten(b.gap(h))
    elif head == "reduce_mean":
        h = b.reduce_mean(h, keepdims=0)
    else:
        h = b.flatten(h)
    if d(st.booleans(), label="hidden_dense"):
        if d(st.booleans(), label="hidden_matmul"):
            h = b.matmul(h, d(st.integers(3, 8), label="hidden"))
        else:
            h = b.gemm(h, d(st.integers(3, 8), label="hidden"), transB=d(st.integers(0, 1)),
                       alpha=d(st.sampled_from([1.0, 0.5, 2.0])), beta=d(st.sampled_from(
                           [1.0, 0.7])))
        h = _act(b, h, d(st.sampled_from(ACTS), label="hidden_act"))
    if d(st.booleans(), label="head_matmul"):
        h = b.matmul(h, K, bias=d(st.booleans()))
    else:
        h = b.gemm(h, K, transB=d(st.integers(0, 1)), alpha=d(st.sampled_from([1.0, 1.5])),
                   bias=d(st.booleans()), focus=0.4)
    if d(st.booleans(), label="softmax"):
        h = b.softmax(h)
    return b.build(), dict(K=K)


def draw_options(data, spec):
    d = data.draw
    method = d(st.sampled_from(["lrp", "clrp", "sglrp"]), label="method")
    contrast = None if method == "lrp" else d(st.sampled_from([None, "signed", "scaled"]),
                                              label="contrast")
    opts = dict(method=method, contrast=contrast, positive=d(st.booleans(), label="positive"),
                composite=d(st.sampled_from(lrp64.COMPOSITES), label="composite"),
                low=0.0, high=1.0)
    if d(st.booleans(), label="override"):
        linears = [L for L in spec.layers if L.op in netspec.LINEAR_OPS]
        layer = d(st.sampled_from(linears), label="override_layer")
        key = d(st.sampled_from([layer.name, layer.op]), label="override_key")
        rule = d(st.sampled_from(["epsilon", "zero", "zplus", "alphabeta", "gamma", "flat",
                                  "wsquare", {"rule": "gamma", "gamma": 0.5},
                                  {"rule": "epsilon", "epsilon": 0.1},
                                  {"rule": "zbox", "low": -10.0, "high": 10.0}]),
                 label="override_rule")
        opts["rules"] = {key: rule}
    if d(st.booleans(), label="params"):
        opts.update(epsilon=d(st.sampled_from([1e-6, 1e-3, 0.25])),
                    stabilizer=d(st.sampled_from([1e-6, 1e-4])),
                    gamma=d(st.sampled_from([0.25, 0.1, 1.0])))
    return opts


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(st.data())
def test_fuzz_engine_matches_reference(data):
    import sglrp_onnx

    spec, info = draw_net(data)
    note(spec.describe())
    opts = draw_options(data, spec)
    note(repr(opts))
    model = onnx_builder.build_model(spec)
    converted = sglrp_onnx.convert(model, **opts)
    meta = {p.key: p.value for p in converted.metadata_props}
    names = {k: meta.get(f"sglrp_onnx.{k}", dflt) for k, dflt in (
        ("image_input", spec.input_name), ("target_input", "target"),
        ("logits_output", "logits"), ("explained_class_output", "explained_class"),
        ("relevance_output", "relevance"))}
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    K = info["K"]
    x = netspec.input_array(spec, 2, seed=data.draw(st.integers(0, 100), label="image_seed"))
    targets = np.array([data.draw(st.integers(-1, K), label=f"target{i}") for i in range(2)],
                       np.int64)
    out = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {names["image_input"]: x, names["target_input"]: targets})))
    ref = lrp64.explain(spec, x.astype(np.float64), targets, **opts)
    rel = out[names["relevance_output"]]
    assert rel.shape == x.shape
    assert np.isfinite(rel).all() and np.isfinite(out[names["logits_output"]]).all()
    assert np.array_equal(out[names["explained_class_output"]], ref.explained_class)
    z = out[names["logits_output"]]
    assert np.abs(z - ref.logits).max() <= 1e-5 * np.abs(ref.logits).max() + 1e-6
    assert np.all(rel[ref.explained_class < 0] == 0)
    kappa, gap = lrp64.max_kappa(ref), lrp64.min_pool_gap(ref)
    if kappa > KAPPA_SKIP or gap < GAP_SKIP:
        event("ill-conditioned example: contract checks only")
        return
    event("compared with the reference")
    for i in range(len(x)):
        n = np.linalg.norm(ref.relevance[i])
        err = np.linalg.norm(rel[i] - ref.relevance[i])
        if n == 0:
            assert err == 0, f"image {i}: reference zero, engine norm {err}"
        else:
            assert err <= L2_TOL * n, (
                f"image {i}: relative L2 {err / n:.3g} (kappa {kappa:.3g}, pool gap {gap:.3g})")
