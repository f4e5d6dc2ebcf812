"""Two exports of one computation must get one relevance: canonical forms checked against each other.

- a standalone BatchNormalization and the same affine map written as ``Mul`` + ``Add`` by
  constants (tf2onnx's form of Keras' BatchNorm) or as ``Sub`` + ``Mul`` + ``Add`` (Caffe
  conversions, yahoo's open_nsfw) all get the epsilon rule of the map (SPEC section 5); the
  image's own preprocessing (Mul + Add before any linear layer, Keras' Rescaling) keeps ``pass``;
- a Resize whose sizes are computed from ``Shape`` (``F.interpolate(x, size=...)``) and its twin
  with constant sizes;
- the dynamo exporter's ``as_strided`` flatten (Gather with runtime indices) and a Flatten;
- GatherND with constant indices (dynamo's adaptive pooling) and two Gathers picking the same.

The rules of the twins are checked against the float64 reference elsewhere; here each pair must
agree for lrp/epsilon, sglrp/dtd and the scaled contrast.
"""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx

C = 4


def _tensor(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _net(standalone_bn: bool, rescaling: bool = False, seed: int = 3, centred: bool = False) -> onnx.ModelProto:
    """image -> [Mul/Add rescaling] -> Conv -> Relu -> (BatchNorm | Mul + Add) -> Conv -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    scale, bias = rng.uniform(0.5, 1.5, C), rng.uniform(-0.3, 0.3, C)
    mean, var = rng.uniform(-0.2, 0.2, C), rng.uniform(0.5, 1.5, C)
    slope = scale / np.sqrt(var + 1e-5)
    offset = bias - mean * slope
    inits = [_tensor("w1", rng.normal(0, 0.5, (C, 3, 3, 3))), _tensor("w2", rng.normal(0, 0.5, (C, C, 3, 3))),
             _tensor("wd", rng.normal(0, 0.5, (C, 5))), _tensor("half", [0.5]), _tensor("shift", [-1.0])]
    nodes = []
    source = "image"
    if rescaling:
        nodes += [helper.make_node("Mul", ["image", "half"], ["scaled"]), helper.make_node("Add", ["scaled", "shift"], ["rescaled"])]
        source = "rescaled"
    nodes += [helper.make_node("Conv", [source, "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["a1"])]
    if standalone_bn:
        inits += [_tensor(n, v) for n, v in (("s", scale), ("b", bias), ("m", mean), ("v", var))]
        nodes.append(helper.make_node("BatchNormalization", ["a1", "s", "b", "m", "v"], ["n1"], epsilon=1e-5))
    elif centred:  # (x - mean) * a + (B - 0): the form Caffe/TF conversions write
        inits += [_tensor("mean", mean.reshape(C, 1, 1)), _tensor("slope", slope.reshape(C, 1, 1)), _tensor("beta", bias.reshape(C, 1, 1))]
        nodes += [helper.make_node("Sub", ["a1", "mean"], ["d1"]), helper.make_node("Mul", ["d1", "slope"], ["m1"]),
                  helper.make_node("Add", ["m1", "beta"], ["n1"])]
    else:
        inits += [_tensor("slope", slope.reshape(C, 1, 1)), _tensor("offset", offset.reshape(C, 1, 1))]
        nodes += [helper.make_node("Mul", ["a1", "slope"], ["m1"]), helper.make_node("Add", ["m1", "offset"], ["n1"])]
    nodes += [helper.make_node("Conv", ["n1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "wd"], ["scores"])]
    return _classifier(nodes, inits, 8)


def _classifier(nodes, inits, size: int, opset: int = 17, batch="N") -> onnx.ModelProto:
    """A model ``image [batch, 3, size, size] -> ... -> scores [batch, 5]`` of the given nodes."""
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


#: One conversion of each kind: epsilon-LRP, SGLRP with zbox bounds, the scaled contrast.
OPTIONS = (dict(method="lrp", composite="epsilon"), dict(method="sglrp", low=0.0, high=1.0),
           dict(method="clrp", contrast="scaled", composite="epsilon"))


def _assert_same_relevance(expected_model, model, shape):
    for options in OPTIONS:
        expected, _ = _relevance_at(expected_model, shape, **options)
        got, _ = _relevance_at(model, shape, **options)
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def _relevance_at(model, shape, **options):
    converted = sglrp_onnx.convert(model, **options)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    return session.run(["relevance"], {"image": x, "target": np.array([-1, 2], np.int64)})[0], converted


def _relevance(model, **options):
    return _relevance_at(model, (2, 3, 8, 8), **options)


def test_batchnorm_as_mul_add_gets_the_batchnorm_rule():
    for options in (dict(method="lrp", composite="epsilon"), dict(method="sglrp", low=0.0, high=1.0)):
        as_op, _ = _relevance(_net(True), **options)
        as_mul_add, converted = _relevance(_net(False), **options)
        np.testing.assert_allclose(as_mul_add, as_op, rtol=1e-4, atol=1e-5 * np.abs(as_op).max())
        as_sub_mul_add, _ = _relevance(_net(False, centred=True), **options)
        np.testing.assert_allclose(as_sub_mul_add, as_op, rtol=1e-4, atol=1e-5 * np.abs(as_op).max())
        rules = {k: v for k, v in sglrp_onnx.metadata.read(converted).items() if k.endswith("layer_rules")}
        assert '"rule": "zero"' in next(iter(rules.values()))
    # the same map given `pass` differs: the test above can tell the two rules apart
    passed, _ = _relevance(_net(False), method="lrp", composite="epsilon", rules={"Affine": "pass"})
    assert np.linalg.norm(passed - as_op) > 1e-3 * np.linalg.norm(as_op)


def test_preprocessing_mul_add_keeps_pass():
    from sglrp_onnx.convert import canonical_graph

    graph = canonical_graph(_net(False, rescaling=True))
    kinds = [n.op_type for n in graph.nodes]
    assert kinds[:2] == ["Mul", "Add"] and kinds.count("Affine") == 1


def _upsampling_net(runtime_sizes: bool) -> onnx.ModelProto:
    """image -> Conv -> Relu -> Resize(linear, x2) -> Conv -> GAP -> Flatten -> Gemm, the Resize's
    sizes either constant or computed as ``F.interpolate(x, size=...)`` writes them."""
    rng = np.random.default_rng(5)
    inits = [_tensor("w1", rng.normal(0, 0.5, (C, 3, 3, 3))), _tensor("w2", rng.normal(0, 0.5, (C, C, 3, 3))),
             _tensor("wd", rng.normal(0, 0.5, (C, 5))), numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([2], np.int64), "two"), numpy_helper.from_array(np.array([16, 16], np.int64), "hw")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["a1"])]
    if runtime_sizes:
        nodes += [helper.make_node("Shape", ["a1"], ["shape"]), helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
                  helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)]
    else:
        inits.append(numpy_helper.from_array(np.array([2, C, 16, 16], np.int64), "sizes"))
    nodes += [helper.make_node("Resize", ["a1", "", "", "sizes"], ["up"], mode="linear"),
              helper.make_node("Conv", ["up", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "wd"], ["scores"])]
    return _classifier(nodes, inits, 8, opset=18, batch="N" if runtime_sizes else 2)


def test_resize_with_sizes_computed_from_shape():
    """mobilevit's ``F.interpolate(x, size=(h, w))``: sizes read ``N, C`` off ``Shape(x)``."""
    _assert_same_relevance(_upsampling_net(False), _upsampling_net(True), (2, 3, 8, 8))


def _flatten_net(as_strided: bool) -> onnx.ModelProto:
    """image -> Conv -> Relu -> GlobalAveragePool -> flatten -> Gemm; the flatten either a
    Flatten, or the dynamo exporter's ``as_strided``: Gather from the tensor reshaped to ``[-1]``
    with indices ``Range(N) * C + Range(C)`` computed from the runtime batch size."""
    rng = np.random.default_rng(9)
    inits = [_tensor("w1", rng.normal(0, 0.5, (C, 3, 3, 3))), _tensor("wd", rng.normal(0, 0.5, (C, 5)))]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("GlobalAveragePool", ["a1"], ["g"])]
    if as_strided:
        ints = {"minus_one": [-1], "zero": 0, "one": 1, "channels": C, "zero1": [0], "one1": [1], "rows": [-1, 1], "nc": [0, C]}
        inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
        nodes += [helper.make_node("Reshape", ["g", "minus_one"], ["flat"]),
                  helper.make_node("Shape", ["g"], ["shape"]), helper.make_node("Slice", ["shape", "zero1", "one1"], ["n1"]),
                  helper.make_node("Squeeze", ["n1"], ["n"]),
                  helper.make_node("Range", ["zero", "n", "one"], ["batch_ids"]),
                  helper.make_node("Mul", ["batch_ids", "channels"], ["starts"]),
                  helper.make_node("Reshape", ["starts", "rows"], ["starts_col"]),
                  helper.make_node("Range", ["zero", "channels", "one"], ["channel_ids"]),
                  helper.make_node("Add", ["starts_col", "channel_ids"], ["indices"]),
                  helper.make_node("Gather", ["flat", "indices"], ["f"], axis=0)]
    else:
        nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    nodes.append(helper.make_node("Gemm", ["f", "wd"], ["scores"]))
    return _classifier(nodes, inits, 8, opset=18)


def test_as_strided_gather_with_runtime_indices():
    _assert_same_relevance(_flatten_net(False), _flatten_net(True), (2, 3, 8, 8))
    converted = sglrp_onnx.convert(_flatten_net(True), method="lrp", composite="epsilon")
    assert any(n.op_type == "ScatterElements" for n in converted.graph.node)


def _upsampled_by_indexing(gather_nd: bool) -> onnx.ModelProto:
    """image -> Conv -> Relu -> 2x2 -> 3x3 nearest upsampling -> GAP -> Flatten -> Gemm; the
    upsampling written as the dynamo exporter writes adaptive pooling (Transpose to spatial-first,
    GatherND with constant indices, Transpose back) or as two Gathers with constant indices."""
    rng = np.random.default_rng(11)
    inits = [_tensor("w1", rng.normal(0, 0.5, (C, 3, 2, 2))), _tensor("wd", rng.normal(0, 0.5, (C, 5)))]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], strides=[2, 2]), helper.make_node("Relu", ["c1"], ["a1"])]
    picks = [0, 0, 1]
    if gather_nd:
        index = np.array([[[i, j] for j in picks] for i in picks], np.int64)  # [3, 3, 2]
        inits.append(numpy_helper.from_array(index, "index"))
        nodes += [helper.make_node("Transpose", ["a1"], ["spatial_first"], perm=[2, 3, 0, 1]),
                  helper.make_node("GatherND", ["spatial_first", "index"], ["picked"]),
                  helper.make_node("Transpose", ["picked"], ["up"], perm=[2, 3, 0, 1])]
    else:
        inits.append(numpy_helper.from_array(np.array(picks, np.int64), "picks"))
        nodes += [helper.make_node("Gather", ["a1", "picks"], ["rows"], axis=2), helper.make_node("Gather", ["rows", "picks"], ["up"], axis=3)]
    nodes += [helper.make_node("GlobalAveragePool", ["up"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "wd"], ["scores"])]
    return _classifier(nodes, inits, 4, opset=18)


def test_gather_nd_with_constant_indices():
    _assert_same_relevance(_upsampled_by_indexing(False), _upsampled_by_indexing(True), (2, 3, 4, 4))
