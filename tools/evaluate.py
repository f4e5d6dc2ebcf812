"""``make evaluate``: SGLRP, CLRP and LRP measured on real photos composed into two-object images.

Uses the bundled pretrained EfficientNet-Lite0 (models/efficientnet_lite0.onnx) and four of
scikit-image's bundled photos that the model recognises on their own (chelsea -> Egyptian cat,
coffee -> espresso, stereo_motorcycle -> moped, camera -> tripod). Every pair of them, in both
orders, becomes one 448x224 image (each photo centre-cropped to a square and resized to 224x224,
side by side), which the model sees stretched to 224x224, as in ``make demo``. The boxes are the
two halves, known by construction; both objects of every image are explained. Then it runs

    sglrp-onnx evaluate ... --methods lrp clrp:scaled sglrp:signed sglrp:scaled
                            --composites dtd epsilon-plus-flat epsilon-gamma-box

(with the random and gradient x input baselines) into build/evaluation/out/ (table, JSON with
every case, plots), copies the plots into docs/evaluation/ and the table into docs/evaluation.md
between its table markers.

    python tools/evaluate.py [--work build/evaluation] [--steps 100] [--provider auto] [--no-doc]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sglrp_onnx.cli import main as cli_main  # noqa: E402

MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
DOC = ROOT / "docs" / "evaluation.md"
PLOTS = ROOT / "docs" / "evaluation"
PHOTOS = {  # scikit-image loader -> ImageNet class the model gives the photo alone
    "chelsea": 285,  # Egyptian cat
    "coffee": 967,  # espresso
    "stereo_motorcycle": 665,  # moped
    "camera": 872,  # tripod
}
SIDE = 224


def square(photo: np.ndarray) -> np.ndarray:
    """The photo's centre square, resized to SIDE x SIDE, as RGB uint8."""
    from PIL import Image

    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(photo[top : top + side, left : left + side, :3]))
    return np.asarray(crop.resize((SIDE, SIDE), Image.Resampling.BILINEAR))


def load_photo(name: str) -> np.ndarray:
    import skimage.data

    photo = getattr(skimage.data, name)()
    return photo[0] if isinstance(photo, tuple) else photo  # stereo_motorcycle: (left, right, disparity)


def compose(folder: Path) -> Path:
    """Write the two-object images and their boxes file into ``folder``; returns the boxes file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    squares = {name: square(load_photo(name)) for name in PHOTOS}
    boxes = {}
    for left, right in itertools.permutations(PHOTOS, 2):
        file = f"{left}+{right}.png"
        Image.fromarray(np.concatenate([squares[left], squares[right]], axis=1)).save(folder / file)
        boxes[file] = [
            {"class": PHOTOS[left], "box": [0, 0, SIDE, SIDE]},
            {"class": PHOTOS[right], "box": [SIDE, 0, 2 * SIDE, SIDE]},
        ]
    path = folder / "boxes.json"
    path.write_text(json.dumps(boxes, indent=1) + "\n")
    return path


def update_doc(table: str) -> None:
    """Put the table between the markers of docs/evaluation.md (the prose around it stays)."""
    text = DOC.read_text()
    start, end = "<!-- evaluate:table:start -->", "<!-- evaluate:table:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC}: no {start} ... {end} markers")
    DOC.write_text(pattern.sub(lambda _: f"{start}\n{table.strip()}\n{end}", text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "evaluation",
                        help="composed images, boxes and the full output (default build/evaluation)")
    parser.add_argument("--steps", type=int, default=100, help="deletion/insertion steps (default 100)")
    parser.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-doc", action="store_true", help="leave docs/evaluation.md and docs/evaluation/ alone")
    args = parser.parse_args()

    started = time.perf_counter()
    boxes = compose(args.work / "images")
    out = args.work / "out"
    code = cli_main([
        "evaluate", str(MODEL), str(boxes.parent), "--boxes", str(boxes),
        "--preset", "efficientnet-lite", "--fit", "stretch",
        "--methods", "lrp", "clrp:scaled", "sglrp:signed", "sglrp:scaled",
        "--composites", "dtd", "epsilon-plus-flat", "epsilon-gamma-box",
        "--steps", str(args.steps), "--provider", args.provider, "--heatmap-rows", "4",
        "--out", str(out),
    ])
    if code:
        return code
    table = (out / "evaluation.md").read_text().split("\n\n", 1)[1]
    if not args.no_doc:
        update_doc(table)
        PLOTS.mkdir(parents=True, exist_ok=True)
        for name in ("curves.png", "scores.png", "heatmaps.png"):
            shutil.copyfile(out / name, PLOTS / name)
    print(f"make evaluate: {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
