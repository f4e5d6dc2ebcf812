"""Engine-level checks on a small torchvision ViT that need no oracle of their own.

The numerical oracles for transformers are LXT (tests/test_lxt_vit.py) and the float64 reference
(tests/test_reference_transformer.py). This file checks what follows from the rules themselves:

- three exports of the same weights (TorchScript with the LayerNormalization op, TorchScript at
  opset 14 where LayerNorm is decomposed into ReduceMean/Sub/Pow/..., and the dynamo exporter with
  its own attention decomposition) are different graphs that must give the same relevance, for
  CP-LRP and AttnLRP alike;
- the ``scaled`` contrast on a graph whose attention moves the batch axis (its halves are
  propagated one after the other) equals ``A_t - A_d sum(A_t)/sum(A_d)`` built from two other
  conversions: ``A_t`` is the lrp relevance, and by linearity ``A_d = A_t - R_signed``;
- rule overrides by op type skip the products they do not fit, inline JSON ``--rules`` and
  ``--attention`` reach the metadata.
"""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime")

import sglrp_onnx  # noqa: E402
from sglrp_onnx import metadata  # noqa: E402
from sglrp_onnx.errors import RuleError  # noqa: E402

pytestmark = pytest.mark.torch

EXPORTS = ("torchscript17", "torchscript14", "dynamo")


def _tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10).eval()
    with torch.no_grad():  # torchvision zero-initialises the head: every logit would be 0
        model.heads.head.weight.normal_(0, 0.2)
        model.heads.head.bias.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    model = _tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    files = {}
    for name in EXPORTS:
        path = folder / f"{name}.onnx"
        if name == "dynamo":
            torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["scores"])
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=int(name[-2:]), input_names=["image"],
                              output_names=["scores"], dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}})
        files[name] = path
    return files


def _image():
    return np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _run(model: onnx.ModelProto, targets) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": _image(), "target": np.array(targets, np.int64)})))


def _relative_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_layer_norm_op_and_decomposition_are_recognised(vit_files):
    ops = {name: {n.op_type for n in onnx.load(str(path)).graph.node} for name, path in vit_files.items()}
    assert "LayerNormalization" in ops["torchscript17"] and "LayerNormalization" not in ops["torchscript14"]
    assert {"ReduceMean", "Pow", "Sqrt"} <= ops["torchscript14"]


@pytest.mark.parametrize("attention", ["cp", "attnlrp"])
@pytest.mark.parametrize("method", ["lrp", "sglrp"])
def test_exports_of_one_vit_agree(vit_files, method, attention):
    results = {}
    for name, path in vit_files.items():
        converted = sglrp_onnx.convert(path, method=method, composite="epsilon", rules={"Add": "epsilon"}, attention=attention)
        assert metadata.read(converted)[metadata.KEY_PREFIX + "attention"] == attention
        for target in (-1, 4):
            out = _run(converted, [target])
            assert np.isfinite(out["relevance"]).all() and np.abs(out["relevance"]).max() > 0
            results[name, target] = out["relevance"]
    for target in (-1, 4):
        reference = results["torchscript17", target]
        for name in ("torchscript14", "dynamo"):
            assert _relative_l2(results[name, target], reference) < 1e-4, (name, target)


def test_cp_and_attnlrp_differ(vit_files):
    """The option changes the rule: the relevance must not stay the same."""
    path = vit_files["torchscript17"]
    cp = _run(sglrp_onnx.convert(path, method="lrp", composite="epsilon"), [-1])["relevance"]
    attn = _run(sglrp_onnx.convert(path, method="lrp", composite="epsilon", attention="attnlrp"), [-1])["relevance"]
    assert _relative_l2(attn, cp) > 1e-3


@pytest.mark.parametrize("export", ["torchscript17", "dynamo"])
def test_scaled_contrast_with_moved_batch_axis(vit_files, export):
    path = vit_files[export]
    options = dict(composite="epsilon", rules={"Add": "epsilon"})
    target = [7]
    scaled = _run(sglrp_onnx.convert(path, method="clrp", contrast="scaled", **options), target)["relevance"]
    a_t = _run(sglrp_onnx.convert(path, method="lrp", **options), target)["relevance"]
    signed = _run(sglrp_onnx.convert(path, method="clrp", contrast="signed", **options), target)["relevance"]
    a_d = a_t - signed
    expected = a_t - a_d * (a_t.sum() / a_d.sum())
    assert _relative_l2(scaled, expected) < 1e-4


def test_op_type_override_skips_products_it_does_not_fit(vit_files):
    from sglrp_onnx.convert import canonical_graph

    path = vit_files["torchscript17"]
    graph = canonical_graph(onnx.load(str(path)))
    dense_from_matmul = {n.name for n in graph.nodes if n.op_type == "Dense" and n.source_op == "MatMul"}
    products = {n.name for n in graph.nodes if n.op_type == "MatMul"}
    assert dense_from_matmul and len(products) == 4  # q k^T and A V in each of the 2 blocks
    converted = sglrp_onnx.convert(path, method="lrp", composite="epsilon", rules={"MatMul": "gamma"})
    layer_rules = json.loads(metadata.read(converted)[metadata.KEY_PREFIX + "layer_rules"])
    assert {name for name, rule in layer_rules.items() if rule["rule"] == "gamma"} == dense_from_matmul
    with pytest.raises(RuleError, match="does not apply"):
        sglrp_onnx.convert(path, rules={sorted(products)[0]: "gamma"}, preset="imagenet")


def test_cli_inline_json_rules_and_attention(vit_files, tmp_path):
    out = tmp_path / "vit.sglrp.onnx"
    command = [sys.executable, "-m", "sglrp_onnx", "convert", str(vit_files["torchscript17"]), "-o", str(out),
               "--composite", "epsilon", "--rules", '{"Add": "epsilon"}', "--attention", "attnlrp"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    meta = metadata.read(onnx.load(str(out)))
    assert meta[metadata.KEY_PREFIX + "attention"] == "attnlrp"
    assert json.loads(meta[metadata.KEY_PREFIX + "rules"]) == {"Add": "epsilon"}
    bad_command = command[:-4] + ["--rules", '{"Add": ']
    bad_command[bad_command.index(str(out))] = str(tmp_path / "bad.onnx")
    bad = subprocess.run(bad_command, capture_output=True, text=True)
    assert bad.returncode != 0 and "inline JSON" in bad.stderr and not (tmp_path / "bad.onnx").exists()


def test_transformer_composite_is_the_recommended_recipe(vit_files):
    """``--composite transformer`` = epsilon, gamma 0.05 on dense layers, sums under epsilon (README)."""
    path = vit_files["torchscript17"]
    gamma = {"rule": "gamma", "gamma": 0.05}
    recipe = sglrp_onnx.convert(path, method="sglrp", composite="epsilon", rules={"Add": "epsilon", "Gemm": gamma, "MatMul": gamma})
    named = sglrp_onnx.convert(path, method="sglrp", composite="transformer")
    assert metadata.read(named)[metadata.KEY_PREFIX + "gamma"] == "0.05"
    for target in (-1, 2):
        expected = _run(recipe, [target])["relevance"]
        np.testing.assert_allclose(_run(named, [target])["relevance"], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    plain = _run(sglrp_onnx.convert(path, method="sglrp", composite="epsilon"), [2])["relevance"]
    assert _relative_l2(plain, expected) > 1e-3  # the composite's rules do change the map
