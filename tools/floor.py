"""Where the augmented model's time goes, kernel by kernel, and the floor the rules leave.

For each model, variant and batch size this profiles (ONNX Runtime's own profiler, the same
session options as ``tools/bench.py``) the forward model alone and the augmented model, takes the
fastest of a few profiled runs of each, and sorts the augmented model's kernel times:

- ``forward``: the forward's own nodes (their names carry no ``sglrp/``);
- ``linear maps``: the relevance part's Conv, ConvTranspose, Gemm and MatMul kernels, the
  modified forwards of the rules (z+'s ``W+`` convolution) and the transposes;
- ``divisions``: its ``Div`` kernels, one quotient ``R / stab(z)`` per layer;
- ``products``: its ``Mul`` kernels;
- ``pooling``: the max-pooling backward (MaxPool with Indices, ScatterElements, its zeros);
- ``layout``: ONNX Runtime's NCHWc conversions (``ReorderInput`` / ``ReorderOutput``) beyond
  those of the forward model alone;
- ``other``: the rest (stabilisers, additions, shape work).

The relevance part's wall-clock time (augmented - forward, less what the forward's own kernels
lose inside the augmented model) is split by each category's share of its kernel time. Two lower
bounds for ``augmented / forward`` follow: the forward plus the ``linear maps``, what the rules'
convolutions and matrix products alone cost on this runtime's kernels, and plus the
``divisions``, the one quotient per layer that every rule needs (a relevance quotient has no form
without a division, and ONNX Runtime's blocked layout has none). Both leave out the products
``R = a * c`` (one per layer too), the pooling backward and every layout conversion, so the real
floor is higher; profiling inflates small kernels more than the large convolutions, which lowers
the linear maps' share and the bounds with it.

    python tools/floor.py [--models resnet50,vgg16,efficientnet_lite0,mobilenet_v2]
                          [--variants dtd-signed,epsilon] [--batches 1,8] [--threads 2]
                          [--runs 3] [--json out.json] [--markdown out.md]

Ratios move by a few percent between runs; the machine should be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (tools/bench.py: models, sessions, feeds, machine)

#: The speed goals of issue 11 (augmented / forward, CPU, 2 threads), by variant and model.
GOALS = {
    "dtd-signed": {"resnet50": 3.6, "vgg16": 3.2, "efficientnet_lite0": 5.0, "mobilenet_v2": 5.0},
    "epsilon": {"resnet50": 2.3, "vgg16": 2.3},
}
CATEGORIES = ("forward", "linear maps", "divisions", "products", "pooling", "layout", "other")
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "Einsum")
POOLING_OPS = ("MaxPool", "ScatterElements", "ConstantOfShape", "MaxUnpool")
LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


def category(node_name: str, op_type: str) -> str:
    """Which part of the augmented model a profiled kernel belongs to (module doc)."""
    if op_type in LAYOUT_OPS:
        return "layout"
    if "sglrp/" not in node_name:
        return "forward"
    if op_type in LINEAR_OPS:
        return "linear maps"
    if op_type == "Div":
        return "divisions"
    if op_type == "Mul":
        return "products"
    if op_type in POOLING_OPS:
        return "pooling"
    return "other"


def fastest_run(events: list) -> list:
    """The kernel events of the fastest profiled ``model_run`` (by its own duration)."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["dur"])
    if not runs:
        raise ValueError("the profile holds no model_run")
    best = runs[0]
    begin, end = best["ts"], best["ts"] + best["dur"]
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and begin <= e["ts"] <= end]


def breakdown(kernels: list) -> dict:
    """Milliseconds per category (module doc) of one run's kernel events."""
    times = dict.fromkeys(CATEGORIES, 0.0)
    for event in kernels:
        name = event["name"][: -len("_kernel_time")]
        times[category(name, event["args"].get("op_name", ""))] += event["dur"] / 1e3
    return times


def profiled_kernels(path: str, batch: int, threads: int, size: int, runs: int) -> list:
    """Kernel events of the fastest of ``runs`` profiled runs (after one untimed run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        sess = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        feeds = bench.feeds_for(sess, batch, size)
        for _ in range(runs + 1):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    first_run = min((e["ts"] for e in events if e.get("name") == "model_run"), default=0)
    return fastest_run([e for e in events if e.get("name") != "model_run" or e["ts"] > first_run])


def bounds(forward_s: float, augmented_s: float, parts: dict, forward_parts: dict) -> dict:
    """The ratio and the two floors (module doc) from wall-clock times and one profiled run of
    each model (``parts``: the augmented model's, ``forward_parts``: the forward model's).

    The profile gives each category's share of the relevance part's kernel time; the floors
    apply those shares to the relevance part's wall-clock time: ``augmented - forward``, less
    the extra time of the forward's own kernels in the augmented model (fusions the relevance
    part undoes, tensors kept alive for it). Profiling inflates small kernels more than large
    ones, so the shares of the convolutions (large kernels) come out low, and the floors with
    them: they are lower bounds."""
    relevance = {k: v for k, v in parts.items() if k != "forward"}
    relevance["layout"] = max(0.0, relevance["layout"] - forward_parts["layout"])
    total = sum(relevance.values())
    shares = {k: v / total for k, v in relevance.items()}
    forward_kernels = parts["forward"] / forward_parts["forward"]
    ratio = augmented_s / forward_s
    relevance_ratio = max(0.0, ratio - max(1.0, forward_kernels))  # the relevance part's time / forward
    return {
        "forward_s": forward_s, "augmented_s": augmented_s, "ratio": ratio, "shares": shares,
        "forward_kernels_ratio": forward_kernels,
        "floor_linear": 1 + shares["linear maps"] * relevance_ratio,
        "floor_divisions": 1 + (shares["linear maps"] + shares["divisions"]) * relevance_ratio,
    }


def measure(name: str, source: Path, args, folder: Path) -> dict:
    preset = args.preset or bench.PRESETS.get(name, "imagenet")
    forward_parts = {b: breakdown(profiled_kernels(str(source), b, args.threads, args.size, args.runs)) for b in args.batches}
    row = {"model": name, "variants": {}}
    for variant in args.variants:
        target = folder / f"{name}.{variant}.onnx"
        bench.in_child("convert", {"source": str(source), "target": str(target), "options": {**bench.VARIANTS[variant], "preset": preset}})
        row["variants"][variant] = {}
        forward, augmented = (bench.session(str(p), args.threads, "cpu") for p in (source, target))
        for batch in args.batches:
            feeds = [bench.feeds_for(forward, batch, args.size), bench.feeds_for(augmented, batch, args.size)]
            wall = bench.alternating_blocks([forward, augmented], feeds, args.repeats)
            parts = breakdown(profiled_kernels(str(target), batch, args.threads, args.size, args.runs))
            entry = {"parts_ms": parts, **bounds(min(wall[0]), min(wall[1]), parts, forward_parts[batch])}
            entry["goal"] = GOALS.get(variant, {}).get(name)
            row["variants"][variant][batch] = entry
            print(f"{name} {variant} batch {batch}: {entry['ratio']:.2f}x, floors {entry['floor_linear']:.2f}x / "
                  f"{entry['floor_divisions']:.2f}x, goal {entry['goal']}", file=sys.stderr)
        forward = augmented = None
        target.unlink()
    return row


def markdown(report: dict) -> str:
    m, a = report["machine"], report["settings"]
    lines = [
        f"Measured {m['date']} on {m.get('cpu', '?')} ({m['cpus']} CPUs); ONNX Runtime {m['onnxruntime']}; {a['threads']} intra-op "
        f"threads; wall-clock times: min of {a['repeats']} runs in alternating blocks; shares of the relevance part's kernel time: "
        f"fastest of {a['runs']} profiled runs.",
        "",
        "| model | variant | batch | forward ms | augmented ms | ratio | linear maps | divisions | products | pooling | layout | other "
        "| floor: linear maps | floor: + divisions | goal | forward's kernels in the augmented model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["models"]:
        for variant, batches in row["variants"].items():
            for batch, e in batches.items():
                share = " | ".join(f"{100 * e['shares'][k]:.0f}%" for k in CATEGORIES[1:])
                goal = "-" if e["goal"] is None else f"{e['goal']:.1f}"
                lines.append(f"| {row['model']} | {variant} | {batch} | {e['forward_s'] * 1e3:.1f} | {e['augmented_s'] * 1e3:.1f} | "
                             f"{e['ratio']:.2f} | {share} | {e['floor_linear']:.2f} | {e['floor_divisions']:.2f} | {goal} | "
                             f"{e['forward_kernels_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(bench.ALL_MODELS), help="comma-separated, of " + ", ".join(bench.ALL_MODELS))
    parser.add_argument("--model-file", default=None, help="profile this ONNX file instead (a float image input, NCHW)")
    parser.add_argument("--preset", default=None, help="preprocessing preset of --model-file (default imagenet)")
    parser.add_argument("--variants", default="dtd-signed,epsilon", help="comma-separated, of " + ", ".join(bench.VARIANTS))
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (0: library default)")
    parser.add_argument("--size", type=int, default=224, help="image height and width where the model's are dynamic")
    parser.add_argument("--runs", type=int, default=3, help="profiled runs per model and batch (the fastest counts)")
    parser.add_argument("--repeats", type=int, default=6, help="timed (unprofiled) runs per model and batch")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    parser.add_argument("--markdown", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in bench.VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(bench.VARIANTS)}")
    args.batches = [int(b) for b in args.batches.split(",") if b]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = {"machine": bench.machine(), "settings": {"threads": args.threads, "runs": args.runs, "repeats": args.repeats, "size": args.size},
              "models": []}
    return bench.measure_models(args, report, measure, markdown)


if __name__ == "__main__":
    sys.exit(main())
