"""Relevance maps as the metrics see them: 2-D, summed over channels, and the random baseline."""

from __future__ import annotations

import numpy as np

from sglrp_onnx.errors import InputError


def channel_sum(relevance: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """float64 ``[N, H, W]``: the relevance summed over the channel axis of ``layout``.

    Every metric works on this map (as ``explain`` draws it); ``[N, H, W]`` passes through.
    """
    array = np.asarray(relevance, dtype=np.float64)
    if array.ndim == 3:
        return array
    if array.ndim != 4:
        raise InputError(f"relevance must be [N, C, H, W], [N, H, W, C] or [N, H, W]; got shape {list(array.shape)}")
    return array.sum(axis=1 if layout == "NCHW" else -1)


def positive_part(maps: np.ndarray) -> np.ndarray:
    """``max(map, 0)``: localisation metrics count evidence for the class only (a signed SGLRP
    map sums to about 0, so its negative half would cancel the positive one)."""
    return np.maximum(np.asarray(maps, dtype=np.float64), 0.0)


def random_maps(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The random baseline: independent uniform values in [0, 1) per pixel, reproducible by ``seed``.

    Its expected relevance mass in an object is the object's share of the image, and its
    deletion curve is that of patches removed in random order (Samek et al. 2017's baseline).
    """
    return np.random.default_rng(seed).random(shape)
