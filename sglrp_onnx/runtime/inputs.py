"""Inputs of the explain step: photos -> model input (:class:`Preprocessing`), and the checks of a
preprocessed batch and of the targets (:func:`check_images`, :func:`check_targets`).

These are plain functions and a small picklable dataclass, so that every path that runs the model
(the ``explain`` command, :class:`~sglrp_onnx.runtime.Explainer`, a worker process holding only an
:class:`~sglrp_onnx.runtime.ExplainStep`) prepares images and targets the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sglrp_onnx.errors import InputError, SglrpError, UsageError
from sglrp_onnx.labels import resolve_target
from sglrp_onnx.presets import Preset, _as_list, fit_image, get_preset
from sglrp_onnx.runtime.contract import ModelIO, dims, shape_text

DEFAULT_SIZE = 224


@dataclass(frozen=True)
class Preprocessing:
    """How photos become the model's image input: fit to ``size``, then normalise with ``preset``.

    Attributes:
        preset: the normalisation (:mod:`sglrp_onnx.presets`).
        size: ``(H, W)`` the photos are fitted to.
        layout: ``"NCHW"`` or ``"NHWC"``, the model's.
        dtype: the image input's numpy dtype name (``"float32"``, ``"float16"``).
        fit: ``crop``, ``stretch`` or ``pad`` (:func:`sglrp_onnx.presets.fit_image`).

    Build it for a model with :meth:`for_model`; it is a small frozen dataclass (picklable), so a
    driver can hand it to worker processes.
    """

    preset: Preset
    size: tuple[int, int]
    layout: str = "NCHW"
    dtype: str = "float32"
    fit: str = "crop"

    @classmethod
    def for_model(cls, io: ModelIO, preset, fit: str = "crop", size=None) -> "Preprocessing":
        """The preprocessing of the ``explain`` command for a model: its input size (``size``, default
        224, where the model's is dynamic), layout and dtype, and ``preset`` (a name or a Preset).

        Raises:
            UsageError: no preset, an unknown preset, or an image input that is not 4-D.
        """
        if preset is None:
            raise UsageError(
                "the model records no preprocessing preset: give preset=... (imagenet, caffe, tf, "
                "efficientnet-lite, raw) or preprocess the images yourself and call explain()"
            )
        if len(io.input_shape) != 4:
            raise UsageError(
                f"photos need a model whose image input is 4-D (NCHW or NHWC); this one is {shape_text(io.input_shape)}"
            )
        preset = get_preset(preset) if isinstance(preset, str) else preset
        hw = io.input_size or _pair(size if size is not None else DEFAULT_SIZE)
        return cls(preset=preset, size=hw, layout=io.layout, dtype=io.input_dtype.name, fit=fit)

    def fit_one(self, image) -> np.ndarray:
        """One photo (path, PIL image or uint8 array) fitted to the size: uint8 ``[H, W, 3]``.

        Raises:
            InputError: the file is missing or not a readable image.
        """
        return fit_image(image, self.size, self.fit)

    def fit_many(self, images, skip_unreadable: bool = False):
        """``(pixels uint8 [M, H, W, 3] or None, kept indices, [(index, InputError)])``.

        With ``skip_unreadable`` an unreadable photo is reported in the third item and left out;
        otherwise its error is raised.
        """
        photos, kept, errors = [], [], []
        for index, image in enumerate(_as_list(images)):
            try:
                photos.append(self.fit_one(image))
                kept.append(index)
            except SglrpError as error:
                if not skip_unreadable:
                    raise
                errors.append((index, error))
        return (np.stack(photos) if photos else None), kept, errors

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Fitted uint8 photos ``[N, H, W, 3]`` -> the model's image input (its layout and dtype)."""
        return self.preset.normalize(pixels, self.layout).astype(self.dtype, copy=False)

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        """``(model input, fitted photos)`` for photos given as paths, PIL images or uint8 arrays."""
        pixels, _, _ = self.fit_many(images)
        return self.normalize(pixels), pixels


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    return h, w


def check_images(images, io: ModelIO) -> np.ndarray:
    """The batch as the model wants it (C-contiguous), or an :class:`InputError` saying what is wrong."""
    if not isinstance(images, np.ndarray):
        raise InputError(
            f"images must be a numpy array shaped {shape_text(io.input_shape)}, got {type(images).__name__}; "
            "use explain_images() for photos, file paths or PIL images"
        )
    if images.dtype != io.input_dtype:
        hint = (
            " (uint8 pixels need preprocessing: use explain_images() or a preset's preprocess())"
            if images.dtype == np.uint8
            else f" (use .astype(np.{io.input_dtype.name}))"
        )
        raise InputError(f"images must have dtype {io.input_dtype.name}, got {images.dtype}{hint}")
    if images.ndim != len(io.input_shape):
        raise InputError(
            f"images must have {len(io.input_shape)} dimensions {shape_text(io.input_shape)}, "
            f"got shape {list(images.shape)}"
            + (" (add the batch axis: images[None])" if images.ndim == len(io.input_shape) - 1 else "")
        )
    if images.shape[0] == 0:
        raise InputError("the batch is empty")
    wanted = dims(io.input_shape)
    for axis, (want, got) in enumerate(zip(wanted, images.shape)):
        if axis == 0 or want is None or want == got:
            continue
        hint = ""
        if len(images.shape) == 4 and sorted(images.shape[1:]) == sorted(d for d in wanted[1:] if d):
            hint = f" (the model's layout is {io.layout})"
        raise InputError(
            f"images have shape {list(images.shape)} but the model takes {shape_text(io.input_shape)}: "
            f"axis {axis} must be {want}{hint}"
        )
    if not np.isfinite(images).all():
        raise InputError("images contain NaN or infinite values")
    return np.ascontiguousarray(images)


def check_targets(targets, n: int, labels: Sequence[str] | None = None, num_classes: int | None = None) -> np.ndarray:
    """int64 ``[n]`` targets (-1: predicted) from ``None``, one target, or ``n`` of them.

    A target is a class index, a class name (needs ``labels``), ``"predicted"`` or a negative number.

    Raises:
        InputError: wrong count or shape, a non-integer index, an index out of range, an unknown name.
    """
    if targets is None:
        return np.full(n, -1, dtype=np.int64)
    if isinstance(targets, (str, int, np.integer)) or (isinstance(targets, np.ndarray) and targets.ndim == 0):
        values = [targets.item() if isinstance(targets, np.ndarray) else targets] * n
    else:
        if isinstance(targets, np.ndarray):
            targets = _integer_array(targets)
        values = list(targets)
        if len(values) != n:
            raise InputError(f"{len(values)} targets for {n} images: give one target, or one per image")
    resolved = []
    for value in values:
        if isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise InputError(f"target {value!r} is not an integer class index")
            value = int(value)
        resolved.append(resolve_target(value, labels, num_classes))
    return np.asarray(resolved, dtype=np.int64)


def _integer_array(targets: np.ndarray) -> np.ndarray:
    if targets.ndim != 1:
        raise InputError(f"targets must be one-dimensional, got shape {list(targets.shape)}")
    if targets.dtype.kind == "f":
        if not np.all(np.isfinite(targets)) or not np.all(targets == np.round(targets)):
            raise InputError("targets must be integers (class indices) or class names")
        return targets.astype(np.int64)
    if targets.dtype.kind not in "iuUO":
        raise InputError(f"targets must be integers or class names, got dtype {targets.dtype}")
    return targets
