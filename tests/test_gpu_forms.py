"""SPEC section 8 on a CPU-only machine: what the CUDA provider and TensorRT will do with the
relevance part, checked against their own rules (``sglrp_onnx.runtime_rules``), and the TensorRT form
of the MaxPool backward checked against the default form.

- the placement rules themselves, on hand-made nodes (so a test of a converted model that finds
  nothing means something);
- every model of the suite's builders (the float64 reference zoo, transformer blocks, the tiny
  CNN, the bundled EfficientNet-Lite0), converted with several methods and composites: no float
  node of the relevance part left to the CPU, opset and IR loadable by onnxruntime-gpu 1.31, and
  for target runtime ``tensorrt`` nothing onnx-tensorrt 10 refuses;
- the MaxPool backward's TensorRT form against the scatter form on random window geometry
  (kernel smaller or larger than the stride, dilations, padding, ceil_mode, 1-D and 2-D, dynamic
  spatial sizes), on inputs full of exact ties.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx
from sglrp_onnx.errors import UnsupportedModelError
from sglrp_onnx.runtime_rules import cuda_fallbacks, release_blockers, tensorrt_blockers

from reference import modern_models
from test_reference_rules import ZOO, _stem_rules, get_model
from tiny_models import plain_cnn

ort = pytest.importorskip("onnxruntime")

RELEVANCE_PART = "sglrp/"


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# -- the rules themselves ---------------------------------------------------------------------

@pytest.mark.parametrize("attrs,flagged", [
    (dict(pads=[1, 1, 0, 0], strides=[2, 2]), True),        # begin > end: what the engine wrote before
    (dict(pads=[0, 1, 1, 1]), True),
    (dict(pads=[1, 1, 1, 1], strides=[2, 2], output_padding=[1, 1]), False),
    (dict(pads=[0, 0, 0, 0], strides=[2, 2]), False),
    (dict(auto_pad="SAME_UPPER", strides=[2, 2]), True),
])
def test_cuda_rule_for_conv_transpose_pads(attrs, flagged):
    """``ConvTransposeNeedFallbackToCPU``: asymmetric pads or auto_pad SAME go to the CPU."""
    w = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    model = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", **attrs)],
                   [_float("x", [1, 2, 4, 4])], [_float("y", None)], [w])
    found = cuda_fallbacks(model)
    assert bool(found) == flagged, found
    if flagged:
        assert found[0].node == "ct" and "ConvTranspose" in str(found[0])


def test_cuda_rule_for_kernels_by_opset_and_type():
    """A float op without a CUDA kernel at the model's opset is flagged (Sign has CUDA kernels
    from opset 13 only); integer shape arithmetic is not (it may rightly stay on the CPU)."""
    nodes = [helper.make_node("Sign", ["x"], ["s"], name="sign"),
             helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Sign", ["shape"], ["shape_sign"], name="int_sign")]
    outputs = [_float("s", [2, 3]), helper.make_tensor_value_info("shape_sign", TensorProto.INT64, [2])]
    old = _model(nodes, [_float("x", [2, 3])], outputs, opset=12)
    assert [f.node for f in cuda_fallbacks(old)] == ["sign"]
    assert cuda_fallbacks(_model(nodes, [_float("x", [2, 3])], outputs, opset=13)) == []


def test_tensorrt_rules():
    """MaxPool's Indices, scatter reductions and weights that are not initializers are refused."""
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    idx = numpy_helper.from_array(np.zeros((1, 1), np.int64), "idx")
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], name="pool"),
        helper.make_node("Relu", ["w"], ["w_pos"], name="relu_w"),
        helper.make_node("Conv", ["x", "w_pos"], ["c"], name="conv_computed_weight"),
        helper.make_node("Conv", ["x", "w"], ["c2"], name="conv_ok"),
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("ScatterND", ["f", "idx", "upd"], ["sc"], reduction="add", name="scatter"),
    ]
    model = _model(nodes, [_float("x", [1, 2, 4, 4]), _float("upd", [1, 32])],
                   [_float("p", None), _float("c", None), _float("c2", None), _float("sc", None)], [w, idx], opset=18)
    found = {(f.node, f.reason.split(" ")[0]) for f in tensorrt_blockers(model)}
    assert found == {("pool", "the"), ("conv_computed_weight", "weights"), ("scatter", "reduction")}


def test_release_limits():
    model = plain_cnn()
    assert release_blockers(model) == []
    model.opset_import[0].version = 27
    assert any("opset 27" in p for p in release_blockers(model))


# -- converted models of the suite ------------------------------------------------------------

CNN_OPTIONS = [
    dict(method="sglrp", composite="epsilon"),
    dict(method="sglrp", contrast="scaled", composite="dtd"),
    dict(method="clrp", composite="epsilon-gamma-box"),
]
TRANSFORMER_OPTIONS = [
    dict(method="sglrp", composite="epsilon"),
    dict(method="sglrp", contrast="scaled", composite="transformer"),
    dict(method="lrp", composite="transformer", attention="attnlrp"),
]


def _suite_models():
    models = {f"reference:{key}": functools.partial(get_model, key) for key in sorted(ZOO)}
    models["tiny_cnn"] = plain_cnn
    models["tiny_cnn_dynamic_size"] = lambda: _dynamic_size(plain_cnn())
    for name in ("layer_norm_case", "group_norm_case", "attention_case", "gated_case", "vit_case", "poolformer_case"):
        models[f"modern:{name}"] = lambda name=name: getattr(modern_models, name)().model
    models["efficientnet_lite0"] = lambda: onnx.load(str(sglrp_onnx.__path__[0] + "/../models/efficientnet_lite0.onnx"))
    return models


def _dynamic_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with symbolic height and width."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


SUITE = _suite_models()


def _bounds(name: str, options: dict) -> dict:
    if name == "efficientnet_lite0":
        return {"preset": "efficientnet-lite"}
    if "box" in options["composite"] or options["composite"] == "dtd":
        key = name.split(":", 1)[-1]
        rules = _stem_rules(key, options["composite"]) if name.startswith("reference:") else None
        return {"low": -3.0, "high": 3.0, **({"rules": rules} if rules else {})}
    return {}


@pytest.mark.parametrize("target_runtime", ["onnxruntime", "tensorrt"])
@pytest.mark.parametrize("name", sorted(SUITE))
def test_relevance_part_stays_on_the_gpu(name, target_runtime):
    """No float node of the relevance part falls back to the CPU on ONNX Runtime's CUDA provider,
    the model loads in onnxruntime-gpu 1.31, and the TensorRT form has nothing TensorRT refuses."""
    source = SUITE[name]()
    for options in TRANSFORMER_OPTIONS if name.startswith("modern:") else CNN_OPTIONS:
        converted = sglrp_onnx.convert(source, target_runtime=target_runtime, **options, **_bounds(name, options))
        label = f"{name} {options} {target_runtime}"
        assert cuda_fallbacks(converted, prefix=RELEVANCE_PART) == [], label
        assert release_blockers(converted) == [], label
        if target_runtime == "tensorrt":
            assert tensorrt_blockers(converted, prefix=RELEVANCE_PART) == [], label


# -- the MaxPool backward: TensorRT form against the scatter form -----------------------------

def _pool_model(rank, kernel, stride, dilation, pads, ceil_mode, dynamic):
    rng = np.random.default_rng(sum(kernel) + 7 * stride + 3 * dilation + sum(pads))
    spatial = ["H", "W"][:rank] if dynamic else [11, 9][:rank]
    ones = [1] * rank
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * (2 * rank), name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=kernel, strides=[stride] * rank,
                         dilations=[dilation] * rank, pads=pads, ceil_mode=ceil_mode, name="pool"),
        helper.make_node("Conv", ["p", "w2"], ["c2"], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1, name="fc"),
    ]
    inits = [numpy_helper.from_array(rng.normal(size=(4, 2, *[3] * rank)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(5, 4, *ones)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "wf")]
    return _model(nodes, [_float("x", ["N", 2, *spatial])], [_float("y", ["N", 3])], inits)


GEOMETRY = [  # rank, kernel, stride, dilation, pads, ceil_mode
    (2, [3, 3], 2, 1, [1, 1, 1, 1], 0), (2, [2, 2], 2, 1, [0, 0, 0, 0], 0), (2, [3, 3], 1, 1, [1, 1, 1, 1], 0),
    (2, [3, 3], 2, 1, [1, 0, 0, 1], 1), (2, [2, 3], 3, 1, [0, 1, 1, 0], 1), (2, [2, 2], 1, 2, [1, 1, 0, 1], 0),
    (2, [3, 2], 2, 2, [0, 0, 0, 0], 1), (1, [3], 2, 1, [1, 1], 1), (1, [2], 3, 1, [0, 0], 0), (2, [5, 5], 2, 1, [2, 2, 2, 2], 0),
]


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("geometry", GEOMETRY, ids=[f"g{i}" for i in range(len(GEOMETRY))])
def test_maxpool_tensorrt_form_equals_scatter_form(geometry, dynamic):
    """Same relevance from both forms, ties included (quantised inputs make equal maxima in
    most windows: the first one in scan order must win in both), signed and scaled contrasts."""
    rank, kernel, stride, dilation, pads, ceil_mode = geometry
    model = _pool_model(rank, kernel, stride, dilation, pads, ceil_mode, dynamic)
    shape = (4, 2, 11, 9)[: 2 + rank]
    x = np.round(np.random.default_rng(1).uniform(-1, 1, shape) * 2).astype(np.float32) / 2
    x[0] = 0.5  # a constant image: every window of the first layer's output is one big tie
    targets = np.array([0, 1, 2, -1], np.int64)
    for contrast in ("signed", "scaled"):
        forms = {}
        for target_runtime in ("onnxruntime", "tensorrt"):
            converted = sglrp_onnx.convert(model, method="sglrp", contrast=contrast, composite="epsilon",
                                           target_runtime=target_runtime)
            kinds = {n.op_type for n in converted.graph.node if n.name.startswith(RELEVANCE_PART)}
            assert ("ScatterElements" in kinds) == (target_runtime == "onnxruntime")
            session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
            forms[target_runtime] = session.run(["relevance"], {"x": x, "target": targets})[0]
        scatter, masked = forms["onnxruntime"], forms["tensorrt"]
        assert np.abs(scatter).max() > 0
        np.testing.assert_allclose(masked, scatter, rtol=0, atol=1e-6 * np.abs(scatter).max())


def test_tensorrt_form_refuses_what_it_cannot_express():
    """MaxPool with auto_pad on a dynamic size needs the runtime size for its padding: the
    TensorRT form says so (the default form converts it)."""
    model = _pool_model(2, [3, 3], 2, 1, [0, 0, 0, 0], 0, dynamic=True)
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    del pool.attribute[:]
    pool.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("strides", [2, 2]),
                           helper.make_attribute("auto_pad", "SAME_UPPER")])
    sglrp_onnx.convert(model, composite="epsilon")
    with pytest.raises(UnsupportedModelError, match="pool.*TensorRT"):
        sglrp_onnx.convert(model, composite="epsilon", target_runtime="tensorrt")


def test_cli_convert_target_runtime_and_inspect_report(tmp_path, capsys):
    """``convert --target-runtime tensorrt`` records the target; ``inspect`` on a converted model
    reports what the CUDA provider and TensorRT will make of it."""
    from sglrp_onnx.cli import main

    source = tmp_path / "cnn.onnx"
    onnx.save(plain_cnn(), str(source))
    for target_runtime in ("onnxruntime", "tensorrt"):
        out = tmp_path / f"{target_runtime}.onnx"
        assert main(["convert", str(source), "-o", str(out), "--composite", "epsilon", "--target-runtime", target_runtime]) == 0
        capsys.readouterr()
        assert main(["inspect", str(out), "--json"]) == 0
        import json

        report = json.loads(capsys.readouterr().out)
        assert report["converted_with"]["target_runtime"] == target_runtime
        assert report["runtimes"]["cuda_cpu_fallbacks"] == []
        assert report["runtimes"]["onnxruntime_gpu_1.31"] == "loads"
        refused = report["runtimes"]["tensorrt_blockers"]
        if target_runtime == "tensorrt":
            assert refused == []
        else:  # the default form's MaxPool backward: Indices + ScatterElements(add); its relevance
            # Convs read weights computed in the graph (sglrp_onnx.recipes), which ONNX Runtime folds
            assert {entry.split("(")[1].split(")")[0] for entry in refused} == {"MaxPool", "ScatterElements", "Conv"}
            assert all("must be an initializer" in entry for entry in refused if "(Conv)" in entry)


def test_explainer_picks_the_scatter_free_form_for_deterministic_runs(tmp_path):
    """A plain classifier converted on the fly for deterministic mode gets the TensorRT form (no
    scatter-add, which CUDA computes with atomics); ``target_runtime`` given wins; a model without
    that form falls back to the default one with a warning."""
    from sglrp_onnx.runtime import Explainer

    model = plain_cnn()
    plain = Explainer(model, "cpu", cache_dir=tmp_path, composite="epsilon")
    exact = Explainer(model, "cpu", cache_dir=tmp_path, composite="epsilon", deterministic=True)
    chosen = Explainer(model, "cpu", cache_dir=tmp_path, composite="epsilon", deterministic=True, target_runtime="onnxruntime")
    assert plain.metadata["sglrp_onnx.target_runtime"] == "onnxruntime"
    assert exact.metadata["sglrp_onnx.target_runtime"] == "tensorrt"
    assert chosen.metadata["sglrp_onnx.target_runtime"] == "onnxruntime"
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(exact.explain(x).relevance, plain.explain(x).relevance, rtol=0,
                               atol=1e-6 * np.abs(plain.explain(x).relevance).max())

    no_form = _pool_model(2, [3, 3], 2, 1, [0, 0, 0, 0], 0, dynamic=True)
    pool = next(n for n in no_form.graph.node if n.op_type == "MaxPool")
    del pool.attribute[:]
    pool.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("strides", [2, 2]),
                           helper.make_attribute("auto_pad", "SAME_UPPER")])
    with pytest.warns(RuntimeWarning, match="default form"):
        fallback = Explainer(no_form, "cpu", cache_dir=tmp_path, composite="epsilon", deterministic=True)
    assert fallback.metadata["sglrp_onnx.target_runtime"] == "onnxruntime"
