"""Object annotations for the metrics: boxes from a JSON file or masks from PNG files.

Boxes file (JSON): an object mapping an image's file name to a list of objects, each
``{"class": INDEX_OR_NAME, "box": [x0, y0, x1, y1]}`` in the photo's own pixels (x to the right,
y down, x1/y1 exclusive), e.g. ``{"cat_cup.png": [{"class": 285, "box": [0, 10, 224, 214]}]}``.

Masks folder: one PNG per image and class, named ``<image file name without extension>.<class
index>.png`` (e.g. ``cat_cup.285.png``), the size of the photo; non-zero pixels are the object.

Annotations are in the photo's geometry; :func:`fit_mask` carries them through the same fitting
(crop, stretch, pad) that makes the photo the model's input, so they stay on the object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sglrp_onnx.errors import InputError
from sglrp_onnx.labels import resolve_target
from sglrp_onnx.presets import fit_image


@dataclass
class ObjectMask:
    """One annotated object on a photo: its class and a bool mask ``[H, W]`` in photo pixels."""

    target: int
    mask: np.ndarray


def _box_mask(box, size: tuple[int, int], where: str) -> np.ndarray:
    width, height = size
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box
    ):
        raise InputError(f"{where}: 'box' must be four numbers [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise InputError(f"{where}: box {list(box)} is empty (needs x0 < x1 and y0 < y1)")
    c0, r0 = max(0, int(round(x0))), max(0, int(round(y0)))
    c1, r1 = min(width, int(round(x1))), min(height, int(round(y1)))
    if c0 >= c1 or r0 >= r1:
        raise InputError(f"{where}: box {list(box)} lies outside the {width}x{height} photo")
    mask = np.zeros((height, width), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def read_boxes(path: str | Path) -> dict[str, list]:
    """The boxes file as ``{file name: [entries]}``, checked for its shape (not yet its classes)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such boxes file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the boxes file: {error.strerror or error}") from None
    except ValueError as error:
        raise InputError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a boxes file maps image file names to lists of {{\"class\", \"box\"}} objects")
    for name, entries in data.items():
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{path}: entry '{name}': expected a non-empty list of {{\"class\": ..., \"box\": [x0, y0, x1, y1]}}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "class" not in entry or "box" not in entry:
                raise InputError(f"{path}: entry '{name}' item {i}: expected {{\"class\": ..., \"box\": [x0, y0, x1, y1]}}, got {entry!r}")
    return data


def boxes_for(path: str | Path, boxes: dict[str, list], image_name: str, size: tuple[int, int], labels, classes) -> list[ObjectMask]:
    """The objects of one photo (``size`` = (width, height)) from a file read by :func:`read_boxes`."""
    result = []
    for i, entry in enumerate(boxes.get(image_name, [])):
        where = f"{path}: entry '{image_name}' item {i}"
        try:
            target = resolve_target(entry["class"], labels, classes)
        except Exception as error:  # noqa: BLE001 - resolve_target raises InputError/UsageError
            raise InputError(f"{where}: class {entry['class']!r}: {error}") from None
        if target < 0:
            raise InputError(f"{where}: class must be a class index or name, not {entry['class']!r}")
        result.append(ObjectMask(target, _box_mask(entry["box"], size, where)))
    return result


_MASK_NAME = re.compile(r"^(?P<stem>.+)\.(?P<cls>\d+)\.png$", re.IGNORECASE)


def masks_for(folder: str | Path, image_name: str, size: tuple[int, int], classes: int | None) -> list[ObjectMask]:
    """The objects of one photo from ``<folder>/<stem>.<class>.png`` files."""
    from PIL import Image

    folder = Path(folder)
    stem = Path(image_name).stem
    result = []
    for file in sorted(folder.iterdir()):
        match = _MASK_NAME.match(file.name)
        if not match or match["stem"] != stem:
            continue
        target = int(match["cls"])
        if classes is not None and target >= classes:
            raise InputError(f"{file}: class {target} is out of range (the model has {classes} classes)")
        try:
            with Image.open(file) as opened:
                array = np.asarray(opened.convert("L"))
        except OSError as error:
            raise InputError(f"{file}: not a readable PNG mask ({error})") from None
        if (array.shape[1], array.shape[0]) != tuple(size):
            raise InputError(
                f"{file}: mask is {array.shape[1]}x{array.shape[0]} but the photo {image_name} is {size[0]}x{size[1]}"
            )
        if not array.any():
            raise InputError(f"{file}: mask is empty (no non-zero pixel)")
        result.append(ObjectMask(target, array > 0))
    return result


def check_masks_folder(folder: str | Path) -> Path:
    """The masks folder, or an :class:`InputError` naming it and what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such masks folder")
    odd = [f.name for f in folder.iterdir() if f.suffix.lower() == ".png" and not _MASK_NAME.match(f.name)]
    if odd:
        raise InputError(f"{folder}: mask file '{odd[0]}' is not named <image>.<class index>.png")
    return folder


def fit_mask(mask: np.ndarray, size: int | Sequence[int], fit: str) -> np.ndarray:
    """A photo-sized mask carried through :func:`sglrp_onnx.presets.fit_image` (same resizing
    and cropping as the photo), thresholded at half: bool ``[H, W]`` in the model input's geometry."""
    fitted = fit_image(np.where(mask, 255, 0).astype(np.uint8), size, fit)
    return fitted[..., 0] >= 128
