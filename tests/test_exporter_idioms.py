"""Exporter idioms (SPEC section 5): shape computations folded with the static dimensions, a final
Softmax behind shape-only ops, NHWC layout behind in-graph preprocessing, ``-1`` dimensions,
zbox bounds that stay on the float path, and error messages that name the real cause.

The folded models are checked against the independent float64 reference (tests/reference): the
idiom model computes the same function as the reference's spec with constant pads, so its
relevance must be the reference's, and equal to that of the twin with constant pads.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx
from sglrp_onnx.errors import UnsupportedModelError

ort.set_default_logger_severity(3)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import lrp64, netspec, onnx_builder  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
RTOL = 1e-4  # elementwise, relative to max|ref| (the models are the reference's conditioned nets)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _relevance(converted: onnx.ModelProto, x: np.ndarray, target: np.ndarray, image: str = "input") -> np.ndarray:
    return _session(converted).run(["relevance"], {image: x, "target": target})[0]


def _int64(graph: onnx.GraphProto, name: str, value) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
    return name


def _insert_before(graph: onnx.GraphProto, anchor: onnx.NodeProto, nodes: list) -> None:
    index = list(graph.node).index(anchor)
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)


# -- the idioms, written into a model built from a reference spec ------------------------------


def _tf_same_pads(graph: onnx.GraphProto, x: str, kernel: int, stride: int) -> tuple[list, str]:
    """TF "same" padding as tf2onnx/timm write it for a dynamic input: per spatial axis
    pad = max((ceil(n / s) - 1) * s + k - n, 0), begin = pad // 2, end = pad - begin."""
    nodes = [helper.make_node("Shape", [x], ["tf_shape"], name="tf_shape")]
    begins, ends = [], []
    for axis in (2, 3):
        p = f"tf{axis}_"
        make = lambda op, ins, out, **kw: helper.make_node(op, ins, [p + out], name=p + out, **kw)  # noqa: E731
        nodes += [
            make("Gather", ["tf_shape", _int64(graph, p + "axis", axis)], "n", axis=0),
            make("Add", [p + "n", _int64(graph, p + "s_minus_1", stride - 1)], "n_up"),
            make("Div", [p + "n_up", _int64(graph, p + "s", stride)], "out"),
            make("Sub", [p + "out", _int64(graph, p + "one", 1)], "out_1"),
            make("Mul", [p + "out_1", p + "s"], "span"),
            make("Add", [p + "span", _int64(graph, p + "k", kernel)], "need"),
            make("Sub", [p + "need", p + "n"], "short"),
            make("Max", [p + "short", _int64(graph, p + "zero", 0)], "pad"),
            make("Div", [p + "pad", _int64(graph, p + "two", 2)], "begin"),
            make("Sub", [p + "pad", p + "begin"], "end"),
            make("Unsqueeze", [p + "begin", _int64(graph, p + "axes", [0])], "begin1"),
            make("Unsqueeze", [p + "end", p + "axes"], "end1"),
        ]
        begins.append(p + "begin1")
        ends.append(p + "end1")
    zeros = _int64(graph, "tf_zeros", [0, 0])
    nodes.append(helper.make_node("Concat", [zeros, *begins, zeros, *ends], ["tf_pads"], name="tf_pads", axis=0))
    return nodes, "tf_pads"


def _torch_fpad_pads(graph: onnx.GraphProto, x: str, amounts: list[int]) -> tuple[list, str]:
    """PyTorch's TorchScript export of ``F.pad(x, [l, r, t, b])`` with amounts computed from
    ``x.shape``: the torch-order list is widened with ConstantOfShape zeros, reshaped to pairs,
    reversed with a step -1 Slice, transposed and flattened into ONNX order."""
    nodes = [
        helper.make_node("Shape", [x], ["fp_shape"], name="fp_shape"),
        helper.make_node("Gather", ["fp_shape", _int64(graph, "fp_w_axis", 3)], ["fp_w"], name="fp_w", axis=0),
        # amounts that depend on the width: (w - w) + amount, as a traced x.shape[-1] expression
        helper.make_node("Sub", ["fp_w", "fp_w"], ["fp_zero"], name="fp_zero"),
    ]
    torch_order = []
    for i, amount in enumerate(amounts):
        nodes.append(helper.make_node("Add", ["fp_zero", _int64(graph, f"fp_a{i}", amount)], [f"fp_p{i}"], name=f"fp_p{i}"))
        nodes.append(helper.make_node("Unsqueeze", [f"fp_p{i}", _int64(graph, f"fp_ax{i}", [0])], [f"fp_u{i}"], name=f"fp_u{i}"))
        torch_order.append(f"fp_u{i}")
    nodes += [
        helper.make_node("Concat", torch_order, ["fp_list"], name="fp_list", axis=0),
        helper.make_node("Shape", ["fp_list"], ["fp_len"], name="fp_len"),
        helper.make_node("Sub", [_int64(graph, "fp_eight", [8]), "fp_len"], ["fp_missing"], name="fp_missing"),
        helper.make_node("ConstantOfShape", ["fp_missing"], ["fp_fill"], name="fp_fill",
                         value=numpy_helper.from_array(np.zeros(1, np.int64))),
        helper.make_node("Concat", ["fp_list", "fp_fill"], ["fp_full"], name="fp_full", axis=0),
        helper.make_node("Reshape", ["fp_full", _int64(graph, "fp_pairs_shape", [-1, 2])], ["fp_pairs"], name="fp_pairs"),
        helper.make_node("Slice", ["fp_pairs", _int64(graph, "fp_st", [-1]), _int64(graph, "fp_en", [-(2**63) + 1]),
                                   _int64(graph, "fp_sa", [0]), _int64(graph, "fp_ss", [-1])], ["fp_rev"], name="fp_rev"),
        helper.make_node("Transpose", ["fp_rev"], ["fp_t"], name="fp_t", perm=[1, 0]),
        helper.make_node("Reshape", ["fp_t", _int64(graph, "fp_flat_shape", [-1])], ["fp_onnx"], name="fp_onnx"),
        helper.make_node("Cast", ["fp_onnx"], ["fp_pads"], name="fp_pads", to=TensorProto.INT64),
    ]
    return nodes, "fp_pads"


def _batch_view(graph: onnx.GraphProto, reshape: onnx.NodeProto) -> list:
    """``x.view(x.size(0), -1)``: the Reshape target holds the runtime batch size."""
    x = reshape.input[0]
    nodes = [
        helper.make_node("Shape", [x], ["bv_shape"], name="bv_shape"),
        helper.make_node("Gather", ["bv_shape", _int64(graph, "bv_zero", 0)], ["bv_n"], name="bv_n", axis=0),
        helper.make_node("Unsqueeze", ["bv_n", _int64(graph, "bv_axes", [0])], ["bv_n1"], name="bv_n1"),
        helper.make_node("Concat", ["bv_n1", _int64(graph, "bv_rest", [-1])], ["bv_target"], name="bv_target", axis=0),
    ]
    reshape.input[1] = "bv_target"
    return nodes


def _padded_spec(seed: int = 3) -> netspec.NetSpec:
    """Conv -> Relu -> Pad [0,0 | 1,1] (TF "same" for k3 s2 on 8x8) -> Conv s2 -> Relu -> view -> Gemm."""
    b = netspec.NetBuilder((3, 8, 8), seed=seed)
    h = b.relu(b.conv("input", 4, kernel=3, pads=1, name="conv1"), name="relu1")
    h = b.pad(h, [0, 0, 1, 1], name="same_pad")
    h = b.relu(b.conv(h, 5, kernel=3, stride=2, name="conv2"), name="relu2")
    h = b.reshape(h, [0, -1], name="view")
    b.gemm(h, 4, name="fc", focus=0.5)
    return b.build()


def _idiom_model(spec: netspec.NetSpec, idiom: str) -> onnx.ModelProto:
    """The spec's ONNX model with its constant pads and view target computed at run time."""
    model = onnx_builder.build_model(spec)
    graph = model.graph
    pad = next(n for n in graph.node if n.name == "same_pad")
    if idiom == "tf_same":
        nodes, pads = _tf_same_pads(graph, pad.input[0], kernel=3, stride=2)
    else:
        nodes, pads = _torch_fpad_pads(graph, pad.input[0], [0, 1, 0, 1])
    _insert_before(graph, pad, nodes)
    pad.input[1] = pads
    reshape = next(n for n in graph.node if n.name == "view")
    _insert_before(graph, reshape, _batch_view(graph, reshape))
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("idiom", ["tf_same", "torch_fpad"])
@pytest.mark.parametrize("method,composite", [("lrp", "epsilon"), ("sglrp", "dtd"), ("clrp", "epsilon-plus-flat")])
def test_computed_padding_is_folded(idiom, method, composite):
    spec = _padded_spec()
    model = _idiom_model(spec, idiom)
    twin = onnx_builder.build_model(spec)
    options = dict(method=method, composite=composite, low=0.0, high=1.0)
    converted = sglrp_onnx.convert(model, **options)
    # the shipped forward is the original's: the shape subgraph is still there, node for node
    forward_nodes = [n for n in converted.graph.node if not n.name.startswith("sglrp/")]
    assert [n.SerializeToString() for n in forward_nodes] == [n.SerializeToString() for n in model.graph.node]
    twin_converted = sglrp_onnx.convert(twin, **options)
    for batch in (1, 3):  # the batch stays dynamic
        x = netspec.input_array(spec, batch, seed=batch)
        target = np.arange(batch) % 4
        got = _relevance(converted, x, target)
        reference = lrp64.explain(spec, x, target, method=method, composite=composite, low=0.0, high=1.0).relevance
        assert np.abs(reference).max() > 0
        np.testing.assert_allclose(got, reference, rtol=0, atol=RTOL * np.abs(reference).max())
        np.testing.assert_allclose(got, _relevance(twin_converted, x, target), rtol=0, atol=1e-6 * np.abs(reference).max())
        original = _session(model).run(None, {"input": x})[0]
        assert np.array_equal(_session(converted).run([model.graph.output[0].name], {"input": x, "target": target})[0], original)


def test_folding_keeps_the_batch_dynamic():
    """The view target holds the batch size: folded with one batch size it would break every
    other batch; it becomes ``[0, -1]`` (copy dimension 0), which means the same at any batch."""
    from sglrp_onnx.convert import canonical_graph

    model = _idiom_model(_padded_spec(), "tf_same")
    graph = canonical_graph(model)
    assert np.array_equal(graph.constants["tf_pads"], [0, 0, 0, 0, 0, 0, 1, 1])
    assert graph.shape("view") == (None, 80)  # its target became "copy dimension 0, then -1"
    assert np.array_equal(graph.constants["bv_target"], [0, -1])


# -- a torch module with computed padding, both exporters --------------------------------------


def _torch_export(module, example, dynamo: bool) -> onnx.ModelProto:
    import io

    import torch

    if dynamo:
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["input"], output_names=["output"],
                                     dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}}, verbose=False)
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _same_padding_net(static: bool, window: bool = False):
    """timm's ``pad_same`` before a stride-2 conv (or, with ``window``, the padding of timm's Swin
    to a multiple of its window, ``(w - n % w) % w``): the amounts come from ``x.shape``
    (computed, written as Shape/Gather arithmetic and the F.pad idiom) or are written as numbers
    (the twin)."""
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 6, 3, stride=2)
            self.fc = nn.Linear(6 * 5 * 5, 5)  # 10x10 padded to 11x11 or 12x12: 5x5 after conv2

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            if static:
                x = F.pad(x, [0, 2, 0, 2] if window else [0, 1, 0, 1])
            elif window:
                pad_h, pad_w = (3 - x.shape[-2] % 3) % 3, (3 - x.shape[-1] % 3) % 3
                x = F.pad(x, [0, pad_w, 0, pad_h])
            else:
                height, width = x.shape[-2:]
                pad_h = max((math.ceil(height / 2) - 1) * 2 + 3 - height, 0)
                pad_w = max((math.ceil(width / 2) - 1) * 2 + 3 - width, 0)
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            x = torch.relu(self.conv2(x))
            return self.fc(x.view(x.size(0), -1))

    return Net().eval()


@pytest.mark.torch
@pytest.mark.parametrize("window", [False, True], ids=["same", "window"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_computed_padding_equals_static_twin(dynamo, window):
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")
    example = torch.rand(2, 3, 10, 10)
    model = _torch_export(_same_padding_net(static=False, window=window), example, dynamo)
    twin = _torch_export(_same_padding_net(static=True, window=window), example, dynamo)
    if not dynamo:  # the TorchScript exporter writes the computed padding as a shape subgraph
        assert {"Shape", "ConstantOfShape"} <= {n.op_type for n in model.graph.node}
    options = dict(method="sglrp", composite="epsilon-gamma-box", low=0.0, high=1.0)
    converted, twin_converted = sglrp_onnx.convert(model, **options), sglrp_onnx.convert(twin, **options)
    for batch in (1, 3):
        x = np.random.default_rng(batch).uniform(0, 1, (batch, 3, 10, 10)).astype(np.float32)
        target = np.arange(batch) % 5
        expected = _relevance(twin_converted, x, target)
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(_relevance(converted, x, target), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        with torch.no_grad():
            original = _same_padding_net(static=False, window=window)(torch.from_numpy(x)).numpy()
        got = _session(converted).run(["output"], {"input": x, "target": target})[0]
        np.testing.assert_allclose(got, original, rtol=0, atol=1e-5 * np.abs(original).max())


@pytest.mark.torch
def test_pad_amounts_fold_where_onnxslim_does_not(monkeypatch):
    """timm's Swin (``(w - n % w) % w`` through ``F.pad``) is left computed by onnxslim 0.1.98 in
    the real model; the Pad's amounts are then proposed as parameters of a float-path op and
    folded where the runs at several batch sizes agree. Here onnxslim is switched off to show it."""
    torch = pytest.importorskip("torch")
    from sglrp_onnx.canonicalize import fold_model_constants, fold_shapes

    example = torch.rand(2, 3, 10, 10)
    model = _torch_export(_same_padding_net(static=False, window=True), example, dynamo=False)
    twin = _torch_export(_same_padding_net(static=True, window=True), example, dynamo=False)
    monkeypatch.setattr(fold_shapes, "_slim_values", lambda model, wanted: {})
    folded = fold_model_constants(model)
    pads = [n.input[1] for n in folded.graph.node if n.op_type == "Pad"]
    values = fold_shapes._folded_values(folded, fold_shapes._shape_only_tensors(folded))
    assert pads and np.array_equal(values[pads[0]], [0, 0, 0, 0, 0, 0, 2, 2])
    options = dict(method="lrp", composite="epsilon")
    converted, twin_converted = sglrp_onnx.convert(model, **options), sglrp_onnx.convert(twin, **options)
    x = np.random.default_rng(4).uniform(0, 1, (3, 3, 10, 10)).astype(np.float32)
    target = np.array([0, 1, 2])
    expected = _relevance(twin_converted, x, target)
    np.testing.assert_allclose(_relevance(converted, x, target), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# -- a final Softmax behind shape-only ops, -1 dimensions ---------------------------------------


def _dense_spec() -> netspec.NetSpec:
    b = netspec.NetBuilder((3, 6, 6), seed=11)
    h = b.relu(b.conv("input", 4, kernel=3, stride=2, pads=1, name="c1"))
    b.gemm(b.flatten(h), 4, name="head", focus=0.5)
    return b.build()


def _fcn_spec() -> netspec.NetSpec:
    b = netspec.NetBuilder((3, 6, 6), seed=12)
    h = b.relu(b.conv("input", 6, kernel=3, pads=1, name="c1"))
    b.gap(b.conv(h, 5, kernel=1, name="cls"), name="scores")
    return b.build()


def _ending(model: onnx.ModelProto, ending: str) -> onnx.ModelProto:
    """Append a final Softmax behind shape-only ops to the spec's model, whose output is the
    class scores; the new output is ``probabilities``, with ``-1`` batch dimensions (Paddle)."""
    graph = model.graph
    scores = graph.output[0].name
    rank = len(graph.output[0].type.tensor_type.shape.dim)
    if ending == "converter":  # what onnx's version converter writes for a Softmax of opset < 13
        nodes = [helper.make_node("Shape", [scores], ["sm_shape"], name="sm_shape"),
                 helper.make_node("Flatten", [scores], ["sm_flat"], name="sm_flat", axis=1),
                 helper.make_node("Softmax", ["sm_flat"], ["sm_soft"], name="sm_soft", axis=-1),
                 helper.make_node("Reshape", ["sm_soft", "sm_shape"], ["probabilities"], name="sm_back")]
    elif ending == "paddle":  # Softmax, then an Identity to the output
        nodes = [helper.make_node("Softmax", [scores], ["sm_soft"], name="sm_soft", axis=1),
                 helper.make_node("Identity", ["sm_soft"], ["probabilities"], name="sm_identity")]
    else:  # "squeeze": scores squeezed or reshaped to [N, K], Softmax, Identity
        if rank == 4:
            first = helper.make_node("Squeeze", [scores, _int64(graph, "sm_axes", [2, 3])], ["sm_2d"], name="sm_2d")
        else:
            first = helper.make_node("Reshape", [scores, _int64(graph, "sm_target", [0, -1])], ["sm_2d"], name="sm_2d")
        nodes = [first, helper.make_node("Softmax", ["sm_2d"], ["sm_soft"], name="sm_soft", axis=-1),
                 helper.make_node("Identity", ["sm_soft"], ["probabilities"], name="sm_identity")]
    graph.node.extend(nodes)
    output = onnx.ValueInfoProto()
    output.CopyFrom(graph.output[0])
    output.name = "probabilities"
    if ending == "squeeze":
        del output.type.tensor_type.shape.dim[2:]
    del graph.output[:]
    graph.output.append(output)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = -1  # Paddle's dynamic dimension
    return model


@pytest.mark.parametrize("head", ["dense", "fcn"])
@pytest.mark.parametrize("ending", ["converter", "paddle", "squeeze"])
def test_final_softmax_behind_shape_only_ops(head, ending):
    spec = _dense_spec() if head == "dense" else _fcn_spec()
    model = _ending(onnx_builder.build_model(spec), ending)
    converted = sglrp_onnx.convert(model, method="sglrp", composite="epsilon-plus", low=0.0, high=1.0)
    assert sglrp_onnx.metadata.read(converted)["sglrp_onnx.logits_tensor"] == spec.output
    x = netspec.input_array(spec, 3)
    target = np.array([-1, 0, 2])
    session = _session(converted)
    probabilities, logits, relevance = session.run(["probabilities", "logits", "relevance"], {"input": x, "target": target})
    reference = lrp64.explain(spec, x, target, method="sglrp", composite="epsilon-plus", low=0.0, high=1.0)
    np.testing.assert_allclose(logits, reference.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(relevance, reference.relevance, rtol=0, atol=RTOL * np.abs(reference.relevance).max())
    assert np.array_equal(probabilities, _session(model).run(None, {"input": x})[0])


def test_old_opset_4d_softmax_through_the_version_converter():
    """The old SqueezeNet zoo graphs: opset < 13, Softmax(axis=1) on [N, K, 1, 1] scores. Raising
    the opset, onnx's version converter wraps it into Flatten -> Softmax -> Reshape."""
    spec = _fcn_spec()
    model = onnx_builder.build_model(spec)
    model.graph.node.append(helper.make_node("Softmax", [spec.output], ["probabilities"], name="prob", axis=1))
    model.graph.output[0].name = "probabilities"
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 11))
    model.ir_version = 6
    onnx.checker.check_model(model, full_check=True)
    converted = sglrp_onnx.convert(model, method="lrp", composite="epsilon")
    assert "Flatten" in {n.op_type for n in converted.graph.node}  # the converter's wrapping is there
    x = netspec.input_array(spec, 2)
    relevance = _relevance(converted, x, np.array([1, 3]))
    reference = lrp64.explain(spec, x, np.array([1, 3]), method="lrp", composite="epsilon").relevance
    np.testing.assert_allclose(relevance, reference, rtol=0, atol=RTOL * np.abs(reference).max())


PADDLE_CLS = DATA / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def test_paddle_text_direction_classifier_converts():
    """The real file (rapidocr-onnxruntime 1.4.4, Apache-2.0): opset 11, ``-1`` batch dims, a
    Softmax behind an Identity (and, after the opset is raised, inside Flatten/Reshape)."""
    model = onnx.load(PADDLE_CLS)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    converted = sglrp_onnx.convert(model, method="sglrp", low=-1.0, high=1.0)
    assert sglrp_onnx.metadata.read(converted)["sglrp_onnx.logits_tensor"] == "linear_1.tmp_1"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)
    original = _session(model).run(None, {"x": x})[0]
    outputs = _session(converted).run(None, {"x": x, "target": np.array([-1, 1])})
    probabilities, logits, relevance = outputs[0], outputs[1], outputs[3]
    assert np.array_equal(probabilities, original)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), original, rtol=1e-5, atol=1e-6)
    assert relevance.shape == x.shape and np.isfinite(relevance).all() and np.abs(relevance).max() > 0


# -- layout behind in-graph preprocessing --------------------------------------------------------


def _keras_spec(normalise: bool) -> netspec.NetSpec:
    """A Keras application as tf2onnx writes it: NHWC image, Rescaling (Mul, Add by scalars) and
    optionally Normalization (per-channel Sub, Div broadcast on the last axis), then the
    Transpose to NCHW."""
    b = netspec.NetBuilder((9, 9, 3), layout="NHWC", seed=21)
    h = b.affine("input", "Mul", np.float32(1 / 127.5), name="rescale_mul")
    h = b.affine(h, "Add", np.float32(-1.0), name="rescale_add")
    if normalise:
        h = b.affine(h, "Sub", np.array([0.1, -0.2, 0.05], np.float32), name="norm_sub")
        h = b.affine(h, "Div", np.array([0.9, 1.1, 0.8], np.float32), name="norm_div")
    h = b.transpose(h, [0, 3, 1, 2], name="to_nchw")
    h = b.relu(b.conv(h, 5, kernel=3, pads=1, name="c1"))
    b.gemm(b.flatten(b.gap(h)), 4, name="head")
    return b.build()


@pytest.mark.parametrize("normalise", [False, True])
def test_nhwc_found_behind_preprocessing(normalise):
    spec = _keras_spec(normalise)
    model = onnx_builder.build_model(spec)
    low, high = [0.0, 0.0, 0.0], [255.0, 200.0, 255.0]  # per channel: only right on the last axis
    converted = sglrp_onnx.convert(model, method="lrp", composite="epsilon-gamma-box", low=low, high=high)
    assert sglrp_onnx.metadata.read(converted)["sglrp_onnx.layout"] == "NHWC"
    x = np.random.default_rng(3).uniform(0, 200, (2, 9, 9, 3)).astype(np.float32)
    target = np.array([0, 3])
    reference = lrp64.explain(spec, x, target, method="lrp", composite="epsilon-gamma-box", low=low, high=high).relevance
    np.testing.assert_allclose(_relevance(converted, x, target), reference, rtol=0, atol=RTOL * np.abs(reference).max())


def _head_only_model(shape: list, first: str) -> onnx.ModelProto:
    """An image of ``shape`` read by ``first`` (Flatten -> Gemm, or a Conv on axis 1)."""
    rng = np.random.default_rng(0)
    inits = []
    if first == "Conv":
        nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
                 helper.make_node("Flatten", ["c"], ["f"], name="flat")]
        inits.append(numpy_helper.from_array(rng.normal(size=(2, shape[1], 1, 1)).astype(np.float32), "w"))
        features = 2 * shape[2] * shape[3]
    else:
        nodes = [helper.make_node("Flatten", ["image"], ["f"], name="flat")]
        features = int(np.prod(shape[1:]))
    nodes.append(helper.make_node("Gemm", ["f", "fc"], ["scores"], name="fc", transB=1))
    inits.append(numpy_helper.from_array(rng.normal(size=(3, features)).astype(np.float32), "fc"))
    graph = helper.make_graph(nodes, "layout", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *shape[1:]])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("shape,first,layout", [
    ([1, 28, 28, 1], "Flatten", "NHWC"),   # MNIST-like NHWC: last axis 1, axis 1 is 28
    ([1, 32, 32, 3], "Flatten", "NHWC"),   # last axis 3, axis 1 neither 1 nor 3
    ([1, 3, 32, 32], "Flatten", "NCHW"),
    ([1, 3, 8, 3], "Flatten", "NCHW"),     # axis 1 is 3 too: NCHW stays the default
    ([1, 8, 8, 3], "Conv", "NCHW"),        # the graph says otherwise: a Conv reads 8 channels on axis 1
])
def test_layout_from_the_image_shape_unless_the_graph_says(shape, first, layout):
    converted = sglrp_onnx.convert(_head_only_model(shape, first), method="lrp", composite="epsilon")
    assert sglrp_onnx.metadata.read(converted)["sglrp_onnx.layout"] == layout


# -- zbox bounds through a space-to-depth stem ---------------------------------------------------


def _space_to_depth_spec() -> netspec.NetSpec:
    """TResNet's stem: view(N, C, H/2, 2, W/2, 2), permute(0, 3, 5, 1, 2, 4), view(N, 4C, H/2, W/2)."""
    b = netspec.NetBuilder((3, 8, 8), seed=31)
    h = b.reshape("input", [0, 3, 4, 2, 4, 2], name="s2d_split")
    h = b.transpose(h, [0, 3, 5, 1, 2, 4], name="s2d_move")
    h = b.reshape(h, [0, 12, 4, 4], name="s2d_merge")
    h = b.relu(b.conv(h, 6, kernel=3, pads=1, name="c1"))
    b.gemm(b.flatten(b.gap(h)), 4, name="head")
    return b.build()


def _shape_read_targets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Both view targets computed as TResNet's export writes them: N from ``Shape(image)``."""
    graph = model.graph
    nodes = [helper.make_node("Shape", ["input"], ["s2d_shape"], name="s2d_shape"),
             helper.make_node("Gather", ["s2d_shape", _int64(graph, "s2d_zero", [0])], ["s2d_n"], name="s2d_n", axis=0)]
    for name, rest in (("s2d_split", [3, 4, 2, 4, 2]), ("s2d_merge", [12, 4, 4])):
        nodes.append(helper.make_node("Concat", ["s2d_n", _int64(graph, f"{name}_rest", rest)], [f"{name}_target"], name=f"{name}_target", axis=0))
        next(n for n in graph.node if n.name == name).input[1] = f"{name}_target"
    _insert_before(graph, graph.node[0], nodes)
    return model


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "targets-computed"])
def test_zbox_bounds_through_space_to_depth_stem(fold, monkeypatch):
    """Bounds go through the Reshape/Transpose/Reshape stem and never into the targets computed
    from ``Shape(image)``; also where those targets stay computed (folding switched off)."""
    convert_module = importlib.import_module("sglrp_onnx.convert")  # the package's ``convert`` is the function
    if not fold:
        monkeypatch.setattr(convert_module, "fold_shape_computations", lambda model: model)
    spec = _space_to_depth_spec()
    model = _shape_read_targets(onnx_builder.build_model(spec))
    low, high = [0.0, -0.5, 0.1], [1.0, 0.5, 0.9]
    converted = sglrp_onnx.convert(model, method="sglrp", composite="dtd", low=low, high=high)
    x = netspec.input_array(spec, 2)
    x = np.clip(x, np.array(low).reshape(1, 3, 1, 1), np.array(high).reshape(1, 3, 1, 1)).astype(np.float32)
    target = np.array([2, -1])
    reference = lrp64.explain(spec, x, target, method="sglrp", composite="dtd", low=low, high=high).relevance
    np.testing.assert_allclose(_relevance(converted, x, target), reference, rtol=0, atol=RTOL * np.abs(reference).max())


# -- messages: the real cause first, every blocker listed, unknown dimensions as ? ---------------


def _blocked_spec() -> netspec.NetSpec:
    b = netspec.NetBuilder((3, 8, 8), seed=41)
    h = b.relu(b.conv("input", 4, kernel=3, pads=1, name="c1"), name="r1")
    h = b.relu(b.conv(h, 4, kernel=3, pads=1, name="c2"), name="r2")
    b.gemm(b.flatten(b.gap(h)), 3, name="head")
    return b.build()


def _with_unsupported(model: onnx.ModelProto, ops: dict[str, str]) -> onnx.ModelProto:
    """Turn the named Relu nodes into the given op types (Sin, Cos: no relevance rule)."""
    for node in model.graph.node:
        if node.name in ops:
            node.op_type = ops[node.name]
    return model


def _stem_pad_model() -> onnx.ModelProto:
    """tf_efficientnet's stem: the image padded by amounts computed from its (dynamic) size, the
    first conv behind; nothing can fold these pads."""
    b = netspec.NetBuilder((3, 8, 8), seed=42)
    h = b.pad("input", [0, 0, 1, 1], name="same_pad")
    h = b.relu(b.conv(h, 4, kernel=3, stride=2, name="stem"))
    b.gemm(b.flatten(b.gap(h)), 3, name="head")
    model = onnx_builder.build_model(b.build(), dynamic_spatial=True)
    graph = model.graph
    pad = next(n for n in graph.node if n.name == "same_pad")
    nodes, pads = _torch_fpad_pads(graph, "input", [0, 1, 0, 1])
    _insert_before(graph, pad, nodes)
    pad.input[1] = pads
    return model


def test_real_cause_first_unsupported_op_before_missing_bounds():
    """dtd needs bounds; without them the error names the op that blocks conversion anyway."""
    model = _with_unsupported(onnx_builder.build_model(_blocked_spec()), {"r2": "Sin"})
    with pytest.raises(UnsupportedModelError) as caught:
        sglrp_onnx.convert(model)  # default composite, no bounds
    assert "'r2'" in str(caught.value) and "Sin" in str(caught.value)


def test_real_cause_first_computed_padding_before_bounds():
    """The issue's report: a zbox error on a Cast where the real cause was computed padding."""
    with pytest.raises(UnsupportedModelError) as caught:
        sglrp_onnx.convert(_stem_pad_model(), low=0.0, high=1.0)
    message = str(caught.value)
    assert "'same_pad'" in message and "computed at run time" in message and "Cast" not in message
    assert "[?,3,?,?]" in message  # unknown dimensions as ?, not N


def test_convert_names_the_first_blocker_and_counts_the_others():
    model = _with_unsupported(onnx_builder.build_model(_blocked_spec()), {"r1": "Cos", "r2": "Sin"})
    with pytest.raises(UnsupportedModelError) as caught:
        sglrp_onnx.convert(model, method="lrp", composite="epsilon")
    message = str(caught.value)
    assert "'r2'" in message and "Sin" in message and "1 more blocking node" in message and "inspect" in message


@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_lists_every_blocking_node(tmp_path, capsys, as_json):
    from sglrp_onnx.cli import main

    model = _with_unsupported(onnx_builder.build_model(_blocked_spec()), {"r1": "Cos", "r2": "Sin"})
    path = tmp_path / "blocked.onnx"
    onnx.save(model, path)
    code = main(["inspect", str(path), "--composite", "epsilon", *(["--json"] if as_json else [])])
    out = capsys.readouterr().out
    assert code == UnsupportedModelError.exit_code
    if as_json:
        import json

        info = json.loads(out)
        assert {entry["name"] for entry in info["blocking"]} == {"r1", "r2"}
        assert [n["name"] for n in info["nodes"]] == ["c1", "r1", "c2", "r2", "globalaveragepool0", "flatten0", "head"]
        assert {n["name"]: n["rule"] for n in info["nodes"]}["r1"] == "BLOCKED"
    else:
        assert "2 blocking node(s)" in out
        for needle in ("r1: ", "Cos", "r2: ", "Sin", "head", "c1"):  # the blockers and the rest
            assert needle in out
    # a model without blockers: exit code 0
    ok = tmp_path / "ok.onnx"
    onnx.save(onnx_builder.build_model(_blocked_spec()), ok)
    assert main(["inspect", str(ok), "--composite", "epsilon"]) == 0
    assert "blocking" not in capsys.readouterr().out


def test_inspect_reports_computed_padding(tmp_path, capsys):
    from sglrp_onnx.cli import main

    path = tmp_path / "stem.onnx"
    onnx.save(_stem_pad_model(), path)
    assert main(["inspect", str(path)]) == UnsupportedModelError.exit_code
    out = capsys.readouterr().out
    assert "same_pad: " in out and "computed at run time" in out
