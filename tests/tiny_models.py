"""Small ONNX models built with onnx.helper for the runtime and explain-CLI tests (no torch).

* :func:`plain_cnn`: a real little classifier (Conv, Relu, MaxPool, Conv, Relu, GlobalAveragePool,
  Flatten, Gemm, Softmax) for the engine to convert;
* :func:`fake_augmented`: a model that already has the contract of an augmented model (inputs
  image + target, outputs prob + logits + explained_class + relevance, the metadata keys) with a
  simple made-up relevance, so that the runtime can be tested without the engine.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _init(name: str, array: np.ndarray):
    return numpy_helper.from_array(np.asarray(array), name)


def plain_cnn(num_classes: int = 5, size: int = 16, batch=None, layout: str = "NCHW", seed: int = 0) -> onnx.ModelProto:
    """A small CNN classifier with a softmax output, input ``[N, 3, size, size]`` (or NHWC)."""
    rng = np.random.default_rng(seed)
    n = batch if batch is not None else "N"
    nodes = []
    inits = [
        _init("w1", rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32)),
        _init("b1", rng.normal(0, 0.05, (6,)).astype(np.float32)),
        _init("w2", rng.normal(0, 0.3, (8, 6, 3, 3)).astype(np.float32)),
        _init("b2", rng.normal(0, 0.05, (8,)).astype(np.float32)),
        _init("wf", rng.normal(0, 0.5, (num_classes, 8)).astype(np.float32)),
        _init("bf", rng.normal(0, 0.05, (num_classes,)).astype(np.float32)),
    ]
    source = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2], name="to_nchw"))
        source = "image_nchw"
        shape = [n, size, size, 3]
    else:
        shape = [n, 3, size, size]
    nodes += [
        helper.make_node("Conv", [source, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["scores"], transB=1, name="fc"),
        helper.make_node("Softmax", ["scores"], ["prob"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [n, num_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def fake_augmented(
    num_classes: int = 4,
    size: int = 8,
    batch=None,
    layout: str = "NCHW",
    preset: str | None = "raw",
    seed: int = 1,
    dynamic_classes: bool = False,
    names: dict | None = None,
) -> onnx.ModelProto:
    """A stand-in for a converted model: logits = Gemm(flatten(image)), explained_class resolved
    as the contract says (negative -> argmax, >= K -> -1), relevance = image * (explained_class + 1)
    (0 where explained_class is -1), plus the original output ``prob`` = softmax(logits)."""
    names = {"image": "image", "target": "target", "logits": "logits", "explained": "explained_class", "relevance": "relevance", **(names or {})}
    rng = np.random.default_rng(seed)
    n = batch if batch is not None else "N"
    features = 3 * size * size
    shape = [n, 3, size, size] if layout == "NCHW" else [n, size, size, 3]
    im, tg, lg, ec, rel = (names[k] for k in ("image", "target", "logits", "explained", "relevance"))
    inits = [
        _init("w", rng.normal(0, 1.0, (features, num_classes)).astype(np.float32)),
        _init("b", rng.normal(0, 0.1, (num_classes,)).astype(np.float32)),
        _init("zero_i", np.array(0, np.int64)),
        _init("k_i", np.array(num_classes, np.int64)),
        _init("minus_one", np.array(-1, np.int64)),
        _init("one_i", np.array(1, np.int64)),
        _init("bshape", np.array([-1] + [1] * 3, np.int64)),
    ]
    nodes = [
        helper.make_node("Flatten", [im], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], [lg]),
        helper.make_node("Softmax", [lg], ["prob"], axis=1),
        helper.make_node("ArgMax", [lg], ["amax"], axis=1, keepdims=0),
        helper.make_node("Less", [tg, "zero_i"], ["is_neg"]),
        helper.make_node("Where", ["is_neg", "amax", tg], ["resolved"]),
        helper.make_node("Less", ["resolved", "k_i"], ["valid"]),
        helper.make_node("Where", ["valid", "resolved", "minus_one"], [ec]),
        helper.make_node("Add", [ec, "one_i"], ["ec_plus"]),
        helper.make_node("Cast", ["ec_plus"], ["ec_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["ec_f", "bshape"], ["scale"]),
        helper.make_node("Mul", [im, "scale"], [rel]),
    ]
    k = "K" if dynamic_classes else num_classes
    graph = helper.make_graph(
        nodes,
        "fake_augmented",
        [
            helper.make_tensor_value_info(im, TensorProto.FLOAT, shape),
            helper.make_tensor_value_info(tg, TensorProto.INT64, [n]),
        ],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, [n, k]),
            helper.make_tensor_value_info(lg, TensorProto.FLOAT, [n, k]),
            helper.make_tensor_value_info(ec, TensorProto.INT64, [n]),
            helper.make_tensor_value_info(rel, TensorProto.FLOAT, shape),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    meta = {
        "sglrp_onnx.method": "sglrp",
        "sglrp_onnx.image_input": im,
        "sglrp_onnx.target_input": tg,
        "sglrp_onnx.logits_output": lg,
        "sglrp_onnx.explained_class_output": ec,
        "sglrp_onnx.relevance_output": rel,
        "sglrp_onnx.layout": layout,
    }
    if preset:
        meta["sglrp_onnx.preset"] = preset
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def fake_relevance(images: np.ndarray, explained: np.ndarray) -> np.ndarray:
    """What :func:`fake_augmented` computes as relevance, in numpy."""
    scale = np.where(explained >= 0, explained + 1, 0).astype(np.float32).reshape(-1, 1, 1, 1)
    return images * scale


def write_images(folder, sizes=((40, 30), (20, 50), (64, 64)), seed: int = 3) -> list:
    """Little photos of various sizes and modes (RGB PNG, grey PNG, RGBA PNG, JPEG) in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    modes = ("RGB", "L", "RGBA", "JPEG")
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full_like(xx, 128)], axis=-1)
        noise = rng.integers(0, 40, (h, w, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        mode = modes[i % len(modes)]
        if mode == "JPEG":
            path = folder / f"photo{i}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
        else:
            path = folder / f"photo{i}.png"
            img = Image.fromarray(pixels)
            if mode == "L":
                img = img.convert("L")
            elif mode == "RGBA":
                img = img.convert("RGBA")
            img.save(path)
        paths.append(path)
    return paths
