"""Localisation: how much of a map's positive relevance lies on the object.

All functions take one map ``[H, W]`` (relevance summed over channels) and one boolean object mask
``[H, W]`` of the same size, and use the map's positive part (:func:`maps.positive_part`).

- :func:`relevance_mass` -- share of the positive relevance inside the mask (Arras et al. 2022,
  "CLEVR-XAI", relevance mass accuracy);
- :func:`rank_accuracy` -- of the K highest-relevance pixels, K = the mask's size, the share inside
  the mask (Arras et al. 2022, relevance rank accuracy);
- :func:`pointing_hit` -- whether the map's maximum falls inside the mask (Zhang et al. 2018,
  "Top-down neural attention by excitation backprop", pointing game; no tolerance margin);
- :func:`discrimination` -- on an image with several objects, the share of the positive relevance
  on the requested object among all annotated objects (the class-discrimination claim of SGLRP,
  Iwana et al. 2019).
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.errors import InputError
from sglrp_onnx.metrics.maps import positive_part


def _check(rmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rmap = np.asarray(rmap, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if rmap.ndim != 2 or rmap.shape != mask.shape:
        raise InputError(f"a map [H, W] and a mask of the same shape are needed; got {list(rmap.shape)} and {list(mask.shape)}")
    if not mask.any():
        raise InputError("the object mask is empty")
    return rmap, mask


def relevance_mass(rmap: np.ndarray, mask: np.ndarray) -> float:
    """Positive relevance inside ``mask`` divided by all positive relevance; 0 for a map with none."""
    rmap, mask = _check(rmap, mask)
    positive = positive_part(rmap)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else 0.0


def rank_accuracy(rmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the ``K = mask.sum()`` highest-relevance pixels that lie inside ``mask``.

    Pixels are ranked by the positive part; ties (e.g. many zeros) are broken by a stable sort
    in row-major order, so the result is deterministic.
    """
    rmap, mask = _check(rmap, mask)
    k = int(mask.sum())
    order = np.argsort(-positive_part(rmap).ravel(), kind="stable")[:k]
    return float(mask.ravel()[order].mean())


def pointing_hit(rmap: np.ndarray, mask: np.ndarray) -> bool:
    """True where the pixel of largest relevance lies inside ``mask`` (first maximum in row-major
    order on ties, as ``numpy.argmax``). A map with no positive relevance never hits."""
    rmap, mask = _check(rmap, mask)
    if not (rmap > 0).any():
        return False
    return bool(mask.ravel()[int(np.argmax(rmap))])


def discrimination(rmap: np.ndarray, target_mask: np.ndarray, other_mask: np.ndarray) -> float:
    """Positive relevance on the requested object over that on all annotated objects.

    ``other_mask`` is the union of the other objects; pixels in both masks count for the target.
    1 means all object evidence is on the requested object, 0.5 an even split, 0 all on the
    others; 0.5 as well where neither object gets positive relevance (no preference).
    """
    rmap, target_mask = _check(rmap, target_mask)
    other_mask = np.asarray(other_mask, dtype=bool) & ~target_mask
    positive = positive_part(rmap)
    on_target = positive[target_mask].sum()
    on_other = positive[other_mask].sum()
    total = on_target + on_other
    return float(on_target / total) if total > 0 else 0.5
