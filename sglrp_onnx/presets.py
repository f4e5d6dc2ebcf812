"""Preprocessing presets: how photos become model input, and the zbox bounds that follow from it.

A preset describes the usual preprocessing of one family of image classifiers:

    model_input[c] = (pixel[c] / 255 * scale - mean[c]) / std[c]

where ``pixel`` is an 8-bit value of the photo's channel ``c`` in the model's channel order (RGB, or
BGR for caffe-style models) and ``scale`` is 1 (pixels in [0, 1]) or 255 (pixels in [0, 255]).

The zbox rule of LRP needs the lowest and highest value each input channel can take; for a preset
these are ``low[c] = (0 - mean[c]) / std[c]`` and ``high[c] = (scale - mean[c]) / std[c]``
(:attr:`Preset.low`, :attr:`Preset.high`), per channel, in the model's channel order.

:meth:`Preset.preprocess` turns photos (PIL images, uint8 arrays or file paths) into a float32
batch: it fits each photo to the model's input size (by default the shorter side is resized to the
input size and the centre is cropped) and normalises it, in NCHW or NHWC layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from sglrp_onnx.errors import InputError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

FITS = ("crop", "stretch", "pad")
"""How a photo is fitted to the model's input size (see :func:`fit_image`)."""

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preset:
    """One preprocessing convention.

    Attributes:
        name: the preset's name, as given to ``--preset``.
        mean, std: per-channel, in the model's channel order, in the units given by ``scale``.
        scale: 1.0 when pixels are taken in [0, 1], 255.0 when in [0, 255].
        bgr: True when the model expects channels in BGR order (caffe-style models).
        description: one line for tables and ``--help``.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float
    bgr: bool
    description: str

    @property
    def low(self) -> list[float]:
        """Lowest model-input value per channel (a black pixel), in the model's channel order."""
        return [(0.0 - m) / s for m, s in zip(self.mean, self.std)]

    @property
    def high(self) -> list[float]:
        """Highest model-input value per channel (a white pixel), in the model's channel order."""
        return [(self.scale - m) / s for m, s in zip(self.mean, self.std)]

    @property
    def channel_order(self) -> str:
        return "BGR" if self.bgr else "RGB"

    def normalize(self, pixels: np.ndarray, layout: str = "NCHW") -> np.ndarray:
        """Normalise RGB uint8 pixels shaped ``[N, H, W, 3]`` (or ``[H, W, 3]``) into model input.

        Returns float32 ``[N, 3, H, W]`` for NCHW or ``[N, H, W, 3]`` for NHWC.
        """
        layout = _check_layout(layout)
        array = np.asarray(pixels)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise InputError(f"expected RGB pixels shaped [N, H, W, 3], got shape {list(array.shape)}")
        if array.dtype != np.uint8:
            raise InputError(f"expected uint8 pixels (0..255), got dtype {array.dtype}")
        x = array.astype(np.float32) * np.float32(self.scale / 255.0)
        if self.bgr:
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def preprocess(
        self,
        images,
        size: int | Sequence[int] = 224,
        layout: str = "NCHW",
        fit: str = "crop",
    ) -> np.ndarray:
        """Photos to a float32 model-input batch.

        Args:
            images: one image or a list of them; an image is a PIL image, a uint8 array shaped
                ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` (RGB order), or a path to an image file.
            size: the model's input size, ``S`` or ``(H, W)``.
            layout: ``"NCHW"`` or ``"NHWC"``.
            fit: ``"crop"`` (resize the shorter side, crop the centre), ``"stretch"`` (resize to
                the size, ignoring the aspect ratio) or ``"pad"`` (resize the longer side, pad
                with black).

        Returns:
            float32 ``[N, 3, H, W]`` (NCHW) or ``[N, H, W, 3]`` (NHWC).
        """
        pixels = np.stack([fit_image(img, size, fit) for img in _as_list(images)])
        return self.normalize(pixels, layout)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="imagenet",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            scale=1.0,
            bgr=False,
            description="torchvision: RGB in [0, 1], minus ImageNet mean, divided by std",
        ),
        Preset(
            name="caffe",
            mean=(103.939, 116.779, 123.68),
            std=(1.0, 1.0, 1.0),
            scale=255.0,
            bgr=True,
            description="Keras/caffe: BGR in [0, 255] minus the ImageNet mean per channel",
        ),
        Preset(
            name="tf",
            mean=(127.5, 127.5, 127.5),
            std=(127.5, 127.5, 127.5),
            scale=255.0,
            bgr=False,
            description="Keras/TensorFlow 'tf' mode: RGB scaled to [-1, 1]",
        ),
        Preset(
            name="efficientnet-lite",
            mean=(127.0, 127.0, 127.0),
            std=(128.0, 128.0, 128.0),
            scale=255.0,
            bgr=False,
            description="EfficientNet-Lite: (x*255 - 127) / 128, RGB",
        ),
        Preset(
            name="raw",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            scale=1.0,
            bgr=False,
            description="RGB in [0, 1], no normalisation",
        ),
    )
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (case-insensitive; ``_`` and ``-`` are the same).

    Raises:
        UsageError: for an unknown name; the message lists the valid ones.
    """
    if isinstance(name, Preset):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key in PRESETS:
        return PRESETS[key]
    raise UsageError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")


def _check_layout(layout: str) -> str:
    key = str(layout).upper()
    if key not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    return key


def _as_list(images) -> list:
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if _is_pil(images):
        return [images]
    if isinstance(images, Iterable):
        items = list(images)
        if not items:
            raise InputError("no images given")
        return items
    raise InputError(f"cannot read an image from a {type(images).__name__}")


def _is_pil(obj) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image.Image)


def load_image(image) -> Image.Image:
    """An RGB PIL image from a PIL image, a uint8 array (``[H, W]``, ``[H, W, 3|4]``) or a path.

    Raises:
        InputError: the file is missing or not a readable image, or the array is not image-like.
    """
    from PIL import Image, UnidentifiedImageError

    if _is_pil(image):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                opened.load()
                img = opened.copy()
        except FileNotFoundError:
            raise InputError(f"{os.fspath(image)}: no such image file") from None
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise InputError(f"{os.fspath(image)}: not a readable image ({error})") from None
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise InputError(
                f"image arrays must be uint8 (0..255) shaped [H, W] or [H, W, 3]; got dtype {array.dtype}"
            )
        if array.ndim == 2:
            img = Image.fromarray(array, "L")
        elif array.ndim == 3 and array.shape[2] in (3, 4):
            img = Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[2] == 3 else "RGBA")
        else:
            raise InputError(f"image arrays must be shaped [H, W], [H, W, 3] or [H, W, 4]; got {list(array.shape)}")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        img = background
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise UsageError(f"the input size must be positive, got {size!r}")
    return h, w


def fit_image(image, size: int | Sequence[int], fit: str = "crop") -> np.ndarray:
    """One photo fitted to ``size`` (``S`` or ``(H, W)``): uint8 RGB array ``[H, W, 3]``.

    ``crop`` resizes so the photo covers the size (the shorter side matches) and cuts the centre
    out; ``stretch`` resizes to the size exactly; ``pad`` resizes so the photo fits inside and
    centres it on black. This is also the photo that heatmap overlays are drawn on.
    """
    from PIL import Image

    if fit not in FITS:
        raise UsageError(f"unknown fit {fit!r}; valid: {', '.join(FITS)}")
    h, w = _size_hw(size)
    img = load_image(image)
    src_w, src_h = img.size
    resample = Image.Resampling.BILINEAR
    if fit == "stretch":
        out = img.resize((w, h), resample, reducing_gap=None)
        return np.asarray(out, dtype=np.uint8)
    if fit == "crop":
        factor = max(h / src_h, w / src_w)
    else:
        factor = min(h / src_h, w / src_w)
    new_w = max(1, round(src_w * factor))
    new_h = max(1, round(src_h * factor))
    if fit == "crop":
        new_w, new_h = max(new_w, w), max(new_h, h)
    resized = img.resize((new_w, new_h), resample) if (new_w, new_h) != (src_w, src_h) else img
    if fit == "crop":
        left = (new_w - w) // 2
        top = (new_h - h) // 2
        out = resized.crop((left, top, left + w, top + h))
    else:
        out = Image.new("RGB", (w, h), (0, 0, 0))
        out.paste(resized, ((w - new_w) // 2, (h - new_h) // 2))
    return np.asarray(out, dtype=np.uint8)
