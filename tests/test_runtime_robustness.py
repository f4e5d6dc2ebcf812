"""The runtime under stress: clear InputErrors for wrong input from the Python API, and finite
relevance for degenerate and extreme images with every method, contrast and composite.

The model is a small conv net built here with onnx.helper: Conv + BatchNormalization (folded),
MaxPool, a residual Add, a standalone BatchNormalization, AveragePool, a dense head of two Gemm
layers and a final Softmax.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

import sglrp_onnx  # noqa: E402
from sglrp_onnx.composites import COMPOSITES  # noqa: E402
from sglrp_onnx.errors import InputError, UsageError  # noqa: E402
from sglrp_onnx.runtime import Explainer  # noqa: E402

K = 5
SIZE = 16
METHODS = [("lrp", None), ("clrp", "signed"), ("clrp", "scaled"), ("sglrp", "signed"), ("sglrp", "scaled")]
LOW, HIGH = -3.0, 3.0  # zbox bounds; the extreme images below lie far outside them on purpose


def small_net(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.4):
        return rng.normal(0, scale, shape).astype(np.float32)

    arrays = {
        "w1": normal(4, 3, 3, 3), "b1": normal(4, scale=0.1),
        "bn1_scale": 1 + normal(4, scale=0.1), "bn1_bias": normal(4, scale=0.1),
        "bn1_mean": normal(4, scale=0.1), "bn1_var": 0.5 + np.abs(normal(4)),
        "w2": normal(4, 4, 3, 3), "b2": normal(4, scale=0.1),
        "bn2_scale": 1 + normal(4, scale=0.1), "bn2_bias": normal(4, scale=0.1),
        "bn2_mean": normal(4, scale=0.1), "bn2_var": 0.5 + np.abs(normal(4)),
        "wd1": normal(8, 16), "bd1": normal(8, scale=0.1),
        "wd2": normal(K, 8), "bd2": normal(K, scale=0.1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="maxpool"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["p1", "r2"], ["res"], name="residual"),
        helper.make_node("BatchNormalization", ["res", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["n2"], name="bn_standalone"),
        helper.make_node("AveragePool", ["n2"], ["a"], kernel_shape=[4, 4], strides=[4, 4], name="avgpool"),
        helper.make_node("Flatten", ["a"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "wd1", "bd1"], ["d1"], transB=1, name="dense1"),
        helper.make_node("Relu", ["d1"], ["rd1"], name="relu_dense"),
        helper.make_node("Gemm", ["rd1", "wd2", "bd2"], ["scores"], transB=1, name="dense2"),
        helper.make_node("Softmax", ["scores"], ["prob"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "robust",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", K])],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def extreme_images() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(1)
    shape = (3, SIZE, SIZE)
    images = {
        "zeros": np.zeros(shape),
        "constant": np.full(shape, 0.5),
        "negative": -np.abs(rng.normal(size=shape)),
        "constant_negative": np.full(shape, -2.0),
        "random_1e4": rng.normal(size=shape) * 1e4,
        "constant_1e4": np.full(shape, 1e4),
        "random_1e8": rng.normal(size=shape) * 1e8,
        "constant_1e8": np.full(shape, 1e8),
        "constant_minus_1e8": np.full(shape, -1e8),
        "tiny": np.full(shape, 1e-30),
    }
    return list(images), np.stack(list(images.values())).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return small_net()


@pytest.fixture(scope="module")
def explainer(model) -> Explainer:
    converted = sglrp_onnx.convert(model, low=LOW, high=HIGH)
    return Explainer(converted, providers="cpu", cache=False)


# -- finite relevance everywhere --------------------------------------------------------------------


@pytest.mark.parametrize("composite", list(COMPOSITES))
@pytest.mark.parametrize("method, contrast", METHODS)
def test_relevance_is_finite_for_extreme_images(model, method, contrast, composite):
    converted = sglrp_onnx.convert(model, method=method, contrast=contrast, composite=composite, low=LOW, high=HIGH)
    explainer = Explainer(converted, providers="cpu", cache=False)
    names, images = extreme_images()
    n = len(names)
    for targets in ([-1] * n, [i % K for i in range(n)]):
        result = explainer.explain(images, targets)
        assert result.relevance.shape == images.shape
        assert result.relevance.dtype == np.float32
        bad = [names[i] for i in range(n) if not np.isfinite(result.relevance[i]).all()]
        assert bad == [], f"non-finite relevance ({method}/{contrast}/{composite}) for {bad}"
        assert np.isfinite(result.logits).all()
        expected = result.predicted_class if targets[0] == -1 else np.asarray(targets)
        np.testing.assert_array_equal(result.explained_class, expected)


def test_ordinary_images_get_nonzero_relevance(explainer):
    """Guard against a 'fix' that makes relevance finite by zeroing it."""
    images = np.random.default_rng(2).uniform(0, 1, (3, 3, SIZE, SIZE)).astype(np.float32)
    result = explainer.explain(images, [0, 1, 2])
    assert np.isfinite(result.relevance).all()
    assert (np.abs(result.relevance).reshape(3, -1).sum(axis=1) > 0).all()


# -- input validation -------------------------------------------------------------------------------


def good_images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(3).uniform(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize(
    "images, needles",
    [
        (np.zeros((3, SIZE, SIZE), np.float32), ["4 dimensions", "[N, 3, 16, 16]", "images[None]"]),
        (np.zeros((1, SIZE, SIZE, 3), np.float32), ["[1, 16, 16, 3]", "axis 1 must be 3", "NCHW"]),
        (np.zeros((1, 3, SIZE, SIZE + 1), np.float32), ["axis 3 must be 16"]),
        (np.zeros((1, 1, 3, SIZE, SIZE), np.float32), ["4 dimensions"]),
        (np.zeros((0, 3, SIZE, SIZE), np.float32), ["empty"]),
    ],
    ids=["no_batch_axis", "nhwc_for_nchw", "wrong_width", "rank_5", "empty_batch"],
)
def test_wrong_shape_is_an_input_error(explainer, images, needles):
    with pytest.raises(InputError) as caught:
        explainer.explain(images, 0)
    for needle in needles:
        assert needle in str(caught.value), (needle, str(caught.value))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64, np.uint8])
def test_wrong_dtype_is_an_input_error(explainer, dtype):
    with pytest.raises(InputError, match=f"dtype float32, got {np.dtype(dtype).name}"):
        explainer.explain(good_images().astype(dtype), 0)


def test_not_an_array_is_an_input_error(explainer):
    with pytest.raises(InputError, match="numpy array"):
        explainer.explain(good_images().tolist(), 0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_images_are_an_input_error(explainer, value):
    images = good_images()
    images[1, 2, 3, 4] = value
    with pytest.raises(InputError, match="NaN or infinite"):
        explainer.explain(images, 0)


@pytest.mark.parametrize("targets", [K, [0, K], [0, 1000], np.array([K + 3, 0])])
def test_target_out_of_range_is_an_input_error(explainer, targets):
    with pytest.raises(InputError, match=rf"out of range.*{K} classes") as caught:
        explainer.explain(good_images(), targets)
    assert f"0..{K - 1}" in str(caught.value)


@pytest.mark.parametrize(
    "targets, needle",
    [
        ([0, 1, 2], "3 targets for 2 images"),
        (np.zeros((2, 1), np.int64), "one-dimensional"),
        ([0.5, 1], "not an integer"),
        (np.array([0.5, 1.0]), "integers"),
        (np.array([True, False]), "integers or class names"),
    ],
)
def test_malformed_targets_are_input_errors(explainer, targets, needle):
    with pytest.raises(InputError, match=needle):
        explainer.explain(good_images(), targets)


def test_negative_targets_mean_predicted_class(explainer):
    result = explainer.explain(good_images(), [-1, -7])
    np.testing.assert_array_equal(result.explained_class, result.predicted_class)


def test_graph_itself_marks_out_of_range_targets(explainer):
    """The converted graph cannot raise: run directly, a target >= K gives class -1 and zeros."""
    session = explainer.session
    outputs = session.run(None, {"x": good_images(), "target": np.array([K, 1], np.int64)})
    named = dict(zip([o.name for o in session.get_outputs()], outputs))
    assert named["explained_class"].tolist() == [-1, 1]
    assert not named["relevance"][0].any() and named["relevance"][1].any()


def test_bad_batch_size_is_a_usage_error(explainer):
    with pytest.raises(UsageError, match="batch_size"):
        explainer.explain(good_images(), 0, batch_size=0)


# -- known engine bug (see the report) ---------------------------------------------------------------



def test_zero_stabilizer_is_refused_or_finite(model):
    try:
        converted = sglrp_onnx.convert(model, composite="epsilon", stabilizer=0.0)
    except UsageError:
        return
    result = Explainer(converted, providers="cpu", cache=False).explain(np.zeros((1, 3, SIZE, SIZE), np.float32), 0)
    assert np.isfinite(result.relevance).all()
