"""GPU check of an augmented model on ONNX Runtime's CUDA provider (run by tools/gpu_check.sh).

Given a plain classifier (ResNet-50 by default in gpu_check.sh), this script

1. converts it (SGLRP, composite dtd, preset imagenet) and saves the augmented model;
2. checks that the CUDA provider is really used: the session's first provider is CUDA, and an ONNX
   Runtime profile of one run shows on which provider each node ran (the Conv/ConvTranspose/Gemm
   work must be on CUDA; ONNX Runtime keeps small shape computations on the CPU on purpose);
3. checks that the relevance on CUDA equals the CPU result within tolerance (TF32 off for this
   comparison): same explained classes, logits close, relative L2 error of the relevance small;
4. prints forward vs SGLRP throughput (images/s, IO binding, default CUDA settings) at batch 1, 32
   and 64.

Exit status 0 when every check passes, 1 otherwise. ``--allow-cpu`` runs everything on a machine
without a GPU (the CUDA checks are then reported as skipped), to test the script itself.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
HEAVY_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}


def log(message: str) -> None:
    print(message, flush=True)


def photos(n: int, size: int = 224) -> np.ndarray:
    """n photos (scikit-image's where available, else smooth random images), uint8 [n, H, W, 3]."""
    from sglrp_onnx.presets import fit_image

    images = []
    try:
        from skimage import data

        for name in ("chelsea", "coffee", "astronaut", "rocket"):
            images.append(fit_image(getattr(data, name)(), size))
    except Exception:  # noqa: BLE001 - scikit-image is optional here
        pass
    rng = np.random.default_rng(0)
    while len(images) < n:
        low = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        from PIL import Image

        images.append(np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)))
    return np.stack(images[:n])


def cuda_providers(tf32: bool | None):
    if tf32 is None:
        return [CUDA, CPU]
    return [(CUDA, {"use_tf32": "1" if tf32 else "0"}), CPU]


def profile_providers(model_path: str, feeds: dict, providers, work: Path) -> dict[str, dict[str, int]]:
    """{provider: {op_type: count}} of the nodes of one profiled run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "ort_profile")
    session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
    session.run(None, feeds)
    profile = session.end_profiling()
    counts: dict[str, dict[str, int]] = {}
    with open(profile) as handle:
        events = json.load(handle)
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or "provider" not in args or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = args.get("op_name", "?")
        counts.setdefault(args["provider"], {}).setdefault(op, 0)
        counts[args["provider"]][op] += 1
    for leftover in glob.glob(str(work / "ort_profile*.json")):
        os.unlink(leftover)
    return counts


def throughput(run, repeats: int, batch: int) -> float:
    run()  # warm-up (CUDA kernels, memory arena)
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="plain ONNX classifier (NCHW 224x224, ImageNet preprocessing)")
    parser.add_argument("--work", default=".", help="folder for the augmented model")
    parser.add_argument("--preset", default="imagenet")
    parser.add_argument("--batches", default="1,32,64")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rel-l2", type=float, default=1e-3, help="largest relative L2 error CUDA vs CPU")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (testing the script)")
    args = parser.parse_args()

    import onnxruntime as ort

    import sglrp_onnx
    from sglrp_onnx.presets import get_preset
    from sglrp_onnx.runtime import Explainer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    log(f"onnxruntime {ort.__version__}, device {ort.get_device()}, providers {ort.get_available_providers()}")
    has_cuda = CUDA in ort.get_available_providers()
    if not has_cuda and not args.allow_cpu:
        log("FAIL: this onnxruntime has no CUDA provider (install onnxruntime-gpu, and not onnxruntime beside it)")
        return 1

    started = time.perf_counter()
    augmented = sglrp_onnx.convert(args.model, preset=args.preset)
    aug_path = work / (Path(args.model).stem + ".sglrp.onnx")
    sglrp_onnx.save(augmented, aug_path, force=True)
    log(f"converted {args.model} -> {aug_path} in {time.perf_counter() - started:.1f} s")
    del augmented

    preset = get_preset(args.preset)
    pixels = photos(4)
    x = preset.normalize(pixels, "NCHW")
    targets = np.array([-1, 0, 285, 967], np.int64)

    cpu = Explainer(aug_path, "cpu")
    reference = cpu.explain(x, targets)

    if has_cuda:
        # 1. the CUDA provider is used
        try:
            gpu = Explainer(aug_path, cuda_providers(tf32=False))
        except Exception as error:  # noqa: BLE001 - older builds without use_tf32
            log(f"note: CUDA session with use_tf32=0 failed ({error}); using defaults")
            gpu = Explainer(aug_path, "cuda")
        log(f"Explainer provider: {gpu.provider}; session providers: {gpu.session.get_providers()}")
        if gpu.provider != CUDA:
            failures.append(f"the Explainer runs on {gpu.provider}, not CUDA")
        auto = Explainer(aug_path)
        log(f"automatic provider choice: {auto.provider}")
        if auto.provider != CUDA:
            failures.append(f"automatic provider choice gave {auto.provider}")
        counts = profile_providers(
            str(aug_path), {gpu.image_input: x, gpu.target_input: targets}, gpu.session.get_providers(), work
        )
        for provider, ops in sorted(counts.items()):
            total = sum(ops.values())
            top = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])[:12])
            log(f"profile: {total} node runs on {provider}: {top}")
        heavy_cpu = {op: n for op, n in counts.get(CPU, {}).items() if op in HEAVY_OPS}
        heavy_cuda = sum(n for op, n in counts.get(CUDA, {}).items() if op in HEAVY_OPS)
        if heavy_cpu or not heavy_cuda:
            failures.append(f"heavy operators not on CUDA: {heavy_cpu or 'no heavy op ran on CUDA'}")
        other_cpu = sorted(op for op in counts.get(CPU, {}) if op not in HEAVY_OPS)
        if other_cpu:
            log(f"note: on the CPU (ONNX Runtime's placement, usually shape work): {', '.join(other_cpu)}")

        # 2. CUDA result == CPU result
        result = gpu.explain(x, targets)
        same_class = np.array_equal(result.explained_class, reference.explained_class)
        logit_err = float(np.abs(result.logits - reference.logits).max() / max(np.abs(reference.logits).max(), 1e-30))
        diff = result.relevance.astype(np.float64) - reference.relevance.astype(np.float64)
        for i in range(len(targets)):
            ref = reference.relevance[i].astype(np.float64)
            rel_l2 = float(np.linalg.norm(diff[i]) / max(np.linalg.norm(ref), 1e-30))
            beyond = float(np.mean(np.abs(diff[i]) > 1e-3 * np.abs(ref).max()))
            log(
                f"image {i} target {targets[i]:4d}: class {result.explained_class[i]} (CPU {reference.explained_class[i]}), "
                f"relative L2 error {rel_l2:.2e}, share of values off by > 1e-3 max: {beyond:.2%}"
            )
            if rel_l2 > args.rel_l2:
                failures.append(f"image {i}: relative L2 error {rel_l2:.2e} > {args.rel_l2:.0e}")
        log(f"explained classes equal: {same_class}; largest logit difference (relative): {logit_err:.2e}")
        if not same_class:
            failures.append("explained classes differ between CUDA and CPU")
        if logit_err > 1e-3:
            failures.append(f"logits differ by {logit_err:.2e}")
        if not np.isfinite(result.relevance).all():
            failures.append("non-finite relevance on CUDA")
        del gpu, auto
        bench = Explainer(aug_path, "cuda")  # default CUDA settings for the timing
        forward_session = ort.InferenceSession(args.model, providers=[CUDA, CPU])
    else:
        log("SKIPPED: CUDA checks (no CUDA provider; --allow-cpu)")
        bench = cpu
        forward_session = ort.InferenceSession(args.model, providers=[CPU])

    # 3. throughput
    image_name = forward_session.get_inputs()[0].name
    output_names = [o.name for o in forward_session.get_outputs()]
    log(f"\nthroughput on {bench.provider} (median of {args.repeats}; images/s, inputs from host memory):")
    log(f"{'batch':>5s} {'forward':>10s} {'SGLRP':>10s} {'ratio':>6s}")
    for batch in (int(b) for b in args.batches.split(",")):
        xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
        tb = np.full(batch, -1, np.int64)

        def forward():
            binding = forward_session.io_binding()
            binding.bind_cpu_input(image_name, xb)
            for name in output_names:
                binding.bind_output(name, "cpu")
            forward_session.run_with_iobinding(binding)
            binding.copy_outputs_to_cpu()

        try:
            f = throughput(forward, args.repeats, batch)
            s = throughput(lambda: bench.explain(xb, tb), args.repeats, batch)
        except Exception as error:  # noqa: BLE001 - e.g. out of GPU memory at a large batch
            log(f"{batch:5d} failed: {type(error).__name__}: {str(error)[:200]}")
            failures.append(f"batch {batch} failed")
            continue
        log(f"{batch:5d} {f:10.1f} {s:10.1f} {f / s:6.2f}")

    if failures:
        log("\nFAIL:\n  " + "\n  ".join(failures))
        return 1
    log("\nOK: all checks passed" + ("" if has_cuda else " (CUDA checks skipped)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
