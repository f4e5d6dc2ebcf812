"""Ops of SPEC sections 5 and 7 beyond the classic CNN layers, checked against the float64
reference (tests/reference): standalone BatchNormalization (epsilon rule of its affine map),
ReduceSum, Gather with constant indices, Slice with steps other than 1, Resize (nearest and
linear, several coordinate modes).

Part A checks the reference's forward of these ops against ONNX Runtime (so that the reference's
interpolation maps are those the runtime computes). Part B converts tiny conditioned models and
compares the engine's relevance elementwise (1e-4 * max|ref|) for lrp and sglrp (both contrasts),
with the epsilon composite and the default dtd composite.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ort.set_default_logger_severity(3)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import lrp64, netspec, onnx_builder  # noqa: E402
from test_reference_rules import Engine, check_elementwise, check_l2  # noqa: E402

BOUNDS = dict(low=0.0, high=1.0)
METHODS = [("lrp", None), ("sglrp", "signed"), ("sglrp", "scaled")]


# =============================================================================================
# tiny models, one per op family (conditioned: no layer output near 0)


def m_batchnorm(seed, opset=17):
    """DenseNet-style pre-activation norms: BatchNormalization after a pooling and after a
    Concat (neither can be folded into a linear layer), and one before the head."""
    b = netspec.NetBuilder((3, 8, 8), seed=seed, opset=opset)
    h = b.conv("input", 6, 3, pads=1, name="c1")
    h = b.relu(h)
    h = b.maxpool(h, 2, 2)
    p = b.batchnorm(h, name="bn_pool")
    h = b.relu(p)
    c2 = b.conv(h, 4, 3, pads=1, name="c2")
    h = b.concat([p, c2], axis=1)
    h = b.batchnorm(h, name="bn_concat")
    h = b.relu(h)
    h = b.conv(h, 6, 1, name="c3")
    h = b.relu(h)
    h = b.flatten(b.gap(h))
    h = b.batchnorm(h, name="bn_flat")  # [N, C]: rank 2
    h = b.gemm(h, 5, name="head", focus=0.3)
    return b.build()


def m_reduce_sum(seed, opset=17):
    """ReduceSum over spatial axes (both keepdims) and over a split axis (ResNeSt radix sum)."""
    b = netspec.NetBuilder((3, 6, 6), seed=seed, opset=opset)
    h = b.conv("input", 8, 3, pads=1, name="c1")
    h = b.relu(h)
    h = b.reshape(h, [0, 2, 4, 6, 6])
    h = b.reduce_sum(h, axes=[1], keepdims=0, name="radix_sum")
    h = b.conv(h, 6, 3, pads=1, name="c2")
    h = b.relu(h)
    a = b.flatten(b.reduce_sum(h, axes=[2, 3], keepdims=1, name="sum_keep"))
    c = b.reduce_sum(h, axes=[-1, 2], keepdims=0, name="sum_drop")
    h = b.concat([a, c], axis=1)
    h = b.gemm(h, 5, name="head", focus=0.3)
    return b.build()


def m_gather(seed, opset=17):
    """ViT-style class token x[:, 0] (scalar index: the axis is dropped), 1-D indices with a
    repeat and a negative index, and 2-D indices."""
    b = netspec.NetBuilder((3, 4, 4), seed=seed, opset=opset)
    h = b.conv("input", 6, 2, stride=2, name="patch")
    h = b.relu(h)
    h = b.reshape(h, [0, 6, 4])
    h = b.transpose(h, [0, 2, 1])  # tokens [N, 4, 6]
    cls = b.gather(h, 0, axis=1, name="cls")  # [N, 6]
    picked = b.gather(h, [1, -1, 1], axis=1, name="picked")  # [N, 3, 6]
    grid = b.gather(h, [[0, 5], [2, 3]], axis=2, name="grid")  # [N, 4, 2, 2]
    h = b.concat([cls, b.flatten(picked), b.flatten(grid)], axis=1)
    h = b.gemm(h, 5, name="head", focus=0.3)
    return b.build()


def m_slice(seed, opset=17):
    """Swin patch merging (x[:, :, 0::2, 0::2] etc. concatenated on channels), a reversed axis
    (step -1), a step-3 slice with a negative start, and LeViT-style subsampling on tokens."""
    b = netspec.NetBuilder((3, 8, 8), seed=seed, opset=opset)
    h = b.conv("input", 4, 3, pads=1, name="c1")
    h = b.relu(h)
    phases = [b.slice(h, [i, j], [8, 8], [2, 3], [2, 2], name=f"merge{i}{j}")
              for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
    h = b.concat(phases, axis=1)  # [N, 16, 4, 4]
    h = b.slice(h, [-1], [-(2**63)], [3], [-1], name="flip")  # x[..., ::-1]
    h = b.conv(h, 6, 1, name="c2")
    h = b.relu(h)
    s = b.slice(h, [-4, 0], [100, 4], [2, 3], [3, 1], name="every_third")  # rows 0 and 3
    t = b.reshape(h, [0, 6, 16])
    t = b.slice(t, [1], [16], [2], [2], name="subsample")  # every second token
    h = b.concat([b.flatten(s), b.flatten(t)], axis=1)
    h = b.gemm(h, 5, name="head", focus=0.3)
    return b.build()


def m_resize(seed, opset=18):
    """HRNet-style fusion: a low-resolution branch upsampled (nearest, PyTorch's
    asymmetric/floor) and added to the high-resolution one; linear upsampling by sizes
    (half_pixel, align_corners) and a linear downsampling (pytorch_half_pixel)."""
    b = netspec.NetBuilder((3, 8, 8), seed=seed, opset=opset)
    hi = b.relu(b.conv("input", 4, 3, pads=1, name="c_hi"))
    lo = b.relu(b.conv(hi, 4, 3, stride=2, pads=1, name="c_lo", signs=b.channel_signs(hi)))
    up = b.resize(lo, "nearest", scales=[1, 1, 2, 2], name="up_nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    h = b.add(hi, up, name="fuse")
    # sizes for the spatial axes only need `axes` (opset 18); before, sizes name the batch too
    by = (lambda size: dict(sizes=size, axes=[2, 3])) if opset >= 18 else \
        (lambda size: dict(scales=[1, 1, size[0] / 4, size[1] / 4]))
    a = b.resize(lo, "linear", name="up_linear", coordinate_transformation_mode="half_pixel",
                 **by([8, 8]))
    c = b.resize(lo, "linear", name="up_corners", coordinate_transformation_mode="align_corners",
                 **by([7, 6]))
    d = b.resize(h, "linear", scales=[1, 1, 0.5, 0.5], name="down",
                 coordinate_transformation_mode="pytorch_half_pixel")
    e = b.resize(lo, "nearest", scales=[1, 1, 1.5, 2.0], name="up_round",
                 coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
    h = b.concat([b.flatten(b.gap(h)), b.flatten(b.gap(a)), b.flatten(c), b.flatten(d),
                  b.flatten(b.gap(e))], axis=1)
    h = b.gemm(h, 5, name="head", focus=0.3)
    return b.build()


def m_upsample9(seed):
    """Upsample (opset 9, nearest): the engine raises the opset with ONNX's version converter,
    which writes a Resize."""
    b = netspec.NetBuilder((3, 4, 4), seed=seed, opset=9)
    h = b.relu(b.conv("input", 4, 3, pads=1, name="c1"))
    h = b.resize(h, "nearest", scales=[1, 1, 2, 2], name="up")
    h = b.relu(b.conv(h, 4, 3, stride=2, pads=1, name="c2"))
    h = b.gemm(b.flatten(h), 4, name="head")
    return b.build()


ZOO = {"batchnorm": m_batchnorm, "batchnorm13": functools.partial(m_batchnorm, opset=13),
       "reduce_sum": m_reduce_sum, "reduce_sum11": functools.partial(m_reduce_sum, opset=11),
       "gather": m_gather, "slice": m_slice, "resize": m_resize,
       "resize13": functools.partial(m_resize, opset=13), "upsample9": m_upsample9}


@functools.lru_cache(maxsize=None)
def get_spec(key, seed=0):
    return ZOO[key](seed)


@functools.lru_cache(maxsize=None)
def get_model(key, seed=0):
    return onnx_builder.build_model(get_spec(key, seed))


def get_engine(key, seed, method, contrast, composite, rules=None):
    return _engine(key, seed, method, contrast, composite, json.dumps(rules, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _engine(key, seed, method, contrast, composite, rules_json):
    import sglrp_onnx

    kw = dict(method=method, composite=composite, rules=json.loads(rules_json), **BOUNDS)
    if contrast is not None:
        kw["contrast"] = contrast
    return Engine(sglrp_onnx.convert(get_model(key, seed), **kw), get_spec(key, seed))


def batch_for_all_targets(key, seed):
    spec = get_spec(key, seed)
    x = np.repeat(netspec.input_array(spec, 1, seed=seed), spec.num_classes, axis=0)
    return x, np.arange(spec.num_classes)


def compare(key, seed, method, contrast, composite, rules=None, check=check_elementwise):
    x, t = batch_for_all_targets(key, seed)
    eng = get_engine(key, seed, method, contrast, composite, rules)
    out = eng.run(x, t)
    spec = get_spec(key, seed)
    ref = lrp64.explain(spec, x.astype(np.float64), t, method=method, contrast=contrast,
                        composite=composite, rules=rules, **BOUNDS)
    label = f"{key}[seed {seed}] {method}/{contrast} {composite} {rules or ''}"
    assert np.array_equal(out[eng.explained], ref.explained_class), label
    check(out[eng.relevance], ref, label)
    return out, ref


# =============================================================================================
# Part A: the reference's forward of the new ops against ONNX Runtime


@pytest.mark.parametrize("key", sorted(ZOO))
def test_reference_forward_matches_onnxruntime(key):
    spec = get_spec(key)
    x = netspec.input_array(spec, 2, seed=3)
    sess = ort.InferenceSession(get_model(key).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {spec.input_name: x})[0]
    ref = lrp64.forward(spec, x)[spec.output]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def _resize_model(in_shape, attrs, scales=None, sizes=None, roi=None, opset=19):
    inits = [onnx.numpy_helper.from_array(np.array(roi if roi is not None else [], np.float32), "roi")]
    inputs = ["x", "roi"]
    if sizes is not None:
        inits += [onnx.numpy_helper.from_array(np.array([], np.float32), "scales"),
                  onnx.numpy_helper.from_array(np.array(sizes, np.int64), "sizes")]
        inputs += ["scales", "sizes"]
    else:
        inits.append(onnx.numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs.append("scales")
    node = onnx.helper.make_node("Resize", inputs, ["y"], **attrs)
    graph = onnx.helper.make_graph([node], "r", [onnx.helper.make_tensor_value_info("x", 1, in_shape)],
                                   [onnx.helper.make_tensor_value_info("y", 1, None)], initializer=inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


RESIZE_CASES = [  # (mode, coordinate mode, nearest mode, scales or ("sizes", [h, w])): no rounding ties
    ("nearest", "asymmetric", "floor", [2.0, 3.0]),
    ("nearest", "half_pixel", "round_prefer_floor", [2.0, 2.0]),
    ("nearest", "half_pixel", "round_prefer_ceil", [1.5, 0.5]),
    ("nearest", "align_corners", "round_prefer_floor", ("sizes", [7, 5])),
    ("nearest", "tf_half_pixel_for_nn", "floor", [2.0, 0.5]),
    ("nearest", "pytorch_half_pixel", "ceil", [0.5, 2.0]),
    ("linear", "half_pixel", None, [2.0, 1.5]),
    ("linear", "half_pixel", None, ("sizes", [3, 11])),
    ("linear", "pytorch_half_pixel", None, [0.5, 1.0]),
    ("linear", "align_corners", None, ("sizes", [9, 4])),
    ("linear", "asymmetric", None, [2.0, 0.75]),
    ("linear", "half_pixel_symmetric", None, [2.0, 0.5]),
    ("linear", "tf_crop_and_resize", None, [2.0, 1.5]),
]


@pytest.mark.parametrize("case", range(len(RESIZE_CASES)))
def test_reference_resize_maps_match_onnxruntime(case):
    """The reference's interpolation maps equal ONNX Runtime's Resize on a random input."""
    mode, ctm, nearest, how = RESIZE_CASES[case]
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if nearest:
        attrs["nearest_mode"] = nearest
    ref_attrs = dict(attrs)
    roi = [0, 0, 0.1, 0.2, 1, 1, 0.8, 0.9] if ctm == "tf_crop_and_resize" else None
    if roi is not None:
        ref_attrs["roi"] = roi
    if how[0] == "sizes":
        model = _resize_model([2, 3, 6, 8], attrs, sizes=[2, 3, *how[1]], roi=roi)
        ref_attrs.update(sizes=list(how[1]), axes=[2, 3])
    else:
        model = _resize_model([2, 3, 6, 8], attrs, scales=[1, 1, *how], roi=roi)
        ref_attrs.update(scales=list(how), axes=[2, 3])
    x = np.random.default_rng(case).standard_normal((2, 3, 6, 8)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x.astype(np.float64)
    for axis, M in lrp64.resize_maps(x.shape, ref_attrs):
        ref = np.moveaxis(np.tensordot(M, np.moveaxis(ref, axis, 0), axes=1), 0, axis)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


# =============================================================================================
# Part B: the engine against the reference


@pytest.mark.parametrize("method,contrast", METHODS)
@pytest.mark.parametrize("composite", ["epsilon", "dtd"])
@pytest.mark.parametrize("key", sorted(ZOO))
def test_ops_against_reference(key, composite, method, contrast):
    compare(key, 0, method, contrast, composite)


@pytest.mark.parametrize("key", ["batchnorm", "gather", "slice", "resize"])
def test_ops_other_seed(key):
    compare(key, 1, "sglrp", "signed", "epsilon-gamma-box")


@pytest.mark.parametrize("rule", ["pass", {"rule": "epsilon", "epsilon": 0.25}, "zero",
                                  {"rule": "zero", "stabilizer": 0.1}])
def test_batchnorm_overrides(rule):
    """`pass` stays available for standalone BatchNormalization (Zennit's default), and the
    epsilon / zero rules take their own parameter."""
    compare("batchnorm", 0, "lrp", None, "epsilon", rules={"BatchNormalization": rule})
    compare("batchnorm", 0, "lrp", None, "epsilon", rules={"bn_concat": rule})


def test_batchnorm_rule_in_metadata():
    """Each standalone BatchNormalization's rule shows in the metadata's layer_rules (as LRP-0,
    `zero`, with the conversion's stabilizer); one folded into a linear layer has none."""
    eng = get_engine("batchnorm", 0, "lrp", None, "epsilon")
    rules = json.loads(eng.meta["sglrp_onnx.layer_rules"])
    for name in ("bn_pool", "bn_concat", "bn_flat"):
        assert rules[name] == {"rule": "zero", "stabilizer": 1e-6}, (name, rules.get(name))
    eng = get_engine("batchnorm", 0, "lrp", None, "epsilon", {"bn_flat": "pass"})
    assert json.loads(eng.meta["sglrp_onnx.layer_rules"])["bn_flat"] == {"rule": "pass"}


def test_strided_slice_and_gather_use_no_scatter():
    """Gather / strided Slice / Resize backward use MatMuls, no ScatterElements (SPEC section 8)."""
    for key in ("gather", "slice", "resize", "reduce_sum"):
        eng = get_engine(key, 0, "sglrp", "signed", "epsilon")
        ops = {n.op_type for n in eng.model.graph.node if n.name.startswith("sglrp/")}
        assert "ScatterElements" not in ops and "ScatterND" not in ops, (key, ops)


def test_unsupported_forms_name_the_node():
    import sglrp_onnx
    from sglrp_onnx import errors

    spec = m_resize(0)
    for layer in spec.layers:
        if layer.name == "up_linear":
            layer.attrs["mode"] = "cubic"
    with pytest.raises(errors.UnsupportedModelError, match="up_linear.*cubic"):
        sglrp_onnx.convert(onnx_builder.build_model(spec), composite="epsilon")
    spec = m_slice(0)
    with pytest.raises(errors.UnsupportedModelError, match="Slice on axis 2 needs a static size"):
        sglrp_onnx.convert(onnx_builder.build_model(spec, dynamic_spatial=True), composite="epsilon")


def test_resize_antialias_against_probed_map():
    """Linear downsampling with antialias=1 (opset 18): the reference map is probed from ONNX
    Runtime's Resize one input pixel at a time (the full 2-D map, no separability assumed), then
    LRP by hand: epsilon on the Gemm head, norm over the map."""
    import sglrp_onnx

    rng = np.random.default_rng(0)
    shape, scales = (1, 2, 9, 8), [1, 1, 0.5, 0.4]
    W = rng.uniform(0.1, 1.0, (2 * 4 * 3, 3)).astype(np.float32)
    bias = np.array([0.2, 0.1, 0.3], np.float32)
    init = onnx.numpy_helper.from_array
    nodes = [onnx.helper.make_node("Resize", ["x", "roi", "scales"], ["small"], name="down", mode="linear", antialias=1),
             onnx.helper.make_node("Flatten", ["small"], ["flat"], name="flat"),
             onnx.helper.make_node("Gemm", ["flat", "W", "b"], ["z"], name="head")]
    graph = onnx.helper.make_graph(
        nodes, "aa", [onnx.helper.make_tensor_value_info("x", 1, ["N", *shape[1:]])],
        [onnx.helper.make_tensor_value_info("z", 1, ["N", 3])],
        initializer=[init(np.zeros(0, np.float32), "roi"), init(np.array(scales, np.float32), "scales"),
                     init(W, "W"), init(bias, "b")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 8
    probe = _resize_model([1, 1, 9, 8], {"mode": "linear", "antialias": 1}, scales=scales, opset=18)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    A = np.stack([session.run(None, {"x": np.eye(72, dtype=np.float32)[k].reshape(1, 1, 9, 8)})[0].reshape(-1)
                  for k in range(72)], axis=1).astype(np.float64)  # [out pixels, in pixels]
    assert A.min() >= 0 and A.shape == (12, 72)
    x = rng.uniform(0.2, 1.0, (3, *shape[1:])).astype(np.float32)
    spec = netspec.NetSpec("x", shape[1:], "NCHW", [], "z")
    out = Engine(sglrp_onnx.convert(model, method="lrp", composite="epsilon"), spec).run(x, [0, 1, 2])
    for i, t in enumerate([0, 1, 2]):
        small = np.einsum("oi,ci->co", A, x[i].reshape(2, 72).astype(np.float64))
        z = small.reshape(-1) @ W + bias
        R_small = small.reshape(-1) * (W[:, t] * z[t] / lrp64.stab(z[t], 1e-6))
        s = R_small.reshape(2, 12) / lrp64.stab(small, 1e-6)
        ref = x[i].reshape(2, 72) * np.einsum("oi,co->ci", A, s)
        ours = out["relevance"][i].reshape(2, 72)
        assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), i
