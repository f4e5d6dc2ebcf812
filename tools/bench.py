"""CPU benchmark: the forward pass alone vs the augmented model (forward + relevance).

For each model: time ONNX Runtime on the original classifier and on the model converted by
``sglrp_onnx.convert`` (SGLRP, composite dtd unless --composite), same inputs, same session
options, and print the time ratio. Models:

- the bundled demo model (models/efficientnet_lite0.onnx, preset efficientnet-lite), always;
- torchvision resnet18, resnet50 and vgg16 (random weights: the time does not depend on them),
  exported with the TorchScript exporter at opset 17, when torch and torchvision are installed;
- with zennit installed, Zennit's time for the same torch model (EpsilonGammaBox, batch as given)
  is printed beside, as the usual PyTorch way of getting an LRP map.

    python tools/bench.py [--models efficientnet_lite0,resnet18,resnet50,vgg16] [--batch 1]
                          [--repeats 10] [--threads 0] [--composite dtd]

Numbers depend on the machine; the ratio is what to look at.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
TORCHVISION = ("resnet18", "resnet50", "vgg16")


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def session(path_or_bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path_or_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def export_torchvision(name: str, folder: Path):
    """(onnx path, torch model) for a torchvision classifier with random weights."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = folder / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        )
    return path, model


def zennit_time(model, x: np.ndarray, repeats: int) -> float | None:
    try:
        import torch
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonGammaBox
    except ImportError:
        return None
    low = torch.full((1, 3, 1, 1), -2.2)
    high = torch.full((1, 3, 1, 1), 2.7)
    composite = EpsilonGammaBox(low=low, high=high)
    data = torch.from_numpy(x)
    grad_out = torch.zeros(x.shape[0], 1000)
    grad_out[:, 0] = 1.0
    with Gradient(model=model, composite=composite) as attributor:
        return timed(lambda: attributor(data, grad_out), max(2, repeats // 3), warmup=1)


def bench_one(name: str, path: Path, preset: str, args, torch_model=None) -> dict:
    import sglrp_onnx

    started = time.perf_counter()
    augmented = sglrp_onnx.convert(str(path), preset=preset, composite=args.composite)
    convert_s = time.perf_counter() - started
    meta = {p.key: p.value for p in augmented.metadata_props}
    image = meta.get("sglrp_onnx.image_input", "image")
    target = meta.get("sglrp_onnx.target_input", "target")
    x = np.random.default_rng(0).normal(size=(args.batch, 3, 224, 224)).astype(np.float32)
    plain = session(str(path), args.threads)
    plain_name = plain.get_inputs()[0].name
    forward = timed(lambda: plain.run(None, {plain_name: x}), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        aug_path = Path(tmp) / "augmented.onnx"
        sglrp_onnx.save(augmented, aug_path, force=True)
        size_mb = aug_path.stat().st_size / 1e6
        aug = session(str(aug_path), args.threads)
        t = np.full(args.batch, -1, np.int64)
        explain = timed(lambda: aug.run(None, {image: x, target: t}), args.repeats)
    del augmented
    aug = plain = None  # noqa: F841 - idle ONNX Runtime thread pools would slow the torch timing down
    row = {
        "model": name,
        "convert_s": convert_s,
        "forward_s": forward,
        "sglrp_s": explain,
        "ratio": explain / forward,
        "size_mb": size_mb,
        "original_mb": os.path.getsize(path) / 1e6,
        "zennit_s": None,
    }
    if torch_model is not None and not args.no_zennit:
        row["zennit_s"] = zennit_time(torch_model, x, args.repeats)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="efficientnet_lite0," + ",".join(TORCHVISION),
                        help="comma-separated: efficientnet_lite0, resnet18, resnet50, vgg16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    parser.add_argument("--composite", default="dtd")
    parser.add_argument("--no-zennit", action="store_true", help="skip the Zennit timing")
    args = parser.parse_args()
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            try:
                if name == "efficientnet_lite0":
                    rows.append(bench_one(name, DEMO_MODEL, "efficientnet-lite", args))
                elif name in TORCHVISION:
                    try:
                        path, model = export_torchvision(name, Path(tmp))
                    except ImportError:
                        print(f"{name}: skipped (torch/torchvision not installed)", file=sys.stderr)
                        continue
                    rows.append(bench_one(name, path, "imagenet", args, model))
                else:
                    print(f"{name}: unknown model", file=sys.stderr)
                    continue
            except Exception as error:  # noqa: BLE001 - report and go on with the next model
                print(f"{name}: failed: {type(error).__name__}: {error}", file=sys.stderr)
                continue
            r = rows[-1]
            print(f"{name}: forward {r['forward_s'] * 1e3:.1f} ms, sglrp {r['sglrp_s'] * 1e3:.1f} ms, "
                  f"ratio {r['ratio']:.2f}", file=sys.stderr)

    print(f"\nCPU, batch {args.batch}, composite {args.composite}, median of {args.repeats} runs")
    header = f"{'model':<20s} {'forward ms':>11s} {'sglrp ms':>10s} {'ratio':>6s} {'zennit ms':>10s} {'convert s':>10s} {'MB in->out':>14s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        zennit = f"{r['zennit_s'] * 1e3:10.1f}" if r["zennit_s"] else f"{'-':>10s}"
        print(
            f"{r['model']:<20s} {r['forward_s'] * 1e3:11.1f} {r['sglrp_s'] * 1e3:10.1f} {r['ratio']:6.2f} "
            f"{zennit} {r['convert_s']:10.1f} {r['original_mb']:6.1f}->{r['size_mb']:<7.1f}"
        )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
