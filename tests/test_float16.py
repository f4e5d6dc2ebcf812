"""float16 models: the forward stays float16, the relevance part runs in float32 (SPEC section 6).

The float16 model's relevance must match the relevance of the same network in float32 (weights
rounded to float16 in both), up to the float16 rounding of the forward activations.
"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx


def _net(dtype):
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(7)

    def weight(name, *shape, scale=0.3):
        values = rng.normal(0, scale, shape).astype(np.float16)  # same rounded weights in both models
        return numpy_helper.from_array(values.astype(np_type), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", "p1"], ["a"], name="residual"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["scores"], name="fc", transB=1),
        helper.make_node("Softmax", ["scores"], ["prob"], name="softmax", axis=1),
    ]
    inits = [weight("w1", 6, 3, 3, 3), weight("b1", 6, scale=0.1), weight("w2", 6, 6, 3, 3), weight("wf", 4, 6), weight("bf", 4, scale=0.1)]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", dtype, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("prob", dtype, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x, **options):
    converted = sglrp_onnx.convert(model, **options)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return converted, dict(zip(names, session.run(None, {"x": x, "target": np.array([-1, 0, 3], np.int64)})))


@pytest.mark.parametrize("method,contrast", [("lrp", None), ("sglrp", "signed"), ("sglrp", "scaled"), ("clrp", None)])
@pytest.mark.parametrize("composite", ["epsilon", "dtd", "epsilon-gamma-box"])
def test_float16_model_matches_float32_model(method, contrast, composite):
    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 12, 12)).astype(np.float16)
    options = dict(method=method, contrast=contrast, composite=composite, low=0.0, high=1.0)
    half, got = _run(_net(TensorProto.FLOAT16), x, **options)
    _, expected = _run(_net(TensorProto.FLOAT), x.astype(np.float32), **options)
    assert got["prob"].dtype == np.float16
    assert got["relevance"].dtype == np.float32 and got["logits"].dtype == np.float32
    assert got["relevance"].shape == x.shape
    np.testing.assert_array_equal(got["explained_class"], expected["explained_class"])
    for row in range(len(x)):
        ref = expected["relevance"][row]
        error = np.linalg.norm(got["relevance"][row] - ref) / np.linalg.norm(ref)
        assert error < 2e-2, (row, error)  # float16 activations carry ~1e-3 relative rounding
    assert np.isfinite(got["relevance"]).all()
    half_output = next(o for o in half.graph.output if o.name == "relevance")
    assert half_output.type.tensor_type.elem_type == TensorProto.FLOAT
