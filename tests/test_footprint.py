"""Footprint: modified weights are computed in the graph from the model's own initializers.

- every weight recipe (sglrp_onnx.recipes) gives the same tensor as ONNX operators run by ONNX
  Runtime and as numpy, and both match a separately written numpy reference (explicit loops);
- a converted model with BatchNorms, grouped and strided convolutions stores no weight twice
  (file <= 1.3x the original) and gives the same relevance as the materialised form;
- ``tools/bench.py --quick`` runs end to end on a tiny model (nothing about speed is asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sglrp_onnx
from sglrp_onnx import recipes, rules
from sglrp_onnx.emit import builder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import plain_cnn  # noqa: E402


def _run_recipes(weight: np.ndarray, made: dict) -> dict:
    """Emit each recipe over the initializer ``W`` and run the nodes with ONNX Runtime."""
    em = builder.Emitter(set(), shared={"W"})
    names = {key: em.weight(recipe) for key, recipe in made.items()}
    outputs = []
    for key, name in names.items():
        em.nodes.append(helper.make_node("Identity", [name], [f"out_{key}"]))
        outputs.append(helper.make_tensor_value_info(f"out_{key}", TensorProto.FLOAT, None))
    graph = helper.make_graph(em.nodes, "recipes", [], outputs, [numpy_helper.from_array(weight, "W"), *em.initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(None, {})))


def _group_transposed_reference(w: np.ndarray, group: int, flip: bool) -> np.ndarray:
    """out[g*I + i, o] = w[g*O + o, i] (spatially reversed when ``flip``), by loops."""
    out_channels, in_per_group = w.shape[:2]
    per_group = out_channels // group
    result = np.zeros((group * in_per_group, per_group, *w.shape[2:]))
    for g in range(group):
        for o in range(per_group):
            for i in range(in_per_group):
                kernel = w[g * per_group + o, i]
                result[g * in_per_group + i, o] = kernel[::-1, ::-1] if flip else kernel
    return result


@pytest.mark.parametrize("group", [1, 2, 8])
def test_recipes_match_numpy_and_a_loop_reference(group):
    rng = np.random.default_rng(group)
    weight = rng.normal(size=(8, 8 // group, 3, 2)).astype(np.float32)
    w64 = weight.astype(np.float64)
    source = recipes.source("W", weight)
    factor = rng.uniform(0.5, 2, (8, 1, 1, 1))
    made = {
        "pos": recipes.modified(source, rules.positive, 0.0),
        "neg": recipes.modified(source, rules.negative, 0.0),
        "gamma": recipes.modified(source, rules.gamma_positive, 0.25),
        "gamma_neg": recipes.modified(source, rules.gamma_negative, 0.25),
        "square": recipes.modified(source, rules.square, 0.0),
        "ones": recipes.modified(source, rules.ones, 0.0),
        "scaled_twice": recipes.scaled(recipes.scaled(source, factor), np.float64(-3.0)),
        "flipped_t": recipes.group_transposed(recipes.modified(source, rules.positive, 0.0), group),
        "taps_t": recipes.group_transposed(source, group, flip=False),
        "transposed_back": recipes.transposed(recipes.transposed(source, (1, 0, 3, 2)), (1, 0, 3, 2)),
    }
    expected = {
        "pos": np.maximum(w64, 0), "neg": np.minimum(w64, 0), "gamma": w64 + 0.25 * np.maximum(w64, 0),
        "gamma_neg": w64 + 0.25 * np.minimum(w64, 0), "square": w64 ** 2, "ones": np.ones_like(w64),
        "scaled_twice": w64 * factor * -3.0,
        "flipped_t": _group_transposed_reference(np.maximum(w64, 0), group, flip=True),
        "taps_t": _group_transposed_reference(w64, group, flip=False),
        "transposed_back": w64,
    }
    assert made["transposed_back"] is source  # two transposes that cancel emit nothing
    by_onnx = _run_recipes(weight, made)
    for key, recipe in made.items():
        assert recipe.shape == expected[key].shape, key
        np.testing.assert_allclose(recipe.value(), expected[key], rtol=1e-12, err_msg=key)
        np.testing.assert_allclose(by_onnx[key], expected[key], rtol=1e-6, atol=1e-6, err_msg=key)


def _bn_cnn() -> onnx.ModelProto:
    """Conv + BatchNorm, a strided depthwise Conv (polyphase transpose), a strided 1x1 Conv, a
    stride-1 grouped Conv and a Gemm: every weight form of the relevance part (weights large
    enough that the graph's own size does not hide a second copy of them)."""
    rng = np.random.default_rng(5)

    def init(name, *shape, low=-0.5, high=0.5):
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "s1", "t1", "m1", "v1"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=16, name="depthwise"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], strides=[2, 2], name="pointwise"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4"], ["c4"], pads=[1, 1, 1, 1], group=4, name="grouped"),
        helper.make_node("BatchNormalization", ["c4", "s4", "t4", "m4", "v4"], ["n4"], name="bn4"),
        helper.make_node("Relu", ["n4"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [init("w1", 16, 3, 3, 3), init("s1", 16, low=0.5, high=1.5), init("t1", 16), init("m1", 16),
             init("v1", 16, low=0.5, high=2), init("w2", 16, 1, 3, 3), init("b2", 16), init("w3", 128, 16, 1, 1), init("b3", 128),
             init("w4", 128, 32, 3, 3), init("s4", 128, low=0.5, high=1.5), init("t4", 128), init("m4", 128),
             init("v4", 128, low=0.5, high=2), init("wf", 10, 128), init("bf", 10)]
    graph = helper.make_graph(nodes, "bn_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _relevance(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    meta = {p.key: p.value for p in model.metadata_props}
    feeds = {meta["sglrp_onnx.image_input"]: x, meta["sglrp_onnx.target_input"]: np.full(len(x), -1, np.int64)}
    names = [o.name for o in session.get_outputs()]
    return session.run(None, feeds)[names.index(meta["sglrp_onnx.relevance_output"])]


@pytest.mark.parametrize("composite", ["dtd", "epsilon-gamma-box", "epsilon-plus-flat", "epsilon"])
def test_converted_file_stores_no_weight_twice(monkeypatch, composite):
    """The file holds the model's weights once; the relevance equals the materialised form's."""
    source = _bn_cnn()
    original = len(source.SerializeToString())
    options = dict(composite=composite, low=-1.0, high=1.0)
    converted = sglrp_onnx.convert(source, **options)
    assert len(converted.SerializeToString()) <= 1.3 * original
    relevance_ops = {n.op_type for n in converted.graph.node if n.name.startswith(builder.PREFIX)}
    assert "Conv" in relevance_ops
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 12, 12)).astype(np.float32)
    in_graph = _relevance(converted, x)

    init = builder.Emitter.__init__

    def materialising(self, taken, prefix=builder.PREFIX, shared=None, materialise=False):
        init(self, taken, prefix, shared, True)

    monkeypatch.setattr(builder.Emitter, "__init__", materialising)
    stored = sglrp_onnx.convert(source, **options)
    assert len(stored.SerializeToString()) > 1.5 * original  # the modified weights are in the file
    np.testing.assert_allclose(in_graph, _relevance(stored, x), rtol=0, atol=1e-5 * np.abs(in_graph).max())
    assert np.abs(in_graph).max() > 0


def test_tensorrt_form_keeps_weights_as_initializers():
    """SPEC section 8: under target_runtime tensorrt every relevance Conv reads an initializer."""
    converted = sglrp_onnx.convert(_bn_cnn(), composite="dtd", low=-1.0, high=1.0, target_runtime="tensorrt")
    initializers = {t.name for t in converted.graph.initializer}
    convs = [n for n in converted.graph.node if n.name.startswith(builder.PREFIX) and n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(n.input[1] in initializers for n in convs)


def test_bench_quick_runs_on_a_tiny_model(tmp_path):
    source = tmp_path / "tiny.onnx"
    onnx.save(plain_cnn(size=16), str(source))
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--model-file", str(source), "--size", "16",
                           "--no-zennit", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    (row,) = report["models"]
    entry = row["variants"]["dtd-signed"]
    assert entry["size_mb"] > 0 and entry["convert_peak_mb"] > 0 and entry["session_peak_mb"] > 0
    assert set(entry["batches"]) == {"1"} and entry["batches"]["1"]["augmented_s"] > 0
    assert "| tiny | dtd-signed | 1 |" in done.stdout


def test_saved_in_parts_reads_back_as_the_same_model(tmp_path):
    """io.save_model writes large initializers one at a time (io.encoded_parts): the file parses
    back to the same graph, the same tensors and the same metadata."""
    model = sglrp_onnx.convert(_bn_cnn(), composite="dtd", low=-1.0, high=1.0)
    path = sglrp_onnx.save(model, tmp_path / "parts.onnx")
    back = onnx.load(str(path))
    assert [n.SerializeToString() for n in back.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert {t.name: t.SerializeToString() for t in back.graph.initializer} == {t.name: t.SerializeToString() for t in model.graph.initializer}
    assert back.metadata_props == model.metadata_props and back.opset_import == model.opset_import
    assert back.graph.input == model.graph.input and back.graph.output == model.graph.output
    assert len(path.read_bytes()) == model.ByteSize()
