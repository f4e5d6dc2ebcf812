"""Our metrics against Quantus 0.6 on the same maps, boxes and model (a small torch net for
Quantus, its ONNX export with the same weights for us), for the metrics both define:

| ours | Quantus 0.6 | convention |
|---|---|---|
| ``relevance_mass`` | ``RelevanceMassAccuracy(abs=False, normalise=False)`` | ours takes the positive part first; equal on maps >= 0 |
| ``rank_accuracy`` | ``RelevanceRankAccuracy(abs=False, normalise=False)`` | ties: ours stable row-major, theirs ``argsort`` order; equal without ties |
| ``pointing_hit`` | ``PointingGame(abs=False, normalise=False)`` | tied maxima: ours the first, theirs any |
| deletion curve, one patch per step | ``Selectivity(patch_size, perturb_baseline=0)`` | Quantus leaves out step 0 |
| ``aopc`` | mean of ``RegionPerturbation(order="morf", perturb_baseline=0)`` | Quantus leaves out k = 0: theirs = ours * (L+1)/L |

Quantus ships with ``make test`` (the torch extra).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")

import onnx  # noqa: E402

from sglrp_onnx.metrics import localisation, perturbation  # noqa: E402
from sglrp_onnx.metrics.scorer import ForwardScorer  # noqa: E402
from sglrp_onnx.runtime import Explainer  # noqa: E402

pytestmark = pytest.mark.torch

SIZE, PATCH, CLASSES, N = 32, 9, 4, 4


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 5, stride=2, padding=2), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(6 * 16 * 16, CLASSES),
    ).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3, SIZE, SIZE)).astype(np.float32)
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.from_numpy(x[:1]), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "N"}})
    explainer = Explainer(onnx.load_from_string(buffer.getvalue()), "cpu", preset="raw", composite="epsilon", cache=False)
    maps = rng.random((N, SIZE, SIZE))  # continuous: no ties
    masks = np.zeros((N, SIZE, SIZE), bool)
    for i in range(N):
        r, c = rng.integers(0, SIZE - 12, 2)
        masks[i, r : r + 12, c : c + 8] = True
    y = rng.integers(0, CLASSES, N)
    return {"net": net, "x": x, "y": y, "maps": maps, "masks": masks, "score": ForwardScorer(explainer)}


def _quantus(metric, s, **kwargs):
    return np.asarray(metric(
        model=s["net"], x_batch=s["x"], y_batch=s["y"], a_batch=s["maps"][:, None], s_batch=s["masks"][:, None],
        device="cpu", softmax=True, channel_first=True, **kwargs,
    ), dtype=np.float64)


def test_localisation_matches_quantus(setup):
    s = setup
    options = dict(abs=False, normalise=False, disable_warnings=True)
    theirs = {
        "mass": _quantus(quantus.RelevanceMassAccuracy(**options), s),
        "rank": _quantus(quantus.RelevanceRankAccuracy(**options), s),
        "pointing": _quantus(quantus.PointingGame(**options), s),
    }
    ours = {
        "mass": [localisation.relevance_mass(m, k) for m, k in zip(s["maps"], s["masks"])],
        "rank": [localisation.rank_accuracy(m, k) for m, k in zip(s["maps"], s["masks"])],
        "pointing": [float(localisation.pointing_hit(m, k)) for m, k in zip(s["maps"], s["masks"])],
    }
    for name in theirs:
        assert np.allclose(ours[name], theirs[name], atol=1e-9), name
    # a map whose maximum is on the object, to be sure both see a hit
    rmap, mask = s["maps"][0].copy(), s["masks"][0]
    rmap[np.argwhere(mask)[0][0], np.argwhere(mask)[0][1]] = 2.0
    assert localisation.pointing_hit(rmap, mask)


def test_deletion_matches_quantus_selectivity(setup):
    s = setup
    grid = perturbation.patch_grid(SIZE, SIZE, PATCH)
    theirs = _quantus(quantus.Selectivity(patch_size=PATCH, perturb_baseline=0.0, abs=False, normalise=False,
                                          disable_warnings=True), s)
    assert theirs.shape == (N, len(grid))
    for i in range(N):
        ours = perturbation.perturbation_curve(
            s["x"][i], s["maps"][i], s["score"], int(s["y"][i]), np.zeros_like(s["x"][i]),
            kind="deletion", patch=PATCH, steps=len(grid),
        )
        assert np.allclose(ours[1:], theirs[i], atol=1e-5)


def test_aopc_matches_quantus_region_perturbation(setup):
    s = setup
    steps = len(perturbation.patch_grid(SIZE, SIZE, PATCH))
    theirs = _quantus(quantus.RegionPerturbation(patch_size=PATCH, order="morf", regions_evaluation=steps,
                                                 perturb_baseline=0.0, abs=False, normalise=False,
                                                 disable_warnings=True), s)
    for i in range(N):
        curve = perturbation.perturbation_curve(
            s["x"][i], s["maps"][i], s["score"], int(s["y"][i]), np.zeros_like(s["x"][i]),
            kind="deletion", patch=PATCH, steps=steps,
        )
        assert perturbation.aopc(curve) * (steps + 1) / steps == pytest.approx(theirs[i].mean(), abs=1e-5)
