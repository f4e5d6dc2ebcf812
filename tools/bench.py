"""Benchmark: the forward pass alone vs the augmented model (forward + relevance), and Zennit.

For each model and each variant (``dtd-signed``: SGLRP signed contrast, composite dtd;
``dtd-scaled``: SGLRP scaled contrast, composite dtd; ``epsilon``: SGLRP signed, composite
epsilon) this measures, in one run with the same ONNX Runtime session options for every model:

- conversion time and conversion peak memory (a child process per conversion, ``ru_maxrss``),
  the original and the converted file size;
- session load time and session peak memory of the original and the converted model (a child
  process per model: load, one run at batch 1, ``ru_maxrss``);
- time per run of the forward model and of the augmented one at each batch size, in alternating
  blocks of runs (each block after an untimed run) so that a loaded machine slows both alike;
  min and median;
- Zennit's time for the same torch model and composite (dtd: ZBox on the first convolution,
  ZPlus on the other convolutions and the linear layers, Zennit's ResNet / VGG canonizers or
  merged BatchNorms for MobileNetV2), same threads, where torch and zennit are installed.

Models: torchvision ``resnet50``, ``vgg16``, ``mobilenet_v2`` (random weights, seed 0: the time
does not depend on them; TorchScript exporter, opset 17, dynamic batch) and the bundled
``efficientnet_lite0`` (no torch twin: no Zennit time); or any ONNX file with ``--model-file``.

    python tools/bench.py [--quick] [--device cpu|cuda] [--models resnet50,vgg16,...]
                          [--threads 2] [--repeats 10] [--json out.json] [--markdown out.md]

``--quick``: EfficientNet-Lite0 only, variant dtd-signed, batch 1, 3 repeats.
``--device cuda``: ONNX Runtime's CUDA provider (needs onnxruntime-gpu), batches 1, 32 and 64,
throughput (images/s) of the forward vs the augmented model; Zennit on the GPU where torch sees
one. Prints a markdown table (date, machine, versions) and writes JSON. Speed is never asserted:
numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_MODEL = ROOT / "models" / "efficientnet_lite0.onnx"
TORCHVISION = ("resnet50", "vgg16", "mobilenet_v2")
ALL_MODELS = ("resnet50", "vgg16", "efficientnet_lite0", "mobilenet_v2")
#: variant -> conversion options
VARIANTS = {
    "dtd-signed": {"method": "sglrp", "contrast": "signed", "composite": "dtd"},
    "dtd-scaled": {"method": "sglrp", "contrast": "scaled", "composite": "dtd"},
    "epsilon": {"method": "sglrp", "contrast": "signed", "composite": "epsilon"},
}
PRESETS = {"efficientnet_lite0": "efficientnet-lite"}


def peak_mb() -> float:
    """Peak resident memory of this process in MB: ``VmHWM`` on Linux (``ru_maxrss`` keeps the
    parent's peak across fork + exec, so a child started by a large parent would report that)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 * 1024)


def session(path: str, threads: int, device: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(path, sess_options=options, providers=providers)


def feeds_for(sess, batch: int, size: int) -> dict:
    """The image (normal noise, seed 0) and, for augmented models, target -1 (predicted class)."""
    feeds = {}
    for value in sess.get_inputs():
        if value.type == "tensor(int64)":
            feeds[value.name] = np.full(batch, -1, np.int64)
        else:
            shape = [batch] + [d if isinstance(d, int) else size for d in value.shape[1:]]
            feeds[value.name] = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return feeds


# ---------------------------------------------------------------------------- child processes


def worker_convert(source: str, target: str, options: dict) -> dict:
    import sglrp_onnx

    started = time.perf_counter()
    model = sglrp_onnx.convert(source, **options)
    sglrp_onnx.save(model, target, force=True)
    return {"convert_s": time.perf_counter() - started, "convert_peak_mb": peak_mb(), "size_mb": os.path.getsize(target) / 1e6}


def worker_load(path: str, threads: int, device: str, size: int) -> dict:
    base = peak_mb()
    started = time.perf_counter()
    sess = session(path, threads, device)
    load_s = time.perf_counter() - started
    sess.run(None, feeds_for(sess, 1, size))
    return {"load_s": load_s, "session_peak_mb": peak_mb(), "process_base_mb": base}


def in_child(kind: str, payload: dict) -> dict:
    """Run one measurement in a fresh Python process (its peak memory is its own)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(payload)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- models


def export_torchvision(name: str, folder: Path, size: int) -> Path:
    """Export a torchvision classifier (random weights, seed 0) with the TorchScript exporter."""
    import torch

    model = torch_model(name)
    path = folder / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return path


def torch_model(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def zennit_dtd(name: str, low, high):
    """Zennit's composite matching the engine's dtd: ZBox on the first convolution, ZPlus on the
    other convolutions and linear layers, with the canonizer for the architecture."""
    import torch
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import ZBox, ZPlus
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution

    canonizer = {"resnet50": ResNetCanonizer, "vgg16": VGGCanonizer}.get(name, SequentialMergeBatchNorm)()
    layer_map = layer_map_base() + [(Convolution, ZPlus()), (torch.nn.Linear, ZPlus())]
    first = [(Convolution, ZBox(low=low, high=high))]
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first, canonizers=[canonizer])


def zennit_times(name: str, batches, repeats: int, threads: int, device: str, size: int) -> dict:
    """Seconds per attribution with Zennit (min over ``repeats``) per batch size, or {} without it."""
    try:
        import torch
        from zennit.attribution import Gradient
    except ImportError:
        return {}
    from sglrp_onnx.presets import get_preset

    if threads:
        torch.set_num_threads(threads)
    preset = get_preset("imagenet")
    dev = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
    low = torch.tensor(preset.low, dtype=torch.float32).reshape(1, 3, 1, 1).to(dev)
    high = torch.tensor(preset.high, dtype=torch.float32).reshape(1, 3, 1, 1).to(dev)
    model = torch_model(name).to(dev)
    result = {}
    with Gradient(model=model, composite=zennit_dtd(name, low, high)) as attributor:
        for batch in batches:
            x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)).to(dev)
            grad = torch.zeros(batch, 1000, device=dev)
            grad[:, 0] = 1.0
            attributor(x, grad)
            times = []
            for _ in range(max(2, repeats // 2)):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                attributor(x, grad)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            result[batch] = min(times)
    return result


# ---------------------------------------------------------------------------- timing


def alternating_blocks(sessions: list, feeds: list, repeats: int, block: int = 3) -> list[list[float]]:
    """Seconds per run of each session: the sessions take turns in blocks of ``block`` timed runs,
    ``repeats`` runs each in all, so that a loaded machine slows both alike. Each block starts
    with an untimed run: right after another session has run, that session's ONNX Runtime pool
    threads still spin and its tensors fill the caches, which slowed the first run after a switch
    by up to 2x for the forward models here (MobileNetV2 at batch 8: 49 ms taking turns run by
    run vs 25 ms in blocks); a deployed model does not share its process with another."""
    times = [[] for _ in sessions]
    while len(times[0]) < repeats:
        for k, (sess, feed) in enumerate(zip(sessions, feeds)):
            sess.run(None, feed)
            for _ in range(min(block, repeats - len(times[k]))):
                started = time.perf_counter()
                sess.run(None, feed)
                times[k].append(time.perf_counter() - started)
    return times


def bench_model(name: str, source: Path, args, folder: Path) -> dict:
    preset = args.preset or PRESETS.get(name, "imagenet")
    row = {"model": name, "original_mb": source.stat().st_size / 1e6, "variants": {}}
    row["forward_memory"] = in_child("load", {"path": str(source), "threads": args.threads, "device": args.device, "size": args.size})
    forward = session(str(source), args.threads, args.device)
    for variant in args.variants:
        target = folder / f"{name}.{variant}.onnx"
        options = {**VARIANTS[variant], "preset": preset}
        entry = in_child("convert", {"source": str(source), "target": str(target), "options": options})
        entry.update(in_child("load", {"path": str(target), "threads": args.threads, "device": args.device, "size": args.size}))
        augmented = session(str(target), args.threads, args.device)
        entry["batches"] = {}
        for batch in args.batches:
            runs = alternating_blocks([forward, augmented], [feeds_for(forward, batch, args.size), feeds_for(augmented, batch, args.size)], args.repeats)
            fwd, aug = min(runs[0]), min(runs[1])
            entry["batches"][batch] = {
                "forward_s": fwd, "augmented_s": aug, "ratio": aug / fwd,
                "forward_median_s": statistics.median(runs[0]), "augmented_median_s": statistics.median(runs[1]),
                "forward_per_s": batch / fwd, "augmented_per_s": batch / aug,
            }
        augmented = None
        target.unlink()
        row["variants"][variant] = entry
        print(f"{name} {variant}: " + ", ".join(f"batch {b}: {e['augmented_s'] * 1e3:.0f} ms vs {e['forward_s'] * 1e3:.0f} ms ({e['ratio']:.2f}x)"
                                            for b, e in entry["batches"].items()), file=sys.stderr)
    forward = None  # idle ONNX Runtime thread pools would slow the torch timing down
    row["zennit_s"] = {}
    if name in TORCHVISION and not args.no_zennit:
        row["zennit_s"] = zennit_times(name, args.batches, args.repeats, args.threads, args.device, args.size)
    return row


# ---------------------------------------------------------------------------- report


def machine() -> dict:
    import onnxruntime

    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["load_average"] = [round(v, 1) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def markdown(report: dict) -> str:
    m, a = report["machine"], report["settings"]
    lines = [
        f"Measured {m['date']} on {m.get('cpu', '?')} ({m['cpus']} CPUs), {m['platform']}; ONNX Runtime {m['onnxruntime']}"
        + (f", torch {m['torch']}" if "torch" in m else "") + f"; device {a['device']}, {a['threads'] or 'default'} intra-op threads, "
        f"min of {a['repeats']} runs in alternating blocks of 3 (each after an untimed run); load average at the start {m.get('load_average', '?')}.",
        "",
    ]
    per_s = a["device"] == "cuda"
    unit = "images/s" if per_s else "ms"
    lines.append(f"| model | variant | batch | forward {unit} | augmented {unit} | ratio | Zennit {unit} | Zennit / augmented |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in report["models"]:
        for variant, entry in row["variants"].items():
            for batch, t in entry["batches"].items():
                zennit = row["zennit_s"].get(batch) if variant == "dtd-signed" else None
                fwd = t["forward_per_s"] if per_s else t["forward_s"] * 1e3
                aug = t["augmented_per_s"] if per_s else t["augmented_s"] * 1e3
                z = "-" if zennit is None else (f"{int(batch) / zennit:.1f}" if per_s else f"{zennit * 1e3:.0f}")
                zr = "-" if zennit is None else f"{zennit / t['augmented_s']:.1f}"
                lines.append(f"| {row['model']} | {variant} | {batch} | {fwd:.1f} | {aug:.1f} | {t['ratio']:.2f} | {z} | {zr} |")
    lines += ["", "| model | variant | file MB (original) | file MB (converted) | conversion s | conversion peak MB | "
              "session load s (original / converted) | session peak MB (original / converted) |", "|---|---|---|---|---|---|---|---|"]
    for row in report["models"]:
        f = row["forward_memory"]
        for variant, e in row["variants"].items():
            lines.append(f"| {row['model']} | {variant} | {row['original_mb']:.1f} | {e['size_mb']:.1f} | {e['convert_s']:.1f} | "
                         f"{e['convert_peak_mb']:.0f} | {f['load_s']:.2f} / {e['load_s']:.2f} | {f['session_peak_mb']:.0f} / {e['session_peak_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(ALL_MODELS)} (default: all; --quick: efficientnet_lite0)")
    parser.add_argument("--model-file", default=None, help="benchmark this ONNX file instead (a float image input, NCHW)")
    parser.add_argument("--preset", default=None, help="preprocessing preset of --model-file (default imagenet)")
    parser.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; --quick: dtd-signed)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8; cuda: 1,32,64; --quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per batch (default 10; --quick: 3)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads and torch threads (0: library default)")
    parser.add_argument("--size", type=int, default=224, help="image height and width where the model's are dynamic")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="one model, one variant, batch 1, 3 repeats")
    parser.add_argument("--no-zennit", action="store_true", help="skip the Zennit timing")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    parser.add_argument("--markdown", default=None, help="write the markdown table here")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default_batches = "1" if args.quick else ("1,32,64" if args.device == "cuda" else "1,8")
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.variants = [v.strip() for v in (args.variants or ("dtd-signed" if args.quick else ",".join(VARIANTS))).split(",")]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    args.models = [m.strip() for m in (args.models or ("efficientnet_lite0" if args.quick else ",".join(ALL_MODELS))).split(",") if m.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        kind, payload = args.worker[0], json.loads(args.worker[1])
        print(json.dumps(worker_convert(**payload) if kind == "convert" else worker_load(**payload)))
        return 0
    if args.device == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            print("--device cuda needs onnxruntime-gpu with a CUDA device (CUDAExecutionProvider is not available)", file=sys.stderr)
            return 2
    report = {"machine": machine(), "settings": {k: getattr(args, k) for k in ("device", "threads", "repeats", "batches", "variants", "size")},
              "models": []}
    return measure_models(args, report, bench_model, markdown)


def measure_models(args, report: dict, measure, to_markdown) -> int:
    """``measure(name, source, args, folder)`` for each model (``--model-file``, the bundled
    EfficientNet-Lite0, or a torchvision export, one on disk at a time), appended to
    ``report["models"]``; then the markdown table printed and the report written where asked."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in [Path(args.model_file).stem] if args.model_file else args.models:
            if args.model_file:
                source = Path(args.model_file)
            elif name == "efficientnet_lite0":
                source = DEMO_MODEL
            elif name in TORCHVISION:
                try:
                    source = export_torchvision(name, folder, args.size)  # one export on disk at a time
                except ImportError:
                    print(f"{name}: skipped (torch/torchvision not installed)", file=sys.stderr)
                    continue
            else:
                print(f"{name}: unknown model (known: {', '.join(ALL_MODELS)})", file=sys.stderr)
                continue
            try:
                report["models"].append(measure(name, source, args, folder))
            except Exception as error:  # noqa: BLE001 - report and go on with the next model
                print(f"{name}: failed: {type(error).__name__}: {error}", file=sys.stderr)
            if source.parent == folder:
                source.unlink()
    table = to_markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0 if report["models"] else 1


if __name__ == "__main__":
    sys.exit(main())
