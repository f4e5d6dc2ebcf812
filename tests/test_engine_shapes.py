"""Dynamic spatial sizes: one converted model serves several input sizes.

The static-size path of the engine is checked against the float64 reference elsewhere
(test_reference_rules.py); here the dynamic path (padding and transposes sized from runtime
shapes) must give the same relevance as the static path for each concrete size.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx


def _model(height, width, auto_pad, stride):
    rng = np.random.default_rng(3)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", auto_pad=auto_pad, strides=[stride, stride]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", auto_pad=auto_pad, strides=[stride, stride], group=2),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], auto_pad=auto_pad),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = [weight("w1", 4, 3, 3, 3), weight("b1", 4), weight("w2", 4, 2, 3, 3), weight("fw", 5, 4), weight("fb", 5)]
    graph = helper.make_graph(
        nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _relevance(model, x, **options):
    converted = sglrp_onnx.convert(model, **options)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["relevance"], {"x": x, "target": np.arange(len(x)) % 5})[0]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("composite", ["epsilon", "dtd"])
def test_dynamic_same_padding_equals_static(auto_pad, stride, composite):
    options = dict(composite=composite, method="lrp", low=-1.0, high=1.0)
    dynamic = _model("H", "W", auto_pad, stride)
    for size in [(11, 13), (12, 10), (7, 7)]:
        x = np.random.default_rng(sum(size)).uniform(-1, 1, (2, 3, *size)).astype(np.float32)
        expected = _relevance(_model(*size, auto_pad, stride), x, **options)
        got = _relevance(dynamic, x, **options)
        assert got.shape == x.shape
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def _strided_model(kernel, stride, group, pads):
    rng = np.random.default_rng(kernel * 10 + stride + group)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", strides=[stride, stride], group=group, pads=pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("AveragePool", ["r2"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 13, 11])
    graph = helper.make_graph(nodes, "strided", [x_info], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(8, 8 // group, kernel, kernel)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b2"),
    ])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    shapes = onnx.shape_inference.infer_shapes(model)
    flat = next(v for v in shapes.graph.value_info if v.name == "f").type.tensor_type.shape.dim[1].dim_value
    model.graph.initializer.append(numpy_helper.from_array(rng.normal(size=(4, flat)).astype(np.float32), "fw"))
    return model


@pytest.mark.parametrize("kernel,stride,group,pads", [
    (1, 2, 1, [0, 0, 0, 0]), (1, 3, 2, [0, 0, 1, 1]), (3, 1, 1, [1, 1, 1, 1]), (3, 2, 2, [1, 0, 1, 2]),
    (5, 1, 8 // 2, [2, 2, 0, 1]), (3, 2, 1, [0, 0, 0, 0]), (7, 2, 1, [3, 3, 3, 3]), (3, 2, 8, [1, 1, 1, 1]),
    (3, 2, 8, [0, 1, 1, 0]), (4, 3, 2, [1, 2, 0, 1]), (2, 2, 1, [0, 0, 1, 1]), (3, 2, 1, [2, 2, 2, 2]),
])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon-gamma-box"])
def test_transposes_as_conv_equal_conv_transpose(monkeypatch, kernel, stride, group, pads, composite):
    """The Conv forms of the transposes (grouped, stride 1, strided 1x1) give exactly what
    ConvTranspose gives (ConvTranspose itself is checked against the float64 reference)."""
    from sglrp_onnx.emit import linear

    model = _strided_model(kernel, stride, group, pads)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 13, 11)).astype(np.float32)
    options = dict(composite=composite, method="sglrp", low=-1.0, high=1.0)
    fast = _relevance(model, x, **options)
    monkeypatch.setattr(linear, "TRANSPOSE_AS_CONV", False)
    plain = _relevance(model, x, **options)
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(fast, plain, rtol=0, atol=2e-5 * np.abs(plain).max())


def _padded_model():
    """TF-style "same" padding: an explicit zero Pad in front of each Conv (as tf2onnx and
    EfficientNet's PyTorch port export it)."""
    rng = np.random.default_rng(11)
    nodes = [
        helper.make_node("Pad", ["x", "p1"], ["x_padded"], name="pad1"),
        helper.make_node("Conv", ["x_padded", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["r1"], name="relu6"),
        helper.make_node("Pad", ["r1", "p2"], ["r1_padded"], name="pad2"),
        helper.make_node("Conv", ["r1_padded", "w2"], ["c2"], name="conv2", group=4, strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 1, 2], np.int64), "p1"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p2"),
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b1"),
        numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six"),
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fw"),
    ]
    graph = helper.make_graph(nodes, "padded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 15, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("composite", ["epsilon", "dtd", "epsilon-gamma-box", "epsilon-plus-flat", "epsilon-alpha2-beta1"])
def test_pad_folded_into_conv_changes_nothing(monkeypatch, composite):
    """Folding a zero Pad into the next Conv is an exact rewrite (and skipped where it is not)."""
    import sys

    convert_module = sys.modules["sglrp_onnx.convert"]
    model = _padded_model()
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 15, 14)).astype(np.float32)
    options = dict(composite=composite, method="sglrp", low=-1.0, high=1.0)
    folded_model = sglrp_onnx.convert(model, **options)
    folded = _relevance(model, x, **options)
    monkeypatch.setattr(convert_module, "fold_pad_into_conv", lambda graph, keeps_meaning: graph)
    explicit_model = sglrp_onnx.convert(model, **options)
    explicit = _relevance(model, x, **options)
    assert np.abs(explicit).max() > 0
    np.testing.assert_allclose(folded, explicit, rtol=0, atol=1e-5 * np.abs(explicit).max())
    pads = lambda m: sum(n.op_type == "Pad" and n.name.startswith("sglrp/") for n in m.graph.node)  # noqa: E731
    assert pads(folded_model) < pads(explicit_model) or composite == "epsilon-plus-flat"


def test_inspect_lists_only_explained_nodes(tmp_path):
    """Shape computations read the image but carry no relevance: inspect must not list them."""
    from sglrp_onnx.cli.inspect import describe

    model = _model(9, 9, "SAME_UPPER", 1)
    shape = helper.make_node("Shape", ["x"], ["x_shape"], name="shape_of_image")
    first = helper.make_node("Gather", ["x_shape", "zero_index"], ["batch"], name="batch_size", axis=0)
    unsq = helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"], name="batch_1d")
    cat = helper.make_node("Concat", ["batch1", "minus_one"], ["flat_shape"], name="flat_shape", axis=0)
    model.graph.node.insert(0, shape)
    model.graph.node.insert(1, first)
    model.graph.node.insert(2, unsq)
    model.graph.node.insert(3, cat)
    for node in model.graph.node:
        if node.name == "flatten":
            node.op_type, node.input[:] = "Reshape", ["g", "flat_shape"]
            del node.attribute[:]
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0, np.int64), "zero_index"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ])
    path = tmp_path / "shape_subgraph.onnx"
    onnx.save(model, path)
    info = describe(str(path), composite="epsilon")
    names = [node["name"] for node in info["nodes"]]
    assert "shape_of_image" not in names and "batch_size" not in names
    assert {"conv1", "conv2", "fc", "flatten"} <= set(names)
    assert all(node["rule"] != "UNSUPPORTED" for node in info["nodes"])


def _channel_split_model(runtime_bounds: bool):
    """ShuffleNet-style channel split: two Slices of a conv output, each through its own conv,
    concatenated. With ``runtime_bounds`` the Slice bounds come from Shape arithmetic on a
    tensor whose shape is only known at run time, as the TorchScript exporter writes
    ``x.chunk(2, dim=1)``."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
    ]
    inits = [numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w0")]
    if runtime_bounds:
        nodes += [
            helper.make_node("Shape", ["r0"], ["s"], name="shape"),
            helper.make_node("Gather", ["s", "one"], ["channels"], name="channels", axis=0),
            helper.make_node("Div", ["channels", "two"], ["half"], name="half"),
            helper.make_node("Slice", ["r0", "zero", "half", "axis1"], ["left"], name="left"),
            helper.make_node("Slice", ["r0", "half", "channels", "axis1"], ["right"], name="right"),
        ]
        inits += [numpy_helper.from_array(np.array([1], np.int64), "one"),
                  numpy_helper.from_array(np.array([2], np.int64), "two"),
                  numpy_helper.from_array(np.array([0], np.int64), "zero"),
                  numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    else:
        nodes += [
            helper.make_node("Slice", ["r0", "zero", "three", "axis1"], ["left"], name="left"),
            helper.make_node("Slice", ["r0", "three", "big", "axis1"], ["right"], name="right"),
        ]
        inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                  numpy_helper.from_array(np.array([3], np.int64), "three"),
                  numpy_helper.from_array(np.array([2**62], np.int64), "big"),
                  numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes += [
        helper.make_node("Conv", ["right", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Concat", ["left", "r1"], ["cat"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
    ]
    inits += [numpy_helper.from_array(rng.normal(size=(3, 3, 3, 3)).astype(np.float32), "w1"),
              numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "fw")]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("composite", ["epsilon", "dtd"])
def test_slice_with_runtime_bounds_equals_constant_bounds(composite):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 9, 7)).astype(np.float32)
    options = dict(composite=composite, method="lrp", low=-1.0, high=1.0)
    expected = _relevance(_channel_split_model(False), x, **options)
    got = _relevance(_channel_split_model(True), x, **options)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
