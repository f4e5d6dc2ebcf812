"""Which composite separates classes best on a Vision Transformer? (issue 7, item 5)

Measures, for a few composites, on a tiny torchvision ViT (tests/lxt_vit.py's configuration) exported
with the dynamo exporter and converted by ``sglrp_onnx.convert``:

- class separation: for each image, the Pearson correlation between the relevance map (summed over
  channels) of the top-1 class and that of each other class, averaged over the other classes and the
  images. Lower = the maps differ more between classes = more class-discriminative.
- localisation (trained model only): the share of the positive relevance of the top-1 class that
  falls inside the box of the object that decides the class (chance level: the box's share of the
  image, 64/1024 = 6.25%). Higher = better; correctly classified images only.

Two models: random weights (the head set to random values; maps of random weights say little about
what a composite does on a trained network, so read those numbers with care), and the same ViT
trained for a few seconds on a synthetic task where the class is which of 10 fixed random 8x8
patterns is pasted at a random place on a noise background. That task has a known "right answer"
(the pattern's box), which random weights cannot have. Both are tiny: this is a sanity measurement,
not a benchmark on real data.

    .venv/bin/python tools/compare_composites.py [--images 64] [--steps 1500] [--methods lrp,sglrp] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import lxt_vit  # noqa: E402  (tests/lxt_vit.py: the ViT configuration and its attention projections)

PATTERN = 8  # side of the class pattern, = the ViT's patch size
DENSE_GAMMA = {"rule": "gamma", "gamma": 0.05}

# (label, convert keyword arguments); bounds are added for the composites with a zbox first layer
COMPOSITES = [
    ("epsilon", {"composite": "epsilon"}),
    ("epsilon + Add:epsilon (= LXT)", {"composite": "epsilon", "rules": {"Add": "epsilon"}}),
    ("epsilon-gamma-box", {"composite": "epsilon-gamma-box"}),
    ("dtd", {"composite": "dtd"}),
    ("epsilon-plus", {"composite": "epsilon-plus"}),
    (
        "epsilon, gamma 0.05 on Gemm/MatMul",
        {"composite": "epsilon", "rules": {"Add": "epsilon", "Gemm": DENSE_GAMMA, "MatMul": DENSE_GAMMA}},
    ),
    ("transformer (the composite of these overrides)", {"composite": "transformer"}),
    (
        "epsilon, gamma 0.05 on MLP/head only (LXT's placement)",
        {"composite": "epsilon", "rules": lambda model: {
            "Add": "epsilon", "Gemm": DENSE_GAMMA, "MatMul": DENSE_GAMMA,
            **{name: "epsilon" for name in lxt_vit.attention_projections(model)}}},
    ),
    (
        "epsilon, gamma 0.05 on Gemm/MatMul, AttnLRP attention rule",
        {"composite": "epsilon", "attention": "attnlrp", "rules": {"Add": "epsilon", "Gemm": DENSE_GAMMA, "MatMul": DENSE_GAMMA}},
    ),
    (
        "epsilon, gamma 0.25 on Conv/Gemm/MatMul",
        {"composite": "epsilon", "gamma": 0.25, "rules": {"Add": "epsilon", "Conv": "gamma", "Gemm": "gamma", "MatMul": "gamma"}},
    ),
]
ZBOX_COMPOSITES = {"epsilon-gamma-box", "dtd"}


def class_patterns(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """One fixed random 3x8x8 pattern per class (unit variance)."""
    return rng.standard_normal((num_classes, 3, PATTERN, PATTERN)).astype(np.float32)


def synthetic_batch(rng, patterns, n, size):
    """Images of noise (std 0.5) with the pattern of a random class pasted at a random place.

    Returns (images [n, 3, size, size], labels [n], boxes [n, 2] = top-left corners)."""
    images = (0.5 * rng.standard_normal((n, 3, size, size))).astype(np.float32)
    labels = rng.integers(0, len(patterns), n)
    boxes = rng.integers(0, size - PATTERN + 1, (n, 2))
    for image, label, (top, left) in zip(images, labels, boxes):
        image[:, top : top + PATTERN, left : left + PATTERN] = patterns[label]
    return images, labels, boxes


def train(model, patterns, steps: int, size: int, seed: int = 0):
    """Adam on fresh synthetic batches; returns the test accuracy on 512 new images."""
    import torch

    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        images, labels, _ = synthetic_batch(rng, patterns, 64, size)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    images, labels, _ = synthetic_batch(rng, patterns, 512, size)
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(1).numpy()
    return float(np.mean(predicted == labels))


def relevance_for_all_classes(converted, images: np.ndarray, num_classes: int) -> np.ndarray:
    """Relevance maps summed over channels, [n, K, H, W]: every image explained for every class."""
    import onnxruntime as ort

    meta = {p.key: p.value for p in converted.metadata_props}
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    n = len(images)
    batch = np.repeat(images, num_classes, axis=0)
    targets = np.tile(np.arange(num_classes, dtype=np.int64), n)
    feeds = {meta["sglrp_onnx.image_input"]: batch, meta["sglrp_onnx.target_input"]: targets}
    relevance = session.run([meta["sglrp_onnx.relevance_output"]], feeds)[0]
    return relevance.sum(1).reshape(n, num_classes, *relevance.shape[2:]).astype(np.float64)


def mean_and_error(values) -> tuple[float, float]:
    """Mean and standard error of the mean (over images)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def class_separation(maps: np.ndarray, top1: np.ndarray) -> tuple[float, float]:
    """Pearson correlation between the top-1 class's map and each other class's map, averaged over
    the other classes per image; mean and standard error over the images."""
    per_image = []
    for image_maps, top in zip(maps, top1):
        matrix = np.corrcoef(image_maps.reshape(len(image_maps), -1))
        per_image.append(np.nanmean(np.delete(matrix[top], top)))
    return mean_and_error(per_image)


def localisation(maps: np.ndarray, top1: np.ndarray, labels, boxes) -> tuple[float, float]:
    """Share of the top-1 class's positive relevance inside the pattern's box, on the correctly
    classified images; mean and standard error over them."""
    shares = []
    for image_maps, top, label, (row, col) in zip(maps, top1, labels, boxes):
        if top != label:
            continue
        positive = np.clip(image_maps[top], 0, None)
        inside = positive[row : row + PATTERN, col : col + PATTERN].sum()
        shares.append(inside / max(positive.sum(), 1e-300))
    return mean_and_error(shares)


def measure(onnx_model, images, labels, boxes, methods, num_classes):
    """{(composite label, method): (separation, localisation or None) or the reason of a refusal}."""
    import sglrp_onnx

    low, high = float(images.min()), float(images.max())
    top1 = top1_classes(onnx_model, images)
    results = {}
    for label, kwargs in COMPOSITES:
        if kwargs["composite"] in ZBOX_COMPOSITES:
            kwargs = {**kwargs, "low": low, "high": high}
        if callable(kwargs.get("rules")):  # rules that name nodes of this export
            kwargs = {**kwargs, "rules": kwargs["rules"](onnx_model)}
        for method in methods:
            try:
                converted = sglrp_onnx.convert(onnx_model, method=method, **kwargs)
            except Exception as error:  # a composite the engine refuses is reported, not hidden
                results[(label, method)] = f"refused ({type(error).__name__}: {str(error)[:80]})"
                continue
            maps = relevance_for_all_classes(converted, images, num_classes)
            separation = class_separation(maps, top1)
            located = localisation(maps, top1, labels, boxes) if labels is not None else None
            results[(label, method)] = (separation, located)
    return results


def top1_classes(onnx_model, images):
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0].argmax(1)


def print_table(title, results, methods, with_localisation):
    print(f"\n### {title}\n")
    header = "| composite |" + "".join(f" {m}: separation |" + (f" {m}: in box |" if with_localisation else "") for m in methods)
    print(header)
    print("|" + "---|" * (1 + len(methods) * (2 if with_localisation else 1)))
    for label, _ in COMPOSITES:
        cells = []
        for method in methods:
            value = results[(label, method)]
            if isinstance(value, str):
                cells.extend([value] + ([""] if with_localisation else []))
                continue
            (separation, separation_error), located = value
            cells.append(f"{separation:.3f} ± {separation_error:.3f}")
            if with_localisation:
                cells.append(f"{100 * located[0]:.1f}% ± {100 * located[1]:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500, help="training steps of the synthetic task")
    parser.add_argument("--methods", default="lrp,sglrp")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, patterns, images and training")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")

    import torch

    import zennit_models as zm

    torch.set_num_threads(1)
    num_classes, size = lxt_vit.NUM_CLASSES, lxt_vit.IMAGE_SIZE
    rng = np.random.default_rng(123 + args.seed)
    patterns = class_patterns(rng, num_classes)
    images, labels, boxes = synthetic_batch(rng, patterns, args.images, size)

    print(f"measured {datetime.date.today()} on {platform.machine()} {platform.system()}, "
          f"python {platform.python_version()}, torch {torch.__version__}; seed {args.seed}; tiny torchvision ViT {lxt_vit.VIT_CONFIG}")

    model = lxt_vit.build_vit(seed=args.seed)
    random_onnx = zm.export_onnx(model, torch.from_numpy(images[:2]), dynamo=True)
    print_table("random weights (synthetic images; separation only)",
                measure(random_onnx, images, None, None, methods, num_classes), methods, False)

    accuracy = train(model, patterns, args.steps, size, seed=args.seed)
    trained_onnx = zm.export_onnx(model, torch.from_numpy(images[:2]), dynamo=True)
    print_table(f"trained on the synthetic task ({args.steps} steps, test accuracy {100 * accuracy:.1f}%)",
                measure(trained_onnx, images, labels, boxes, methods, num_classes), methods, True)
    print(f"\nseparation: mean correlation top-1 map vs other classes' maps (lower = more class-discriminative); "
          f"in box: share of positive top-1 relevance inside the 8x8 pattern (chance {100 * PATTERN**2 / size**2:.2f}%); "
          f"± one standard error over the images.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
