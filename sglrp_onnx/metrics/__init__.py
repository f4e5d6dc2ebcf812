"""Measure relevance maps: localisation, faithfulness, class discrimination, with baselines.

Maps are summed over channels first (:func:`maps.channel_sum`); localisation metrics use their
positive part. Perturbations happen in the model's preprocessed input space with a chosen fill
(0, blur or uniform noise) and run through ONNX Runtime in batches.

- :mod:`.localisation` -- relevance mass in a box or mask, relevance rank accuracy, pointing game,
  class discrimination on images with several objects;
- :mod:`.perturbation` -- patch ablation at the maximum, deletion and insertion curves, AOPC,
  areas under the curves;
- :mod:`.gradient` -- gradient x input computed exactly (the baseline), :mod:`.maps` -- the
  random baseline;
- :mod:`.scorer` -- the forward pass of an augmented model, for scoring perturbed inputs;
- :mod:`.runner` -- all metrics for several sources over annotated cases; :mod:`.report` --
  markdown, JSON and plots; :mod:`.annotations` -- boxes and masks files.

The command ``sglrp-onnx evaluate`` puts these together; ``docs/evaluation.md`` defines each
metric and compares them with Quantus 0.6.
"""

from sglrp_onnx.metrics.localisation import discrimination, pointing_hit, rank_accuracy, relevance_mass
from sglrp_onnx.metrics.maps import channel_sum, positive_part, random_maps
from sglrp_onnx.metrics.perturbation import (
    FILLS,
    ablate_maximum,
    aopc,
    area_under,
    fill_image,
    patch_grid,
    perturbation_curve,
)

__all__ = [
    "FILLS",
    "ablate_maximum",
    "aopc",
    "area_under",
    "channel_sum",
    "discrimination",
    "fill_image",
    "patch_grid",
    "perturbation_curve",
    "pointing_hit",
    "positive_part",
    "random_maps",
    "rank_accuracy",
    "relevance_mass",
]
