"""Presets (bounds, preprocessing), labels (files, target names) and heatmaps (colours, PNGs)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from sglrp_onnx import heatmap as hm
from sglrp_onnx.errors import InputError, OutputError, UsageError
from sglrp_onnx.labels import imagenet_labels, label_of, labels_for, load_labels, resolve_target
from sglrp_onnx.presets import PRESETS, fit_image, get_preset

# -- presets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("imagenet", [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225]),
        ("caffe", [-103.939, -116.779, -123.68], [255 - 103.939, 255 - 116.779, 255 - 123.68]),
        ("tf", [-1, -1, -1], [1, 1, 1]),
        ("efficientnet-lite", [-127 / 128] * 3, [1, 1, 1]),
        ("raw", [0, 0, 0], [1, 1, 1]),
    ],
)
def test_preset_bounds(name, low, high):
    preset = get_preset(name)
    assert preset.name == name
    np.testing.assert_allclose(preset.low, low, rtol=1e-9)
    np.testing.assert_allclose(preset.high, high, rtol=1e-9)
    # the bounds are the values a black and a white pixel get
    black = preset.normalize(np.zeros((1, 1, 1, 3), np.uint8))[:, :, 0, 0][0]
    white = preset.normalize(np.full((1, 1, 1, 3), 255, np.uint8))[:, :, 0, 0][0]
    np.testing.assert_allclose(black, low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(white, high, rtol=1e-5, atol=1e-5)


def test_preset_lookup():
    assert get_preset("EfficientNet_Lite").name == "efficientnet-lite"
    assert get_preset(PRESETS["tf"]) is PRESETS["tf"]
    with pytest.raises(UsageError, match="unknown preset 'torch'; valid presets: imagenet, caffe, tf, efficientnet-lite, raw"):
        get_preset("torch")


def test_caffe_is_bgr_and_layouts():
    pixels = np.zeros((1, 2, 2, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    nchw = get_preset("caffe").preprocess(pixels[0], size=2)
    assert nchw.shape == (1, 3, 2, 2) and nchw.dtype == np.float32
    np.testing.assert_allclose(nchw[0, :, 0, 0], [-103.939, -116.779, 255 - 123.68], rtol=1e-5)
    nhwc = get_preset("caffe").preprocess(pixels[0], size=2, layout="nhwc")
    assert nhwc.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(nhwc.transpose(0, 3, 1, 2), nchw)
    with pytest.raises(UsageError, match="layout"):
        get_preset("raw").preprocess(pixels[0], size=2, layout="CHW")


def test_fit_modes(tmp_path):
    photo = np.zeros((40, 80, 3), np.uint8)
    photo[:, :20] = 255  # white left quarter
    assert fit_image(photo, 20).shape == (20, 20, 3)
    cropped = fit_image(photo, 20)
    assert cropped[:, 1:].max() == 0  # centre crop cuts the white quarter away
    stretched = fit_image(photo, (10, 30), "stretch")
    assert stretched.shape == (10, 30, 3) and stretched[:, 0].min() == 255
    padded = fit_image(photo, 40, "pad")
    assert padded.shape == (40, 40, 3) and padded[0].max() == 0 and padded[20, 0].min() == 255
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((5, 7), 100, np.uint8)).save(path)
    assert fit_image(path, 4)[0, 0].tolist() == [100, 100, 100]
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent -> white background
    assert fit_image(rgba, 4)[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(InputError, match="uint8"):
        fit_image(np.zeros((4, 4, 3), np.float32), 4)
    with pytest.raises(UsageError, match="fit"):
        fit_image(photo, 4, "zoom")
    batch = get_preset("imagenet").preprocess([photo, path], size=(8, 6))
    assert batch.shape == (2, 3, 8, 6)


# -- labels --------------------------------------------------------------------------------------


def test_imagenet_labels():
    names = imagenet_labels()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[285] == "Egyptian cat" and names[967] == "espresso" and names[0] == "tench"
    assert labels_for(1000) == names and labels_for(10) is None


def test_label_files(tmp_path):
    text = tmp_path / "l.txt"
    text.write_text("apple\nbanana split\ncherry\n\n")
    assert load_labels(text) == ["apple", "banana split", "cherry"]
    listed = tmp_path / "l.json"
    listed.write_text(json.dumps(["a", "b"]))
    assert load_labels(listed) == ["a", "b"]
    keras = tmp_path / "keras.json"
    keras.write_text(json.dumps({"1": ["n2", "goldfish"], "0": ["n1", "tench"]}))
    assert load_labels(keras) == ["tench", "goldfish"]
    gaps = tmp_path / "gaps.json"
    gaps.write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(UsageError, match="without gaps"):
        load_labels(gaps)
    with pytest.raises(UsageError, match="cannot read labels file"):
        load_labels(tmp_path / "missing.txt")
    with pytest.raises(UsageError, match="has 3 names but the model has 4 classes"):
        labels_for(4, text)
    assert label_of(1, ["a", "b"]) == "b" and label_of(5, ["a"]) == "class 5" and label_of(2, None) == "class 2"


def test_resolve_target():
    names = imagenet_labels()
    assert resolve_target(285, names, 1000) == 285
    assert resolve_target("285", names, 1000) == 285
    assert resolve_target("egyptian CAT", names, 1000) == 285
    assert resolve_target("Egyptian_cat", names, 1000) == 285
    assert resolve_target("-1", names, 1000) == -1
    assert resolve_target(-3, names, 1000) == -1
    assert resolve_target("predicted", names, 1000) == -1
    with pytest.raises(InputError, match=r"target 1000 is out of range.*0\.\.999"):
        resolve_target(1000, names, 1000)
    with pytest.raises(InputError, match=r"unknown class name 'expresso'; close matches: 'espresso' \(967\)"):
        resolve_target("expresso", names, 1000)
    with pytest.raises(InputError, match=r"close matches: 'tiger cat' \(282\), 'Persian cat' \(283\)"):
        resolve_target("cat", names, 1000)  # names containing 'cat' are listed
    with pytest.raises(InputError, match="ambiguous.*0 \\(x\\), 1 \\(X\\)"):
        resolve_target("x", ["x", "X", "y"], 3)
    with pytest.raises(InputError, match="labels"):
        resolve_target("cat", None, 10)


# -- heatmaps ------------------------------------------------------------------------------------


def test_colormap_is_symmetric_and_white_at_zero():
    ramp = np.linspace(-1, 1, 101)[None]
    colours = hm.colorize(ramp, vmax=1.0)[0].astype(int)
    assert colours[50].tolist() == [255, 255, 255]
    # positive is red-ish, negative blue-ish, with mirrored strength
    assert colours[100, 0] > colours[100, 2] and colours[0, 2] > colours[0, 0]
    assert hm.colorize(np.zeros((3, 3)))[0, 0].tolist() == [255, 255, 255]  # all-zero map: white
    assert hm.colorize(np.array([[np.nan, 1.0]]))[0, 0].tolist() == [255, 255, 255]
    # scaled by max |R|: the map and the map times 10 give the same picture
    r = np.random.default_rng(0).normal(size=(5, 5))
    np.testing.assert_array_equal(hm.colorize(r), hm.colorize(10 * r))


def test_relevance_to_map_layouts():
    r = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(hm.relevance_to_map(r, "NCHW"), r.sum(0), rtol=1e-6)
    np.testing.assert_allclose(hm.relevance_to_map(r.transpose(1, 2, 0), "NHWC"), r.sum(0), rtol=1e-6)
    np.testing.assert_allclose(hm.relevance_to_map(r[None], "NCHW"), r.sum(0), rtol=1e-6)
    with pytest.raises(InputError):
        hm.relevance_to_map(np.zeros((2, 3, 4, 5)))


def test_overlay_and_png_roundtrip(tmp_path):
    photo = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    relevance = np.zeros((3, 12, 10), np.float32)
    relevance[:, 2, 3] = 1.0
    relevance[:, 8, 7] = -0.5
    picture = hm.overlay(photo, relevance)
    assert picture.shape == photo.shape and picture.dtype == np.uint8
    path = hm.save_png(picture, tmp_path / "sub" / "o.png")
    with Image.open(path) as img:
        assert img.size == (10, 12) and img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), picture)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["o.png"]  # no temporary left behind
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    hm.write_heatmap(tmp_path / "h.png", relevance)
    with Image.open(tmp_path / "h.png") as img:
        pixels = np.asarray(img)
    assert tuple(pixels[2, 3]) != (255, 255, 255) and pixels[2, 3, 0] > pixels[2, 3, 2]  # red
    assert pixels[8, 7, 2] > pixels[8, 7, 0]  # blue
    assert pixels[0, 0].tolist() == [255, 255, 255]
    grid = hm.panel([[photo, picture], [picture]], ["a", "b"], "header")
    assert grid.ndim == 3 and grid.shape[1] >= 20


def test_save_png_failure_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        hm.save_png(np.zeros((2, 2, 3), np.uint8), blocker / "x.png")
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(OutputError):
            hm.save_png(np.zeros((2, 2, 3), np.uint8), ro / "x.png")
