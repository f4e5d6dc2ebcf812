"""Relevance maps as pictures: heatmaps, overlays on the photo, side-by-side panels, PNG files.

A relevance tensor is first summed over its channels (one value per pixel). The colormap is a
diverging one centred at 0: white for no relevance, red for positive relevance (evidence for the
explained class), blue for negative relevance (evidence against it). It is symmetric: both ends
are at ``max |R|`` of the map (or a ``vmax`` given), so equal magnitudes get equal strength and the
colour of 0 is always white. The colormap is computed with numpy; files are written with Pillow.

PNG files are written atomically: into a temporary file in the target folder, then renamed over
the target, so a reader never sees half a file and an interrupted run leaves no broken PNG.
"""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import numpy as np

from sglrp_onnx.errors import InputError, OutputError

# Anchors of the diverging colormap: position in [-1, 1] -> RGB.
_ANCHORS = np.array([-1.0, -0.55, -0.2, 0.0, 0.2, 0.55, 1.0])
_COLOURS = np.array(
    [
        [10, 30, 110],
        [40, 110, 215],
        [150, 200, 245],
        [255, 255, 255],
        [250, 185, 150],
        [225, 70, 40],
        [125, 0, 25],
    ],
    dtype=np.float64,
)


def relevance_to_map(relevance: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """One image's relevance as ``[H, W]`` float32, summed over the channel axis.

    Accepts ``[C, H, W]`` (NCHW), ``[H, W, C]`` (NHWC), ``[H, W]``, or any of these with a leading
    batch axis of length 1.
    """
    r = np.asarray(relevance, dtype=np.float32)
    if r.ndim == 4:
        if r.shape[0] != 1:
            raise InputError(f"expected the relevance of one image, got a batch of {r.shape[0]}")
        r = r[0]
    if r.ndim == 3:
        r = r.sum(axis=0 if layout.upper() == "NCHW" else -1, dtype=np.float32)
    if r.ndim != 2:
        raise InputError(f"expected a relevance map shaped [C, H, W], [H, W, C] or [H, W]; got {list(r.shape)}")
    return r


def symmetric_scale(rmap: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """``rmap / vmax`` clipped to [-1, 1]; ``vmax`` defaults to ``max |rmap|`` (0 maps stay 0)."""
    r = np.nan_to_num(np.asarray(rmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.abs(r).max()) if vmax is None else float(vmax)
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros_like(r)
    return np.clip(r / scale, -1.0, 1.0)


def colorize(rmap: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A ``[H, W]`` map as an RGB uint8 ``[H, W, 3]`` image with the diverging colormap."""
    s = symmetric_scale(rmap, vmax)
    out = np.empty(s.shape + (3,), dtype=np.float64)
    for c in range(3):
        out[..., c] = np.interp(s, _ANCHORS, _COLOURS[:, c])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def colormap_bar(width: int = 256, height: int = 12) -> np.ndarray:
    """The colormap from -1 (left) to +1 (right) as an RGB uint8 image, for legends."""
    ramp = np.tile(np.linspace(-1.0, 1.0, width), (height, 1))
    return colorize(ramp, vmax=1.0)


def heatmap(
    relevance: np.ndarray,
    layout: str = "NCHW",
    vmax: float | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Relevance of one image (any form :func:`relevance_to_map` takes) as an RGB uint8 heatmap,
    resized to ``size`` = (H, W) when given (e.g. back to the photo's own size)."""
    picture = colorize(relevance_to_map(relevance, layout), vmax)
    if size is not None:
        picture = _resize_rgb(picture, int(size[0]), int(size[1]))
    return picture


def _resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def overlay(
    photo: np.ndarray,
    relevance: np.ndarray,
    layout: str = "NCHW",
    vmax: float | None = None,
    alpha: float = 0.9,
) -> np.ndarray:
    """The heatmap laid over a dimmed grey copy of the photo (RGB uint8, the photo's size).

    The heatmap's opacity grows with ``|R|`` (square root, so weak relevance stays visible), up to
    ``alpha`` at ``vmax``; where the relevance is 0 the grey photo shows.
    """
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise InputError(f"the photo must be RGB uint8 [H, W, 3], got {photo.dtype} {list(photo.shape)}")
    rmap = relevance_to_map(relevance, layout)
    colours = colorize(rmap, vmax)
    strength = np.sqrt(np.abs(symmetric_scale(rmap, vmax)))
    h, w = photo.shape[:2]
    if rmap.shape != (h, w):
        from PIL import Image

        colours = _resize_rgb(colours, h, w)
        strength = np.asarray(
            Image.fromarray(strength.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR)
        )
    grey = photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    base = np.repeat((0.5 * grey + 0.5 * 190.0)[..., None], 3, axis=2)  # lighter grey photo
    a = (alpha * np.clip(strength, 0.0, 1.0))[..., None]
    mixed = base * (1.0 - a) + colours.astype(np.float64) * a
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()


def panel(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str] | None = None,
    header: str | None = None,
    gap: int = 6,
    min_tile: int = 160,
) -> np.ndarray:
    """Tiles (RGB uint8 images) arranged in rows on white, with column titles and a header line.

    Tiles narrower than ``min_tile`` pixels are enlarged by a whole factor (nearest neighbour, so
    pixels stay sharp) to keep small model inputs and the titles readable.
    """
    from PIL import Image, ImageDraw

    if not rows or not rows[0]:
        raise InputError("a panel needs at least one tile")
    ncols = max(len(r) for r in rows)
    th = max(t.shape[0] for r in rows for t in r)
    tw = max(t.shape[1] for r in rows for t in r)
    factor = -(-min_tile // tw) if tw < min_tile else 1
    th, tw = th * factor, tw * factor
    font_size = max(10, min(16, tw // 12))
    font = _font(font_size)
    text_h = font_size + 6
    top = (text_h if header else 0) + (text_h if titles else 0)
    height = top + len(rows) * th + (len(rows) + 1) * gap
    width = ncols * tw + (ncols + 1) * gap
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if header:
        width = max(width, int(probe.textlength(header, font=font)) + 2 * gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = gap // 2
    if header:
        draw.text((gap, y), header, fill=(0, 0, 0), font=font)
        y += text_h
    if titles:
        for c, title in enumerate(titles[:ncols]):
            text = str(title)
            while len(text) > 1 and draw.textlength(text, font=font) > tw:
                text = text[:-2] + "…"
            draw.text((gap + c * (tw + gap), y), text, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            image = Image.fromarray(np.asarray(tile, dtype=np.uint8))
            if factor > 1:
                image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
            canvas.paste(image, (gap + c * (tw + gap), top + gap + r * (th + gap)))
    return np.asarray(canvas)


def side_by_side(images: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    """RGB uint8 images of one height placed left to right."""
    h = max(i.shape[0] for i in images)
    parts = []
    for k, image in enumerate(images):
        if image.shape[0] != h:
            image = _resize_rgb(image, h, max(1, round(image.shape[1] * h / image.shape[0])))
        parts.append(image)
        if gap and k < len(images) - 1:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_png(image: np.ndarray, path: str | os.PathLike) -> str:
    """Write an RGB (or grey) uint8 image as PNG, atomically; returns the path.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    from PIL import Image

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InputError(f"PNG data must be uint8, got {array.dtype}")
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(array).save(handle, format="PNG")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_heatmap(path, relevance: np.ndarray, layout: str = "NCHW", vmax: float | None = None) -> str:
    """Save the heatmap of one image's relevance as a PNG (atomically)."""
    return save_png(heatmap(relevance, layout, vmax), path)


def write_overlay(path, photo: np.ndarray, relevance: np.ndarray, layout: str = "NCHW", vmax: float | None = None) -> str:
    """Save the overlay of one image's relevance on its photo as a PNG (atomically)."""
    return save_png(overlay(photo, relevance, layout, vmax), path)
