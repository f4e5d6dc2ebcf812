"""sglrp_onnx.metrics on synthetic maps whose answers are known by construction (no torch).

- localisation: relevance all on the object gives mass 1, rank accuracy 1 and a pointing hit; all
  off it gives 0; negative relevance is ignored; hand-counted rank accuracies; discrimination;
- perturbation: the patch grid tiles the image (Quantus's centred grid); for a linear model
  (logit = sum of w * x, fill 0) the true contribution map w * x gives the best possible deletion
  and insertion curves, pointwise, and the exact curve computed here in numpy; AOPC and area by
  hand; fills; the patch at the maximum;
- the exact gradient x input baseline equals w * x on that linear model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sglrp_onnx.errors import InputError, UsageError
from sglrp_onnx.metrics import localisation, perturbation
from sglrp_onnx.metrics.maps import channel_sum, random_maps
from sglrp_onnx.metrics.runner import Case, Settings, evaluate, explainer_source, random_source, summarise


def _box(shape=(20, 30), rows=slice(5, 12), cols=slice(8, 20)):
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


# -- localisation ----------------------------------------------------------------------------


def test_all_relevance_on_the_object():
    mask = _box()
    rmap = np.where(mask, np.random.default_rng(0).random(mask.shape) + 0.1, 0.0)
    rmap[~mask] = -5.0  # evidence against the class is not counted
    assert localisation.relevance_mass(rmap, mask) == 1.0
    assert localisation.rank_accuracy(rmap, mask) == 1.0
    assert localisation.pointing_hit(rmap, mask)


def test_all_relevance_off_the_object():
    mask = _box()
    rmap = np.where(mask, -1.0, 1.0)
    assert localisation.relevance_mass(rmap, mask) == 0.0
    assert localisation.rank_accuracy(rmap, mask) == 0.0
    assert not localisation.pointing_hit(rmap, mask)


def test_mass_and_rank_by_hand():
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True  # 2 object pixels
    rmap = np.zeros((4, 4))
    rmap[0, 0] = 3.0  # inside
    rmap[3, 3] = 5.0  # outside, the maximum
    rmap[2, 2] = 2.0  # outside
    assert localisation.relevance_mass(rmap, mask) == pytest.approx(3.0 / 10.0)
    assert localisation.rank_accuracy(rmap, mask) == 0.5  # top 2: (3,3) out, (0,0) in
    assert not localisation.pointing_hit(rmap, mask)


def test_random_map_mass_is_the_object_share():
    mask = _box((100, 100), slice(0, 50), slice(0, 40))  # 20% of the image
    masses = [localisation.relevance_mass(random_maps(mask.shape, seed), mask) for seed in range(5)]
    assert np.mean(masses) == pytest.approx(0.2, abs=0.01)


def test_discrimination():
    left, right = _box((10, 20), slice(0, 10), slice(0, 10)), _box((10, 20), slice(0, 10), slice(10, 20))
    rmap = np.where(left, 3.0, 1.0)
    assert localisation.discrimination(rmap, left, right) == pytest.approx(0.75)
    assert localisation.discrimination(rmap, right, left) == pytest.approx(0.25)
    assert localisation.discrimination(-rmap, left, right) == 0.5  # no positive evidence: no preference


def test_localisation_rejects_bad_masks():
    with pytest.raises(InputError, match="empty"):
        localisation.relevance_mass(np.ones((4, 4)), np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="same shape"):
        localisation.pointing_hit(np.ones((4, 4)), np.ones((4, 5), bool))


def test_channel_sum_layouts():
    x = np.random.default_rng(1).random((2, 3, 4, 5))
    assert np.allclose(channel_sum(x), x.sum(1))
    assert np.allclose(channel_sum(x.transpose(0, 2, 3, 1), "NHWC"), x.sum(1))


# -- perturbation ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(224, 224), (32, 30), (9, 18)])
def test_patch_grid_tiles_the_image(size):
    grid = perturbation.patch_grid(*size, patch=9)
    count = np.zeros(size, int)
    for rows, cols in grid:
        count[rows, cols] += 1
    assert (count == 1).all()
    # Quantus's padding: remainder split floor before, ceil after
    remainder = size[0] % 9
    first = grid[0][0]
    assert first.stop - first.start == (9 - (9 - remainder) // 2 if remainder else 9)


def test_aopc_and_area_by_hand():
    curve = np.array([1.0, 0.5, 0.25, 0.0])
    assert perturbation.aopc(curve) == pytest.approx((0 + 0.5 + 0.75 + 1.0) / 4)
    assert perturbation.area_under(np.linspace(0, 1, 11)) == pytest.approx(0.5)
    assert perturbation.area_under(curve) == pytest.approx((0.75 + 0.375 + 0.125) / 3)


def test_fills():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(3, 20, 24)).astype(np.float32)
    assert not perturbation.fill_image(image, "zero").any()
    constant = np.full((3, 20, 24), 2.5, np.float32)
    assert np.allclose(perturbation.fill_image(constant, "blur", sigma=3), 2.5)
    blurred = perturbation.fill_image(image, "blur", sigma=2)
    assert blurred.std() < 0.5 * image.std()
    noise = perturbation.fill_image(image, "noise", low=[-1, 0, 2], high=[0, 1, 3], seed=4)
    for c, (lo, hi) in enumerate([(-1, 0), (0, 1), (2, 3)]):
        assert lo <= noise[c].min() and noise[c].max() <= hi
    with pytest.raises(UsageError, match="unknown fill"):
        perturbation.fill_image(image, "mean")


def test_patch_at_the_maximum():
    rmap = np.zeros((20, 20))
    rmap[10, 10] = 1.0
    assert perturbation.maximum_patch(rmap, 9) == (slice(6, 15), slice(6, 15))
    rmap[:] = 0
    rmap[0, 19] = 1.0  # at a corner: shifted inwards, still 9x9
    assert perturbation.maximum_patch(rmap, 9) == (slice(0, 9), slice(11, 20))
    image = np.ones((3, 20, 20))
    ablated = perturbation.ablate_maximum(image, rmap, np.zeros_like(image), 9)
    assert ablated.sum() == 3 * (400 - 81)


def linear_model(channels=3, size=18, seed=0) -> tuple[onnx.ModelProto, np.ndarray, float]:
    """logits = [sum(w * x) + b, 0] with a softmax: ONNX Flatten + Gemm + Softmax."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(channels, size, size)).astype(np.float32)
    b = 0.3
    weight = np.stack([w.ravel(), np.zeros(w.size, np.float32)])
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1, name="dense"),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.array([b, 0], np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w, b


@pytest.fixture(scope="module")
def linear():
    from sglrp_onnx.metrics.scorer import ForwardScorer
    from sglrp_onnx.runtime import Explainer

    model, w, b = linear_model()
    explainer = Explainer(model, "cpu", preset="raw", composite="epsilon", cache=False)
    x = np.random.default_rng(5).normal(size=(3, 18, 18)).astype(np.float32) * 0.2
    return {"model": model, "w": w, "b": b, "x": x, "explainer": explainer, "score": ForwardScorer(explainer)}


def _expected_deletion(contribution: np.ndarray, order: np.ndarray, grid, counts, total: float, b: float) -> np.ndarray:
    """The deletion curve of the linear model, by hand: the logit loses each removed patch's sum."""
    sums = np.array([contribution[r, c].sum() for r, c in grid])[order]
    removed = np.concatenate([[0.0], np.cumsum(sums)])[counts]
    return 1.0 / (1.0 + np.exp(-(total + b - removed)))


def test_true_contribution_gives_the_best_deletion_and_insertion(linear):
    x, w, b, score = linear["x"], linear["w"], linear["b"], linear["score"]
    contribution = (w * x).sum(axis=0)
    zero = np.zeros_like(x)
    kwargs = dict(patch=3, steps=12, batch_size=16)
    best_del = perturbation.perturbation_curve(x, contribution, score, 0, zero, kind="deletion", **kwargs)
    best_ins = perturbation.perturbation_curve(x, contribution, score, 0, zero, kind="insertion", **kwargs)
    grid = perturbation.patch_grid(18, 18, 3)
    order = perturbation.patch_order(contribution, grid)
    counts = perturbation.removal_counts(len(grid), 12)
    expected = _expected_deletion(contribution, order, grid, counts, float((w * x).sum()), b)
    assert np.allclose(best_del, expected, atol=1e-5)
    others = [random_maps((18, 18), seed) for seed in range(6)] + [np.abs(x).sum(0), w.sum(0)]
    for rmap in others:
        deletion = perturbation.perturbation_curve(x, rmap, score, 0, zero, kind="deletion", **kwargs)
        insertion = perturbation.perturbation_curve(x, rmap, score, 0, zero, kind="insertion", **kwargs)
        assert (best_del <= deletion + 1e-6).all()
        assert (best_ins >= insertion - 1e-6).all()
        assert perturbation.aopc(best_del) >= perturbation.aopc(deletion) - 1e-9


def test_exact_gradient_x_input_of_a_linear_model(linear):
    from sglrp_onnx.metrics.gradient import gradient_explainer

    gradient = gradient_explainer(linear["model"], "cpu", cache=False)
    result = gradient.explain(linear["x"][None], [0])
    assert np.allclose(result.relevance[0], linear["w"] * linear["x"], rtol=1e-5, atol=1e-6)


def test_evaluate_and_summarise(linear):
    x, w = linear["x"], linear["w"]
    left, right = _box((18, 18), slice(0, 18), slice(0, 9)), _box((18, 18), slice(0, 18), slice(9, 18))
    cases = [Case(0, "a", 0, "zero", left, right), Case(0, "a", 0, "zero", right, left)]
    truth = (w * x).sum(0)
    sources = {
        "truth": lambda inputs, targets: np.stack([truth] * len(targets)),
        "engine": explainer_source(linear["explainer"]),
        "random": random_source("NCHW", seed=1),
    }
    settings = Settings(patch=3, steps=6, batch_size=8)
    records = evaluate(x[None], "NCHW", cases, sources, linear["score"], settings)
    assert len(records) == 6
    first = records[0]
    assert first.scalars["relevance_mass"] == pytest.approx(localisation.relevance_mass(truth, left))
    assert first.scalars["discrimination"] == pytest.approx(localisation.discrimination(truth, left, right))
    assert first.deletion.shape == (7,) and first.insertion.shape == (7,)
    p = linear["score"](x[None])[0, 0]
    assert first.scalars["aopc"] == pytest.approx(np.mean(p - first.deletion))
    summary = summarise(records)
    assert set(summary) == set(sources)
    masses = [r.scalars["relevance_mass"] for r in records if r.source == "truth"]
    assert summary["truth"]["relevance_mass"]["mean"] == pytest.approx(np.mean(masses))
    assert summary["truth"]["relevance_mass"]["n"] == 2
    assert len(summary["random"]["deletion"]["std"]) == 7


def test_masks_follow_the_photo_through_the_fit():
    from sglrp_onnx.metrics.annotations import fit_mask

    mask = np.zeros((30, 40), bool)  # a 40x30 photo, the object in its left half
    mask[:, :20] = True
    stretched = fit_mask(mask, 16, "stretch")
    assert stretched[:, :8].all() and not stretched[:, 8:].any()
    cropped = fit_mask(mask, 16, "crop")  # resized to 21x16, 2 columns cut on the left
    expected_columns = 20 * 16 / 30 - 2  # = 8.67: columns 0..8 are on the object
    assert cropped[:, : int(expected_columns)].all() and not cropped[:, int(expected_columns) + 1 :].any()
    padded = fit_mask(mask, 16, "pad")  # resized to 16x12, 2 black rows above and below
    assert not padded[:2].any() and not padded[14:].any() and padded[2:14, :8].all()
