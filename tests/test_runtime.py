"""sglrp_onnx.runtime.Explainer: provider choice, batching, validation, conversion cache.

Most tests use a stand-in for a converted model (tests/tiny_models.py: fake_augmented), so they
test the runtime alone; the conversion tests need the engine (sglrp_onnx.convert).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sglrp_onnx.errors import InputError, ModelLoadError, UsageError
from sglrp_onnx.runtime import CPU, CUDA, Explainer, Explanation, default_cache_dir, is_augmented, softmax
from tiny_models import fake_augmented, fake_relevance, plain_cnn

K = 4
SIZE = 8


@pytest.fixture(scope="module")
def fake_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "fake.onnx"
    onnx.save(fake_augmented(num_classes=K, size=SIZE), path)
    return path


@pytest.fixture(scope="module")
def explainer(fake_path):
    return Explainer(fake_path, labels=["cat", "dog", "Egyptian cat", "espresso"])


def batch(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


# -- provider choice ------------------------------------------------------------------------------


def test_provider_is_cpu_without_cuda(explainer):
    if CUDA in ort.get_available_providers():  # pragma: no cover - GPU machines
        pytest.skip("onnxruntime-gpu is installed here")
    assert explainer.provider == CPU
    assert explainer.session.get_providers()[0] == CPU
    assert Explainer(explainer.model, "cpu").provider == CPU


def test_cuda_asked_for_without_cuda_is_a_clear_error(fake_path):
    if CUDA in ort.get_available_providers():  # pragma: no cover - GPU machines
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        Explainer(fake_path, "cuda")


def test_reads_names_and_layout_from_metadata(tmp_path):
    names = {"image": "pixels", "target": "target_1", "logits": "logits_1", "explained": "cls", "relevance": "rel"}
    model = fake_augmented(num_classes=K, size=SIZE, layout="NHWC", names=names)
    e = Explainer(model)
    assert (e.image_input, e.target_input, e.logits_output, e.explained_output, e.relevance_output) == (
        "pixels", "target_1", "logits_1", "cls", "rel"
    )
    assert e.layout == "NHWC"
    assert e.input_size == (SIZE, SIZE)
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    result = e.explain(x, [1, -1])
    assert result.relevance.shape == x.shape
    assert result.relevance_map().shape == (2, SIZE, SIZE)
    assert e.original_outputs == ["prob"]
    assert is_augmented(e.model)


# -- results ----------------------------------------------------------------------------------


def test_result_contents(explainer):
    x = batch(3)
    result = explainer.explain(x, [2, -1, 0])
    assert isinstance(result, Explanation) and len(result) == 3
    assert result.logits.shape == (3, K) and result.logits.dtype == np.float32
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(result.probabilities, result.outputs["prob"], rtol=1e-5, atol=1e-7)
    predicted = result.logits.argmax(axis=1)
    assert result.explained_class.tolist() == [2, int(predicted[1]), 0]
    assert result.explained_class.dtype == np.int64
    np.testing.assert_allclose(result.relevance, fake_relevance(x, result.explained_class), rtol=1e-6)
    assert result.targets.tolist() == [2, -1, 0]
    top = result.top_k(2)
    assert len(top) == 3 and len(top[0]) == 2
    assert top[1][0]["class"] == int(predicted[1])
    assert top[0][0]["label"] in ("cat", "dog", "Egyptian cat", "espresso")


def test_batch_equals_single(explainer):
    x = batch(5, seed=7)
    targets = [0, 3, -1, 1, -5]
    together = explainer.explain(x, targets)
    for i in range(5):
        single = explainer.explain(x[i : i + 1], [targets[i]])
        np.testing.assert_array_equal(single.explained_class, together.explained_class[i : i + 1])
        np.testing.assert_allclose(single.relevance, together.relevance[i : i + 1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(single.logits, together.logits[i : i + 1], rtol=1e-5, atol=1e-6)
    in_pieces = explainer.explain(x, targets, batch_size=2)
    np.testing.assert_allclose(in_pieces.relevance, together.relevance, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(in_pieces.explained_class, together.explained_class)


def test_fixed_batch_model_runs_any_batch():
    model = fake_augmented(num_classes=K, size=SIZE, batch=1)
    e = Explainer(model)
    assert e.static_batch == 1
    x = batch(3, seed=2)
    result = e.explain(x, [0, 1, 2])
    assert result.explained_class.tolist() == [0, 1, 2]
    np.testing.assert_allclose(result.relevance, fake_relevance(x, result.explained_class), rtol=1e-6)


def test_io_binding_path_gives_the_same_results(explainer):
    bound = Explainer(explainer.model, io_binding=True)
    x = batch(4, seed=3)
    a = explainer.explain(x, [0, 1, -1, 3])
    b = bound.explain(x, [0, 1, -1, 3])
    np.testing.assert_array_equal(a.explained_class, b.explained_class)
    np.testing.assert_allclose(a.relevance, b.relevance)
    np.testing.assert_allclose(a.logits, b.logits)


def test_targets_forms(explainer):
    x = batch(2, seed=4)
    predicted = explainer.explain(x).explained_class
    np.testing.assert_array_equal(explainer.explain(x, None).explained_class, predicted)
    np.testing.assert_array_equal(explainer.explain(x, -1).explained_class, predicted)
    np.testing.assert_array_equal(explainer.explain(x, -7).explained_class, predicted)
    assert explainer.explain(x, 3).explained_class.tolist() == [3, 3]
    assert explainer.explain(x, np.int64(1)).explained_class.tolist() == [1, 1]
    assert explainer.explain(x, np.array([2, 0])).explained_class.tolist() == [2, 0]
    assert explainer.explain(x, np.array([2.0, 0.0])).explained_class.tolist() == [2, 0]
    assert explainer.explain(x, ["egyptian CAT", "espresso"]).explained_class.tolist() == [2, 3]
    assert explainer.explain(x, "Dog").explained_class.tolist() == [1, 1]
    assert explainer.explain(x, ["2", "predicted"]).explained_class.tolist() == [2, int(predicted[1])]


def test_probabilities_are_stable_for_large_logits():
    z = np.array([[1000.0, 0.0, -1000.0]], np.float32)
    p = softmax(z)
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0)


# -- validation errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, message",
    [
        ([[0.0]], "numpy array"),
        (np.zeros((1, 3, SIZE, SIZE), np.float64), r"dtype float32.*astype"),
        (np.zeros((1, 3, SIZE, SIZE), np.uint8), r"uint8 pixels need preprocessing"),
        (np.zeros((3, SIZE, SIZE), np.float32), r"4 dimensions.*images\[None\]"),
        (np.zeros((1, 1, 3, SIZE, SIZE), np.float32), "4 dimensions"),
        (np.zeros((1, 3, SIZE + 1, SIZE), np.float32), r"axis 2 must be 8"),
        (np.zeros((1, SIZE, SIZE, 3), np.float32), r"axis 1 must be 3.*layout is NCHW"),
        (np.zeros((0, 3, SIZE, SIZE), np.float32), "empty"),
        (np.full((1, 3, SIZE, SIZE), np.nan, np.float32), "NaN"),
        (np.full((1, 3, SIZE, SIZE), np.inf, np.float32), "infinite"),
    ],
)
def test_bad_images(explainer, images, message):
    with pytest.raises(InputError, match=message):
        explainer.explain(images)


@pytest.mark.parametrize(
    "targets, message",
    [
        ([K, 0], rf"target {K} is out of range.*{K} classes \(0\.\.{K - 1}\)"),
        (K + 10, "out of range"),
        ([0, 1, 2], "3 targets for 2 images"),
        ([0], "1 targets for 2 images"),
        (np.array([[0, 1]]), "one-dimensional"),
        (np.array([0.5, 1.0]), "integers"),
        ([0.5, 1], "not an integer"),
        ("espreso", r"unknown class name 'espreso'; close matches: 'espresso' \(3\)"),
        ("cat ", None),  # a valid name (surrounding blanks ignored): no error
        ("kitten", "unknown class name"),
        ([True, False], "invalid target"),
        (np.array(["x", "y"], dtype=object), "unknown class name"),
    ],
)
def test_bad_targets(explainer, targets, message):
    x = batch(2)
    if message is None:
        explainer.explain(x, targets)
        return
    with pytest.raises(InputError, match=message):
        explainer.explain(x, targets)


def test_out_of_range_target_when_classes_are_dynamic():
    e = Explainer(fake_augmented(num_classes=K, size=SIZE, dynamic_classes=True))
    e.num_classes = None  # as for a model whose class count ONNX Runtime cannot infer
    with pytest.raises(InputError, match=f"target {K} is out of range"):
        e.explain(batch(1), [K])


def test_name_target_without_labels():
    e = Explainer(fake_augmented(num_classes=K, size=SIZE))
    assert e.labels is None
    with pytest.raises(InputError, match="labels"):
        e.explain(batch(1), ["cat"])
    assert e.label(2) == "class 2"


def test_wrong_label_count(fake_path):
    with pytest.raises(UsageError, match="3 labels given but the model has 4 classes"):
        Explainer(fake_path, labels=["a", "b", "c"])


def test_bad_batch_size(explainer):
    with pytest.raises(UsageError, match="batch_size"):
        explainer.explain(batch(2), batch_size=0)


def test_missing_and_broken_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        Explainer(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf at all \xff\xfe")
    with pytest.raises(ModelLoadError):
        Explainer(broken)
    with pytest.raises(UsageError):
        Explainer(12345)


def test_metadata_naming_a_missing_output_is_reported():
    model = fake_augmented(num_classes=K, size=SIZE)
    for prop in model.metadata_props:
        if prop.key == "sglrp_onnx.relevance_output":
            prop.value = "nope"
    with pytest.raises(ModelLoadError, match="'nope'"):
        Explainer(model)


# -- photos ----------------------------------------------------------------------------------------


def test_explain_images_uses_the_recorded_preset(explainer):
    from PIL import Image

    assert explainer.preset is not None and explainer.preset.name == "raw"
    photo = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    result = explainer.explain_images([photo, Image.fromarray(photo)], targets=[1, 1])
    assert result.images.shape == (2, SIZE, SIZE, 3)
    expected = explainer.preset.normalize(result.images, "NCHW")
    np.testing.assert_allclose(result.relevance, fake_relevance(expected, result.explained_class), rtol=1e-6)
    np.testing.assert_array_equal(result.relevance[0], result.relevance[1])


def test_explain_images_without_preset():
    e = Explainer(fake_augmented(num_classes=K, size=SIZE, preset=None))
    assert e.preset is None
    photo = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(UsageError, match="preset"):
        e.explain_images([photo])
    e2 = Explainer(fake_augmented(num_classes=K, size=SIZE, preset=None), preset="imagenet")
    assert not e2.converted  # preset alone does not convert an augmented model again
    assert e2.explain_images([photo]).relevance.shape == (1, 3, SIZE, SIZE)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UsageError, match="imagenet, caffe, tf, efficientnet-lite, raw"):
        Explainer(fake_augmented(num_classes=K, size=SIZE, preset=None), preset="torch")


def test_unreadable_photo(explainer, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="not a readable image"):
        explainer.explain_images([bad])
    with pytest.raises(InputError, match="no such image file"):
        explainer.explain_images([tmp_path / "missing.jpg"])


# -- converting on the fly (needs the engine) ----------------------------------------------------


def _engine():
    import sglrp_onnx

    if not callable(getattr(sglrp_onnx, "convert", None)):
        pytest.skip("the engine (sglrp_onnx.convert) is not available")
    return sglrp_onnx


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SGLRP_ONNX_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SGLRP_ONNX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "sglrp-onnx"


def test_plain_model_is_converted_and_cached(tmp_path, monkeypatch):
    _engine()
    monkeypatch.setenv("SGLRP_ONNX_CACHE", str(tmp_path / "cache"))
    plain = tmp_path / "plain.onnx"
    onnx.save(plain_cnn(num_classes=5, size=16), plain)
    first = Explainer(plain, preset="imagenet")
    assert first.converted and first.cache_path is not None and first.cache_path.is_file()
    assert first.cache_path.parent == tmp_path / "cache"
    assert first.method == "sglrp"
    stamp = first.cache_path.stat().st_mtime_ns
    second = Explainer(plain, preset="imagenet")
    assert second.cache_path == first.cache_path and first.cache_path.stat().st_mtime_ns == stamp
    other = Explainer(plain, preset="imagenet", method="lrp")
    assert other.cache_path != first.cache_path and other.method == "lrp"
    uncached = Explainer(plain, preset="imagenet", cache=False)
    assert uncached.cache_path is None

    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    a = first.explain(x, [0, -1, 4])
    b = second.explain(x, [0, -1, 4])
    np.testing.assert_allclose(a.relevance, b.relevance)
    assert a.relevance.shape == x.shape and np.isfinite(a.relevance).all()
    # the original output is untouched: the plain model's softmax output
    plain_out = ort.InferenceSession(plain.read_bytes(), providers=[CPU]).run(None, {"image": x})[0]
    np.testing.assert_allclose(a.outputs["prob"], plain_out, rtol=1e-6, atol=1e-7)
    for i in range(3):  # batch equals single on a real converted model
        single = first.explain(x[i : i + 1], [[0, -1, 4][i]])
        np.testing.assert_allclose(single.relevance, a.relevance[i : i + 1], rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="target 5 is out of range"):
        first.explain(x, 5)


def test_augmented_model_converted_again_with_options(tmp_path, monkeypatch):
    sglrp_onnx = _engine()
    monkeypatch.setenv("SGLRP_ONNX_CACHE", str(tmp_path / "cache"))
    augmented = sglrp_onnx.convert(plain_cnn(num_classes=5, size=16), preset="imagenet")
    as_is = Explainer(augmented)
    assert not as_is.converted and as_is.method == "sglrp"
    assert not Explainer(augmented, preset="imagenet").converted
    other = Explainer(augmented, preset="caffe")  # other bounds: converted again
    assert other.converted and other.preset.name == "caffe"
    assert other.metadata["sglrp_onnx.preset"] == "caffe"
    again = Explainer(augmented, method="lrp")
    assert again.converted and again.method == "lrp"
