"""Two exports of one computation must get one relevance: canonical forms checked against each other.

- a standalone BatchNormalization and the same affine map written as ``Mul`` + ``Add`` by
  constants (tf2onnx's form of Keras' BatchNorm) both get the epsilon rule of the map (SPEC
  section 5); the image's own preprocessing (Mul + Add before any linear layer, Keras'
  Rescaling) keeps ``pass``.
"""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx

C = 4


def _tensor(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _net(standalone_bn: bool, rescaling: bool = False, seed: int = 3) -> onnx.ModelProto:
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
    else:
        inits += [_tensor("slope", slope.reshape(C, 1, 1)), _tensor("offset", offset.reshape(C, 1, 1))]
        nodes += [helper.make_node("Mul", ["a1", "slope"], ["m1"]), helper.make_node("Add", ["m1", "offset"], ["n1"])]
    nodes += [helper.make_node("Conv", ["n1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "wd"], ["scores"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _relevance(model, **options):
    converted = sglrp_onnx.convert(model, **options)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    return session.run(["relevance"], {"image": x, "target": np.array([-1, 2], np.int64)})[0], converted


def test_batchnorm_as_mul_add_gets_the_batchnorm_rule():
    for options in (dict(method="lrp", composite="epsilon"), dict(method="sglrp", low=0.0, high=1.0)):
        as_op, _ = _relevance(_net(True), **options)
        as_mul_add, converted = _relevance(_net(False), **options)
        np.testing.assert_allclose(as_mul_add, as_op, rtol=1e-4, atol=1e-5 * np.abs(as_op).max())
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
