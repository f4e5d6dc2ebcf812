"""The runtime's parts on their own: what a worker process holds (ExplainStep + Preprocessing)
gives the same results as the Explainer, and the parts are picklable where a driver ships them."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest

from sglrp_onnx.errors import InputError, UsageError
from sglrp_onnx.runtime import ExplainStep, Explainer, ModelIO, Preprocessing
from tiny_models import fake_augmented, fake_relevance

K, SIZE = 4, 8


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("parts") / "fake.onnx"
    onnx.save(fake_augmented(num_classes=K, size=SIZE), path)
    return path


def photos(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 13, 17, 3), dtype=np.uint8)


def test_step_and_preprocessing_equal_explain_images(model_path):
    explainer = Explainer(model_path)
    step = ExplainStep.open(model_path, "cpu")
    prep = pickle.loads(pickle.dumps(explainer.preprocessing()))  # as shipped to a worker
    assert prep.size == (SIZE, SIZE) and prep.layout == "NCHW" and prep.dtype == "float32"
    x, pixels = prep(list(photos(3)))
    got = step.explain(x, [1, -1, 3])
    want = explainer.explain_images(list(photos(3)), targets=[1, -1, 3])
    np.testing.assert_array_equal(pixels, want.images)
    np.testing.assert_array_equal(got.explained_class, want.explained_class)
    np.testing.assert_array_equal(got.relevance, want.relevance)
    # independent reference: the stand-in model's relevance is image * (class + 1)
    np.testing.assert_allclose(got.relevance, fake_relevance(x, got.explained_class), rtol=1e-6)


def test_fit_many_reports_unreadable_photos(model_path, tmp_path):
    prep = Explainer(model_path).preprocessing()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = photos(1)[0]
    pixels, kept, errors = prep.fit_many([good, bad, good], skip_unreadable=True)
    assert kept == [0, 2] and pixels.shape == (2, SIZE, SIZE, 3)
    assert len(errors) == 1 and errors[0][0] == 1 and "bad.png" in str(errors[0][1])
    with pytest.raises(InputError, match="not a readable image"):
        prep.fit_many([good, bad])


def test_preprocessing_needs_a_preset_and_4d_input(model_path):
    io = Explainer(model_path).step.io
    with pytest.raises(UsageError, match="preset"):
        Preprocessing.for_model(io, None)
    flat = ModelIO(**{**io.__dict__, "input_shape": ["N", 3 * SIZE * SIZE]})
    with pytest.raises(UsageError, match="4-D"):
        Preprocessing.for_model(flat, "raw")
    dynamic = ModelIO(**{**io.__dict__, "input_shape": ["N", 3, "H", "W"]})
    assert Preprocessing.for_model(dynamic, "imagenet").size == (224, 224)
    assert Preprocessing.for_model(dynamic, "imagenet", size=(32, 48)).size == (32, 48)


def test_step_checks_its_inputs(model_path):
    step = ExplainStep.open(model_path, "cpu", labels=["a", "b", "c", "d"])
    with pytest.raises(InputError, match="dtype float32"):
        step.explain(np.zeros((1, 3, SIZE, SIZE), np.float64))
    with pytest.raises(InputError, match="out of range"):
        step.explain(np.zeros((1, 3, SIZE, SIZE), np.float32), [K])
    assert step.explain(np.zeros((2, 3, SIZE, SIZE), np.float32), "c").explained_class.tolist() == [2, 2]


def test_step_refuses_a_plain_model(tmp_path):
    from sglrp_onnx.errors import ModelLoadError
    from tiny_models import plain_cnn

    with pytest.raises(ModelLoadError, match="not an augmented model"):
        ExplainStep.open(plain_cnn(), "cpu")
