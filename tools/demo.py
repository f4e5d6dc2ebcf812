"""Demo: explain one photo of a cat beside an espresso for both classes, with LRP and SGLRP.

Uses only the bundled files (models/efficientnet_lite0.onnx, models/demo_photo.png), ONNX Runtime,
numpy and Pillow: no PyTorch. Steps:

1. convert the pretrained EfficientNet-Lite0 classifier into an augmented model with SGLRP (and,
   for comparison, plain LRP), preset ``efficientnet-lite`` (which also gives the zbox bounds);
2. run the photo (the whole 448x224 photo, stretched to the 224x224 input) for the targets
   285 (Egyptian cat) and 967 (espresso) in one batch;
3. write heatmaps, overlays and a comparison panel into demo-out/ and print where they are.

SGLRP is class-discriminative: its map for "Egyptian cat" lights up the cat and its map for
"espresso" the cup, while LRP's two maps look alike.

    python tools/demo.py [--out demo-out] [--provider auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sglrp_onnx  # noqa: E402
from sglrp_onnx.heatmap import heatmap, overlay, panel, save_png  # noqa: E402
from sglrp_onnx.presets import fit_image, get_preset, load_image  # noqa: E402
from sglrp_onnx.runtime import Explainer  # noqa: E402

MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
PHOTO = ROOT / "models" / "demo_photo.png"
PRESET = "efficientnet-lite"
TARGETS = {285: "cat", 967: "espresso"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo-out", help="output folder (default demo-out/)")
    parser.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    photo = np.asarray(load_image(PHOTO))  # 448x224: chelsea | coffee
    preset = get_preset(PRESET)
    fitted = fit_image(photo, 224, "stretch")  # the whole photo, squeezed to the model's input
    x = preset.normalize(np.stack([fitted] * len(TARGETS)), "NCHW")
    targets = list(TARGETS)

    results = {}
    for method in ("sglrp", "lrp"):
        started = time.perf_counter()
        augmented = sglrp_onnx.convert(str(MODEL), method=method, preset=PRESET)
        model_path = out / f"efficientnet_lite0.{method}.onnx"
        sglrp_onnx.save(augmented, model_path, force=True)
        converted = time.perf_counter() - started
        explainer = Explainer(model_path, args.provider)
        started = time.perf_counter()
        results[method] = explainer.explain(x, targets)
        ran = time.perf_counter() - started
        print(f"{method}: converted in {converted:.1f} s -> {model_path}; ran 2 targets in {ran:.2f} s on {explainer.provider}")

    sglrp = results["sglrp"]
    print("top-5 predictions for the whole photo:")
    for entry in sglrp.top_k(5)[0]:
        print(f"  {entry['class']:4d} {entry['label']:<20s} p = {entry['probability']:.3f}")

    h, w = photo.shape[:2]
    written = []
    tiles = {}
    for method, result in results.items():
        for row, cls in enumerate(targets):
            assert int(result.explained_class[row]) == cls
            relevance = result.relevance[row]
            name = f"{method}_{TARGETS[cls]}"
            heat = heatmap(relevance, "NCHW", size=(h, w))
            over = overlay(photo, relevance, "NCHW")
            written.append(save_png(heat, out / f"{name}.heatmap.png"))
            written.append(save_png(over, out / f"{name}.overlay.png"))
            tiles[method, cls] = over
    grid = panel(
        [[photo, tiles["lrp", 285], tiles["lrp", 967]], [photo, tiles["sglrp", 285], tiles["sglrp", 967]]],
        titles=["photo", "285 Egyptian cat", "967 espresso"],
        header="EfficientNet-Lite0. Top row: LRP (not class-discriminative); bottom row: SGLRP",
    )
    written.append(save_png(grid, out / "comparison.png"))
    def positive(r: np.ndarray, half: str) -> float:
        middle = r.shape[1] // 2  # relevance is at 224x224: the cat is the left half, the cup the right
        part = r[:, :middle] if half == "left" else r[:, middle:]
        return float(part.clip(min=0).sum())

    for method, result in results.items():
        cat, espresso = result.relevance.sum(axis=1)
        share_cat = positive(cat, "left") / max(positive(cat, "left") + positive(cat, "right"), 1e-30)
        share_esp = positive(espresso, "right") / max(positive(espresso, "left") + positive(espresso, "right"), 1e-30)
        print(
            f"{method}: share of positive relevance on the cat half for 'Egyptian cat': {share_cat:.0%}; "
            f"on the cup half for 'espresso': {share_esp:.0%}"
        )
    print("wrote:")
    for path in written:
        print(f"  {path}")
    assert "torch" not in sys.modules, "the demo must not need PyTorch"
    return 0


if __name__ == "__main__":
    sys.exit(main())
