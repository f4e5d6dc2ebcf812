"""Cross-check of the engine against LXT 2.1 on a torchvision Vision Transformer (SPEC section 7).

LXT is to transformers what Zennit is to CNNs here: an independent implementation of the rules
(CP-LRP inside the attention, LayerNorm with sigma held constant, identity rule on GELU, Zennit's
Epsilon on Conv2d and Linear; tests/lxt_vit.py explains how it is driven).  A tiny seeded ViT is
exported with both torch exporters, converted with the ``epsilon`` composite and the override
``Add: epsilon`` (the position embedding absorbs its share, as in gradient x input), run on ONNX
Runtime (CPU, float32), and compared per image with LXT run in float64.

Agreement, per image, as relative L2 error ||ours - lxt|| / ||lxt||:
- at the default parameters (epsilon = stabilizer = 1e-6): <= 1e-2, the target of issue 7 (measured:
  <= 2.6e-3).  The difference is the 1e-6 stabiliser that the engine puts where LXT has none
  (LayerNorm, A V, the adds, the attention's projections): on this random-weight ViT some of those
  denominators are small enough for 1e-6 to matter at the 1e-3 level;
- with epsilon = stabilizer = 1e-12 on both sides: <= 1e-4 (measured: <= 1.6e-5, float32 rounding),
  which shows that the rules themselves are the same.

The same again with gamma (0.25) instead of epsilon on the layers with weights (LXT's ViT recipe:
Zennit ``Gamma`` on Conv2d and Linear; in the engine, op-type overrides on Conv/Gemm/MatMul), where
the attention's projections keep epsilon, as their Zennit hooks never fire in LXT (measured: <= 3.6e-3
at the defaults, <= 1.5e-6 with tiny stabilisers).

Needs torch, torchvision, zennit, onnxscript and lxt (installed by ``make test``; the module is
skipped where they are missing).
"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("zennit")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it
pytest.importorskip("lxt.efficient")

import onnxruntime as ort  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lxt_vit  # noqa: E402
import zennit_models as zm  # noqa: E402

import sglrp_onnx  # noqa: E402

pytestmark = pytest.mark.torch

EXPORTERS = ["torchscript", "dynamo"]
METHODS = ["lrp", "sglrp"]
# (epsilon and stabilizer given to both sides, tolerance of the relative L2 error per image)
PARAMETERS = {"default": (1e-6, 1e-2), "tiny-stabilisers": (1e-12, 1e-4)}
GAMMA = 0.25
DENSE_RULES = ["epsilon", "gamma"]  # the rule on the patch embedding, the MLPs and the head
OUTPUT_TOL = 1e-4  # original outputs: max |onnx - torch| <= OUTPUT_TOL * max |torch|
N_IMAGES = 3  # each image is explained for its predicted class and for two other classes
RULES = {"Add": "epsilon"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def vit():
    return lxt_vit.build_vit()


@pytest.fixture(scope="module")
def batch(vit):
    """(x [3N, 3, H, W], onnx targets, resolved targets, torch logits).

    Rows 0..N-1 explain the prediction (onnx target -1, resolved in the graph), rows N..2N-1 the
    second-ranked class and rows 2N..3N-1 the last-ranked class of the same images."""
    x = lxt_vit.make_input(N_IMAGES)
    with torch.no_grad():
        ranked = torch.argsort(vit(x), dim=1, descending=True)
    x = torch.cat([x, x, x])
    with torch.no_grad():
        logits = vit(x)
    resolved = torch.cat([ranked[:, 0], ranked[:, 1], ranked[:, -1]])
    onnx_targets = np.concatenate([np.full(N_IMAGES, -1), resolved[N_IMAGES:].numpy()]).astype(np.int64)
    return x, onnx_targets, resolved, logits


@pytest.fixture(scope="module")
def exports(vit, batch):
    x = batch[0][:N_IMAGES]
    return {exporter: zm.export_onnx(vit, x, dynamo=exporter == "dynamo") for exporter in EXPORTERS}


@pytest.fixture(scope="module")
def lxt_results(vit, batch):
    """LXT's relevance (float64) for every dense rule, parameter set and method, computed once for
    both exporters."""
    x, _, resolved, logits = batch
    results = {}
    for dense in DENSE_RULES:
        for parameters, (epsilon, _) in PARAMETERS.items():
            for method in METHODS:
                initial = lxt_vit.initial_relevance(logits.double(), resolved, method)
                gamma = GAMMA if dense == "gamma" else None
                relevance, lxt_logits = lxt_vit.lxt_relevance(vit, x, initial, epsilon=epsilon, gamma=gamma)
                assert (lxt_logits - logits.double()).abs().max() <= 1e-5 * logits.abs().max()
                results[(dense, parameters, method)] = relevance.numpy()
    return results


def engine_rules(model, dense: str) -> dict:
    """The overrides that make the ``epsilon`` composite compute LXT's rules (see the docstring)."""
    if dense == "epsilon":
        return dict(RULES)
    rules = {**RULES, "Conv": "gamma", "Gemm": "gamma", "MatMul": "gamma"}
    rules.update({name: "epsilon" for name in lxt_vit.attention_projections(model)})
    return rules


def run_converted(model, x: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    meta = {p.key: p.value for p in model.metadata_props}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {meta["sglrp_onnx.image_input"]: x.astype(np.float32), meta["sglrp_onnx.target_input"]: targets}
    out = dict(zip(names, session.run(None, feeds)))
    out["__relevance__"] = out[meta["sglrp_onnx.relevance_output"]]
    out["__explained__"] = out[meta["sglrp_onnx.explained_class_output"]]
    return out


def relative_l2(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per image: ||ours - ref|| / ||ref||."""
    diff = (ours.astype(np.float64) - ref).reshape(ref.shape[0], -1)
    return np.linalg.norm(diff, axis=1) / np.linalg.norm(ref.reshape(ref.shape[0], -1), axis=1)


# ----------------------------------------------------------------------------------------------------
# The oracle itself.
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_lxt_oracle_conserves_without_biases(method):
    """With every bias, LayerNorm shift, class token and position embedding zero, the rules LXT
    implements conserve relevance exactly: sum over the input = sum of the initial relevance (lrp: z_t;
    sglrp: 0), up to the epsilon.  Were a patch not active (LayerNorm's sigma or the attention's
    softmax differentiated), gradient x input would not conserve and this would fail."""
    model = lxt_vit.build_vit()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or name.endswith("class_token") or name.endswith("pos_embedding"):
                parameter.zero_()
        x = lxt_vit.make_input(N_IMAGES)
        logits = model(x).double()
    targets = logits.argmax(1)
    initial = lxt_vit.initial_relevance(logits, targets, method)
    relevance, _ = lxt_vit.lxt_relevance(model, x, initial, epsilon=1e-12)
    total = relevance.sum((1, 2, 3))
    mass = relevance.abs().sum((1, 2, 3))
    assert torch.all(mass > 0)
    # measured: equal to 1e-15 of the mass
    assert torch.all((total - initial.sum(1)).abs() <= 1e-9 * mass), (total, initial.sum(1), mass)


def test_lxt_patches_are_undone(vit, batch):
    """LXT's patches live only inside lxt_patches(): afterwards torch and Zennit are as before (the
    Zennit cross-check and exports in the same process rely on it), and the plain gradient x input of
    the ViT differs from LXT's relevance (so the patches did act)."""
    import zennit.core

    before = {(cls, name): cls.__dict__.get(name) for cls, name in lxt_vit._patched_classes()}
    x, _, resolved, logits = batch
    initial = lxt_vit.initial_relevance(logits.double(), resolved, "lrp")
    lxt, _ = lxt_vit.lxt_relevance(vit, x, initial)
    after = {(cls, name): cls.__dict__.get(name) for cls, name in lxt_vit._patched_classes()}
    assert before == after
    assert "original_forward" not in torch.nn.LayerNorm.__dict__
    assert zennit.core.BasicHook.backward.__module__ == "zennit.core"

    twin = copy.deepcopy(vit).double()
    xd = x.double().requires_grad_(True)
    twin(xd).backward(initial / logits.double())
    plain = (xd * xd.grad).detach()
    assert relative_l2(plain.numpy(), lxt.numpy()).min() > 0.05


# ----------------------------------------------------------------------------------------------------
# The engine against the oracle.
# ----------------------------------------------------------------------------------------------------


def test_attention_projections_found(exports):
    """Two layers, each with an input and an output projection, in both exports."""
    for exporter, model in exports.items():
        assert len(lxt_vit.attention_projections(model)) == 4, exporter


@pytest.mark.parametrize("parameters", PARAMETERS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dense", DENSE_RULES)
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_vit_matches_lxt(exports, batch, lxt_results, exporter, dense, method, parameters):
    x, onnx_targets, resolved, logits = batch
    epsilon, tolerance = PARAMETERS[parameters]
    original = exports[exporter]
    original_output = original.graph.output[0].name
    converted = sglrp_onnx.convert(
        original, method=method, composite="epsilon", rules=engine_rules(original, dense),
        epsilon=epsilon, stabilizer=epsilon, gamma=GAMMA,
    )
    out = run_converted(converted, x.numpy(), onnx_targets)

    # the original forward is untouched and the targets resolve as torch predicts
    ref_logits = logits.numpy()
    assert np.abs(out[original_output] - ref_logits).max() <= OUTPUT_TOL * np.abs(ref_logits).max()
    np.testing.assert_array_equal(out["__explained__"], resolved.numpy())

    ours, ref = out["__relevance__"], lxt_results[(dense, parameters, method)]
    assert ours.shape == ref.shape and np.all(np.isfinite(ours))
    assert np.all(np.abs(ref).reshape(ref.shape[0], -1).max(1) > 0)
    errors = relative_l2(ours, ref)
    assert np.all(errors <= tolerance), f"{exporter}/{dense}/{method}/{parameters}: relative L2 per image {errors}"
