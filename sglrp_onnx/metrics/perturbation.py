"""Faithfulness by perturbation: remove what a map calls relevant and watch the class probability.

Images here are single preprocessed model inputs ``[C, H, W]`` (channels first; callers transpose
NHWC inputs) and maps are ``[H, W]``. Perturbation happens in the model's preprocessed input
space: a removed pixel takes the value of a *fill* image (:func:`fill_image`): 0 (the dataset mean
after normalisation, the default), a blurred copy of the image, or uniform noise.

Patches: the image is cut into a grid of ``patch x patch`` squares. Where the size is not a
multiple of ``patch`` the grid is shifted by half the remainder (floor before, ceil after) and the
border squares are cut off at the image's edge -- the grid of Quantus 0.6's ``Selectivity`` and
``RegionPerturbation`` (``helpers.utils.get_padding_size``), so that curves can be compared
with Quantus one to one. Patches are ranked by their summed relevance, largest first (stable on
ties, row-major).

- :func:`perturbation_curve` -- deletion (most relevant patches replaced by the fill first) or
  insertion (start from the fill, put the most relevant patches back first), ``steps`` steps
  (default 100, i.e. 1% of the patches per step; Petsiuk et al. 2018, "RISE", deletion and
  insertion), returning the probability after each step, step 0 included;
- :func:`aopc` -- area over the perturbation curve, Samek et al. 2017 ("Evaluating the
  visualization of what a deep neural network has learned"): the mean over the steps
  k = 0..L of f(x) - f(x^(k));
- :func:`area_under` -- area under a curve against the removed fraction (0..1), trapezoids;
- :func:`ablate_maximum` -- replace one patch centred on the map's maximum.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sglrp_onnx.errors import UsageError

FILLS = ("zero", "blur", "noise")
"""Fill modes for removed pixels (see :func:`fill_image`)."""

Scorer = Callable[[np.ndarray], np.ndarray]
"""A function from a batch ``[B, C, H, W]`` to class probabilities ``[B, K]``."""


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``[C, H, W]`` blurred per channel by a separable Gaussian (radius 3 sigma, mirrored edges)."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = np.asarray(image, dtype=np.float64)
    for axis in (1, 2):
        width = [(0, 0)] * 3
        width[axis] = (radius, radius)
        padded = np.pad(out, width, mode="symmetric")
        size = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(kernel))
    return out.astype(image.dtype, copy=False)


def fill_image(
    image: np.ndarray,
    fill: str = "zero",
    *,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    sigma: float = 5.0,
    seed: int = 0,
) -> np.ndarray:
    """What removed pixels of ``image`` ``[C, H, W]`` become.

    ``zero``: 0, the dataset mean after normalisation; ``blur``: the image blurred by a Gaussian
    of ``sigma`` pixels; ``noise``: uniform noise between ``low`` and ``high`` per channel (the
    input range, e.g. a preset's bounds; default: the image's own range per channel), drawn
    with ``seed``.
    """
    image = np.asarray(image)
    if fill == "zero":
        return np.zeros_like(image)
    if fill == "blur":
        return gaussian_blur(image, sigma)
    if fill == "noise":
        channels = image.shape[0]
        lo = np.asarray(low if low is not None else image.reshape(channels, -1).min(axis=1), np.float64)
        hi = np.asarray(high if high is not None else image.reshape(channels, -1).max(axis=1), np.float64)
        lo, hi = (np.broadcast_to(v, (channels,))[:, None, None] for v in (lo, hi))
        noise = np.random.default_rng(seed).random(image.shape)
        return (lo + noise * (hi - lo)).astype(image.dtype)
    raise UsageError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)}")


def patch_grid(height: int, width: int, patch: int = 9) -> list[tuple[slice, slice]]:
    """The ``(rows, columns)`` slices of the patches, row by row (Quantus 0.6's grid, see above)."""
    if patch < 1:
        raise UsageError(f"the patch size must be at least 1, got {patch}")

    def starts(size: int) -> list[tuple[int, int]]:
        remainder = size % patch
        before = (patch - remainder) // 2 if remainder else 0
        edges = range(-before, size, patch)
        return [(max(0, e), min(size, e + patch)) for e in edges]

    return [(slice(r0, r1), slice(c0, c1)) for r0, r1 in starts(height) for c0, c1 in starts(width)]


def patch_order(rmap: np.ndarray, grid: list[tuple[slice, slice]]) -> np.ndarray:
    """Patch indices by summed relevance, largest first (stable: ties keep grid order)."""
    sums = np.array([rmap[rows, cols].sum() for rows, cols in grid])
    return np.argsort(-sums, kind="stable")


def _score_batches(score: Scorer, images: np.ndarray, target: int, batch_size: int) -> np.ndarray:
    values = [score(images[i : i + batch_size])[:, target] for i in range(0, len(images), batch_size)]
    return np.concatenate(values).astype(np.float64)


def removal_counts(patches: int, steps: int) -> np.ndarray:
    """How many patches are replaced after each step 0..steps (``round(k * patches / steps)``)."""
    if steps < 1:
        raise UsageError(f"the number of steps must be at least 1, got {steps}")
    return np.rint(np.arange(steps + 1) * patches / steps).astype(int)


def perturbed_images(
    image: np.ndarray,
    rmap: np.ndarray,
    fill: np.ndarray,
    *,
    kind: str = "deletion",
    patch: int = 9,
    steps: int = 100,
) -> np.ndarray:
    """``[steps + 1, C, H, W]``: the image after each step of a deletion or insertion."""
    if kind not in ("deletion", "insertion"):
        raise UsageError(f"kind must be 'deletion' or 'insertion', got {kind!r}")
    grid = patch_grid(rmap.shape[0], rmap.shape[1], patch)
    order = patch_order(rmap, grid)
    counts = removal_counts(len(grid), steps)
    start, source = (image, fill) if kind == "deletion" else (fill, image)
    current = np.array(start, copy=True)
    frames = np.empty((steps + 1,) + image.shape, dtype=image.dtype)
    done = 0
    for step, count in enumerate(counts):
        for index in order[done:count]:
            rows, cols = grid[index]
            current[:, rows, cols] = source[:, rows, cols]
        done = count
        frames[step] = current
    return frames


def perturbation_curve(
    image: np.ndarray,
    rmap: np.ndarray,
    score: Scorer,
    target: int,
    fill: np.ndarray,
    *,
    kind: str = "deletion",
    patch: int = 9,
    steps: int = 100,
    batch_size: int = 32,
) -> np.ndarray:
    """Probability of ``target`` after each of the ``steps + 1`` steps (step 0: nothing changed yet).

    Deletion: a good map makes it fall fast (low area). Insertion: a good map makes it rise fast
    (high area). The removed fraction at step k is ``k / steps`` of the patches.
    """
    frames = perturbed_images(image, rmap, fill, kind=kind, patch=patch, steps=steps)
    return _score_batches(score, frames, target, batch_size)


def aopc(curve: np.ndarray) -> float:
    """Samek et al. 2017: ``1/(L+1) * sum_{k=0..L} (f(x^(0)) - f(x^(k)))`` of a deletion curve
    ``f(x^(0)), ..., f(x^(L))``. Higher: the map found what the score depends on.

    Quantus 0.6 has no AOPC of its own; the mean of its ``RegionPerturbation`` curve (order
    ``morf``, one patch per step) leaves out the k = 0 term, i.e. equals ``aopc * (L+1)/L``.
    """
    curve = np.asarray(curve, dtype=np.float64)
    return float(np.mean(curve[0] - curve))


def area_under(curve: np.ndarray) -> float:
    """Area under a curve sampled at evenly spaced removed fractions 0..1 (trapezoids)."""
    curve = np.asarray(curve, dtype=np.float64)
    if len(curve) < 2:
        raise UsageError("a curve needs at least two points")
    dx = 1.0 / (len(curve) - 1)
    return float(dx * (curve.sum() - 0.5 * (curve[0] + curve[-1])))


def maximum_patch(rmap: np.ndarray, patch: int = 9) -> tuple[slice, slice]:
    """The ``patch x patch`` square centred on the map's maximum (first in row-major order on
    ties), shifted inwards where it would leave the image."""
    height, width = rmap.shape
    row, col = np.unravel_index(int(np.argmax(rmap)), rmap.shape)

    def span(centre: int, size: int) -> slice:
        length = min(patch, size)
        begin = min(max(0, centre - patch // 2), size - length)
        return slice(begin, begin + length)

    return span(row, height), span(col, width)


def ablate_maximum(image: np.ndarray, rmap: np.ndarray, fill: np.ndarray, patch: int = 9) -> np.ndarray:
    """``image`` with the patch at the map's maximum replaced by ``fill``."""
    rows, cols = maximum_patch(rmap, patch)
    out = np.array(image, copy=True)
    out[:, rows, cols] = fill[:, rows, cols]
    return out
