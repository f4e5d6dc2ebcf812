"""GPU check: does the augmented model run wholly on ONNX Runtime's CUDA provider, give the CPU's
relevance, and how fast? One command, offline, from an onnxruntime-gpu wheel file:

    tools/gpu_check.sh onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_27_x86_64.whl [--out DIR]

Steps (each printed as it runs; a markdown table at the end and DIR/gpu_check.json):

1. the machine: GPU and driver (``nvidia-smi``), the CUDA version the driver supports, cuDNN;
2. the wheel: installed with ``pip install --no-deps --target DIR/onnxruntime-gpu WHEEL``; the checks
   run in a child process whose import path starts with that folder, so ``import onnxruntime``
   is the GPU build (the child checks ``onnxruntime.__file__``); the CPU ``onnxruntime`` of this
   environment is never imported there. The wheel's CUDA version (its ``capi/version_info.py``,
   else its release: 1.27 and later are CUDA 13 builds) is checked against the driver (CUDA 13
   needs driver >= 580, CUDA 12 >= 525) and cuDNN 9;
3. the models: the bundled EfficientNet-Lite0 (real weights) and ResNet-50 (``--resnet50 FILE``,
   else exported here with torch: torchvision's, with its pretrained weights where torch's hub
   cache has them, random weights otherwise, and the same architecture built here where
   torchvision is missing; the output says which), converted with SGLRP;
4. per model: ``onnxruntime.preload_dlls()``; the placement from a profiled CUDA run (no float
   computation on the CPU, no float host/device copies: SPEC section 8); CUDA vs CPU (the CPU
   provider of the same wheel) with TF32 off: same explained classes, relative L2 error of each
   relevance map <= 1e-3; deterministic mode run twice (bit-identical or not, reported); forward vs
   augmented throughput at batch 1, 32, 64 on CUDA (IO binding), and on TensorRT where the wheel's
   TensorRT provider is usable.

Exit status 0 when every check passes, 1 when one fails, 2 for bad arguments. ``--cpu-only`` runs
the same pipeline with the CPU provider and the installed onnxruntime (no wheel, no driver) on
small batches: it tests this script on machines without a GPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
#: Oldest driver per CUDA major version (NVIDIA's CUDA release notes, minor version compatibility).
MIN_DRIVER = {12: 525, 13: 580}
REL_L2_LIMIT = 1e-3
#: Modules the checks import besides onnxruntime (this project's requirements); torch/torchvision
#: only where ResNet-50 is exported here.
REQUIRED_MODULES = ("numpy", "onnx", "PIL", "onnxslim", "yaml", "tqdm")
#: Seconds the whole check may take; TensorRT (engine builds take minutes) is skipped when less
#: than TENSORRT_SECONDS remain.
BUDGET_SECONDS = 280
TENSORRT_SECONDS = 120
DEFAULT_MODELS = {
    "efficientnet-lite0": (ROOT / "models" / "efficientnet_lite0.onnx", "efficientnet-lite"),
    "resnet50": (None, "imagenet"),
}


def log(message: str = "") -> None:
    print(message, flush=True)


# -- requirements (plain functions: tested on the CPU) --------------------------------------------------


def wheel_version(path: str) -> tuple[int, ...] | None:
    """The release of an onnxruntime-gpu wheel from its file name (PEP 427: name-version-...)."""
    match = re.match(r"onnxruntime_gpu-(\d+(?:\.\d+)*)", Path(path).name)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def cuda_major_of_release(version: tuple[int, ...] | None) -> int | None:
    """The CUDA major version PyPI's onnxruntime-gpu release is built for (1.19-1.26: 12; 1.27+: 13)."""
    if not version:
        return None
    if version[:2] >= (1, 27):
        return 13
    if version[:2] >= (1, 19):
        return 12
    return 11


def cuda_version_of_install(folder: Path) -> str | None:
    """``cuda_version`` from an installed onnxruntime(-gpu)'s ``capi/version_info.py``."""
    info = folder / "onnxruntime" / "capi" / "version_info.py"
    if not info.is_file():
        return None
    match = re.search(r"cuda_version\s*=\s*['\"]([^'\"]*)['\"]", info.read_text(encoding="utf-8", errors="replace"))
    return match.group(1) if match and match.group(1) else None


def parse_nvidia_smi(query: str, banner: str) -> dict:
    """GPU name, driver version and the CUDA version the driver supports, from ``nvidia-smi`` output."""
    first = (query or "").strip().splitlines()[0] if (query or "").strip() else ""
    parts = [p.strip() for p in first.split(",")]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner or "")
    driver = tuple(int(p) for p in parts[1].split(".")) if len(parts) > 1 and re.match(r"^\d+(\.\d+)*$", parts[1]) else None
    return {"gpu": parts[0] if parts and parts[0] else None, "driver": driver,
            "memory": parts[2] if len(parts) > 2 else None, "driver_cuda": cuda.group(1) if cuda else None}


def requirement_problems(cuda_version: str | None, driver: tuple[int, ...] | None, driver_cuda: str | None,
                         cudnn_major: int | None) -> list[str]:
    """What stops the wheel's CUDA build from running here ([] if nothing)."""
    problems = []
    if driver is None:
        return ["no NVIDIA driver found (nvidia-smi missing or failing)"]
    try:
        major = int(str(cuda_version).split(".")[0])
    except (TypeError, ValueError):
        return problems + [f"cannot tell which CUDA the wheel needs ({cuda_version!r})"]
    needed = MIN_DRIVER.get(major)
    if needed and driver[0] < needed:
        problems.append(f"the wheel is built for CUDA {cuda_version}, which needs driver >= {needed}; "
                        f"this machine has {'.'.join(map(str, driver))}")
    if driver_cuda:
        try:
            if int(driver_cuda.split(".")[0]) < major:
                problems.append(f"the driver supports CUDA up to {driver_cuda}; the wheel needs CUDA {cuda_version}")
        except ValueError:
            pass
    if cudnn_major is not None and cudnn_major != 9:
        problems.append(f"cuDNN {cudnn_major} found; onnxruntime-gpu needs cuDNN 9")
    return problems


def cudnn_major() -> int | None:
    """cuDNN's major version from the pip packages (nvidia-cudnn-cu13 / -cu12), else None."""
    from importlib import metadata

    for name in ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", "nvidia-cudnn"):
        try:
            return int(metadata.version(name).split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


def missing_modules(names) -> list[str]:
    """The modules of ``names`` that cannot be imported here."""
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


def run_command(command: list[str], timeout: int = 60) -> tuple[int, str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 1, str(error)
    return done.returncode, done.stdout + done.stderr


# -- the parent: machine, wheel, models -----------------------------------------------------------------


def resnet50_module():
    """(ResNet-50 in eval mode, where its weights came from). torchvision's model with its
    pretrained weights where they are in torch's hub cache (no download is tried: the check runs
    offline); torchvision's with random weights otherwise; without torchvision, the same
    architecture written here (He et al. 2016, torchvision's v1.5 layout: stride in the 3x3 conv)."""
    import glob

    import torch

    torch.manual_seed(0)
    try:
        import torchvision
    except ImportError:
        return _plain_resnet50().eval(), "RANDOM weights, architecture built without torchvision"
    cached = glob.glob(os.path.join(torch.hub.get_dir(), "checkpoints", "resnet50-*.pth"))
    if cached:
        model = torchvision.models.resnet50()
        model.load_state_dict(torch.load(cached[0], map_location="cpu"))
        return model.eval(), f"pretrained ImageNet weights ({os.path.basename(cached[0])})"
    return torchvision.models.resnet50(weights=None).eval(), "RANDOM weights (no pretrained weights in torch's hub cache)"


def _plain_resnet50():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            width, out = planes, planes * 4
            self.body = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out),
            )
            self.skip = (nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                         if stride != 1 or inplanes != out else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    layers, inplanes = [], 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
            inplanes = planes * 4
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000),
    )


def export_resnet50(path: Path) -> str:
    """ResNet-50 exported with this machine's torch (TorchScript exporter, opset 17, dynamic batch);
    returns where the weights came from."""
    import torch

    model, weights = resnet50_module()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return weights


def install_deps(args) -> list[str]:
    """Install the wheels of ``--deps DIR`` (offline, --no-deps) into the work folder; check that the
    modules the checks need can be imported. Returns the failures."""
    if args.deps:
        target = Path(args.out) / "deps"
        wheels = sorted(str(p) for p in Path(args.deps).glob("*.whl"))
        code, output = run_command([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                                    "--target", str(target), *wheels], timeout=300)
        if code != 0:
            return [f"pip could not install the wheels of {args.deps}: {output.strip()[-500:]}"]
        sys.path.insert(0, str(target))
        args.deps_path = str(target)
    needed = list(REQUIRED_MODULES)
    if not args.model and not args.resnet50:
        needed += ["torch"]
    missing = missing_modules(needed)
    if missing:
        return [f"python modules missing: {', '.join(missing)}; put their wheels in a folder and give --deps DIR"]
    return []


def check_machine(args, report: dict) -> list[str]:
    """Driver, CUDA, cuDNN and wheel checks; installs the wheel. Returns the failures."""
    code, query = run_command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    _, banner = run_command(["nvidia-smi"])
    machine = parse_nvidia_smi(query if code == 0 else "", banner if code == 0 else "")
    machine["cudnn_major"] = cudnn_major()
    report["machine"] = {k: (".".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in machine.items()}
    log(f"GPU: {machine['gpu']}, driver {report['machine']['driver']}, driver's CUDA {machine['driver_cuda']}, "
        f"cuDNN (pip) {machine['cudnn_major']}")

    target = Path(args.out) / "onnxruntime-gpu"
    shutil.rmtree(target, ignore_errors=True)
    log(f"installing {args.wheel} into {target} (offline, --no-deps)")
    code, output = run_command([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                                "--target", str(target), args.wheel], timeout=300)
    if code != 0:
        return [f"pip could not install the wheel: {output.strip()[-500:]}"]
    cuda_version = cuda_version_of_install(target)
    if cuda_version is None:
        major = cuda_major_of_release(wheel_version(args.wheel))
        cuda_version = f"{major}.x" if major else None
    report["wheel"] = {"file": os.path.basename(args.wheel), "cuda": cuda_version, "target": str(target)}
    log(f"wheel: {os.path.basename(args.wheel)}, built for CUDA {cuda_version}")
    problems = requirement_problems(cuda_version, machine["driver"], machine["driver_cuda"], machine["cudnn_major"])
    for problem in problems:
        log(f"FAIL: {problem}")
    args.ort_path = str(target)
    return problems


def prepare_models(args, report: dict) -> dict:
    models = {}
    for spec in args.model or []:
        name, _, rest = spec.partition("=")
        path, _, preset = rest.partition(":")
        models[name] = (Path(path), preset or "imagenet")
    if not args.model:
        effl0 = DEFAULT_MODELS["efficientnet-lite0"]
        models["efficientnet-lite0"] = effl0
        resnet = Path(args.resnet50) if args.resnet50 else Path(args.out) / "resnet50.onnx"
        if not resnet.is_file():
            log("exporting ResNet-50 with torchvision")
            report["resnet50_weights"] = export_resnet50(resnet)
            log(f"ResNet-50: {report['resnet50_weights']}")
        else:
            report["resnet50_weights"] = f"given file {resnet}"
        models["resnet50"] = (resnet, "imagenet")
    return {name: (str(path), preset) for name, (path, preset) in models.items()}


# -- the child: checks with the GPU onnxruntime ----------------------------------------------------------


def photos_for(preprocessing, n: int):
    """``n`` photos from the bundled demo photo (whole, halves, flipped) as model input."""
    import numpy as np

    from sglrp_onnx.presets import load_image

    photo = np.asarray(load_image(ROOT / "models" / "demo_photo.png"))
    half = photo.shape[1] // 2
    variants = [photo, photo[:, :half], photo[:, half:], photo[:, ::-1]]
    x, _ = preprocessing([variants[i % len(variants)] for i in range(n)])
    return x


def relative_l2(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def median_rate(run, batch: int, repeats: int) -> float:
    run()  # warm-up: cuDNN algorithm search, arena growth, TensorRT engine
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def check_model(name: str, path: str, preset: str, config: dict) -> dict:
    """Every check of one model; returns its part of the report (with ``failures``)."""
    import numpy as np

    import sglrp_onnx
    from sglrp_onnx.runtime import Explainer, RuntimeOptions

    device = config["device"]
    result: dict = {"model": name, "failures": [], "timing": []}
    started = time.perf_counter()
    augmented = sglrp_onnx.convert(path, preset=preset)
    aug_path = Path(config["out"]) / f"{name}.sglrp.onnx"
    sglrp_onnx.save(augmented, aug_path, force=True)
    opset = next(o.version for o in augmented.opset_import if o.domain in ("", "ai.onnx"))
    result["convert"] = {"seconds": round(time.perf_counter() - started, 1), "opset": opset, "ir": augmented.ir_version}
    del augmented
    log(f"[{name}] converted in {result['convert']['seconds']} s (opset {opset}, IR {result['convert']['ir']})")

    reference = Explainer(aug_path, "cpu", placement="off")
    x = photos_for(reference.preprocessing(), 4)
    targets = np.array([-1, 0, 285, 967], np.int64) % (reference.num_classes or 1000)
    targets[0] = -1
    want = reference.explain(x, targets)

    on_device = Explainer(aug_path, RuntimeOptions(provider=device, tf32=False), placement="check")
    placement = on_device.placement
    result["provider"] = on_device.provider
    result["placement"] = {"by_provider": placement.by_provider if placement else None,
                           "float_on_cpu": [f"{n.name} ({n.op_type})" for n in placement.float_on_cpu()] if placement else [],
                           "float_copies": [f"{n.name} ({n.op_type})" for n in placement.float_copies()] if placement else []}
    log(f"[{name}] provider {on_device.provider}; {placement.summary() if placement else 'no placement'}")
    if on_device.provider != config["provider"]:
        result["failures"].append(f"runs on {on_device.provider}, not {config['provider']} ({on_device.provider_note})")
    if placement is not None and not placement.ok:
        result["failures"].append(f"float computation on the CPU: {placement.summary()}")

    got = on_device.explain(x, targets)
    errors = [relative_l2(got.relevance[i], want.relevance[i]) for i in range(len(targets))]
    result["relevance_rel_l2"] = errors
    result["same_classes"] = bool(np.array_equal(got.explained_class, want.explained_class))
    log(f"[{name}] {device} vs CPU (TF32 off): explained classes equal {result['same_classes']}, "
        f"relative L2 of the relevance {', '.join(f'{e:.1e}' for e in errors)}")
    if not result["same_classes"]:
        result["failures"].append("explained classes differ from the CPU's")
    if max(errors) > REL_L2_LIMIT:
        result["failures"].append(f"relevance differs from the CPU's: relative L2 {max(errors):.2e} > {REL_L2_LIMIT}")
    del on_device

    deterministic = Explainer(aug_path, RuntimeOptions(provider=device, deterministic=True), placement="off")
    first, second = deterministic.explain(x, targets), deterministic.explain(x, targets)
    result["deterministic_bit_identical"] = bool(np.array_equal(first.relevance, second.relevance))
    log(f"[{name}] deterministic mode, two runs bit-identical: {result['deterministic_bit_identical']}")
    del deterministic

    runtimes = [("cuda" if device == "cuda" else device, RuntimeOptions(provider=device, tf32=False))]
    if config["tensorrt"]:
        if config["deadline"] - time.time() > TENSORRT_SECONDS:
            runtimes.append(("tensorrt", RuntimeOptions(provider="tensorrt",
                                                        tensorrt_cache_dir=str(Path(config["out"]) / "tensorrt"))))
        else:
            log(f"[{name}] tensorrt: skipped, less than {TENSORRT_SECONDS} s of the time budget left")
            result["timing"].append({"runtime": "tensorrt", "error": "skipped: time budget"})
    for label, options in runtimes:
        result["timing"] += time_runtime(name, label, options, path, aug_path, x, config, result["failures"])
    return result


def time_runtime(name, label, options, path, aug_path, x, config, failures) -> list[dict]:
    """Forward vs augmented throughput on one runtime at each batch size (IO binding for both)."""
    import numpy as np

    from sglrp_onnx.runtime import Explainer
    from sglrp_onnx.runtime.binding import BoundBuffers
    from sglrp_onnx.runtime.session import open_session

    try:
        explainer = Explainer(aug_path, options, placement="off", io_binding=True)
        forward = open_session(Path(path).read_bytes(), options, profile=False)
    except Exception as error:  # noqa: BLE001 - e.g. TensorRT libraries missing
        log(f"[{name}] {label}: not usable ({error})")
        return [{"runtime": label, "error": str(error)[:300]}]
    image_name = forward.session.get_inputs()[0].name
    outputs = [o.name for o in forward.session.get_outputs()]
    buffers = BoundBuffers(forward.session, "cuda" if forward.provider != CPU else "cpu")
    rows = []
    for batch in config["batches"]:
        xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
        tb = np.full(batch, -1, np.int64)
        try:
            f = median_rate(lambda: buffers.run({image_name: xb}, outputs), batch, config["repeats"])
            a = median_rate(lambda: explainer.step.run_batch(xb, tb), batch, config["repeats"])
        except Exception as error:  # noqa: BLE001 - e.g. out of GPU memory
            rows.append({"runtime": label, "batch": batch, "error": str(error)[:300]})
            failures.append(f"{label} batch {batch} failed: {str(error)[:200]}")
            continue
        rows.append({"runtime": label, "provider": explainer.provider, "batch": batch,
                     "forward_img_s": round(f, 1), "augmented_img_s": round(a, 1), "ratio": round(f / a, 2)})
        log(f"[{name}] {label} batch {batch}: forward {f:.1f} img/s, augmented {a:.1f} img/s ({f / a:.2f}x)")
    return rows


def child(config: dict) -> int:
    import onnxruntime as ort

    report: dict = {"onnxruntime": {"version": ort.__version__, "file": ort.__file__,
                                    "providers": ort.get_available_providers(),
                                    "cuda_version": getattr(ort, "cuda_version", None)}}
    log(f"onnxruntime {ort.__version__} from {ort.__file__}; providers {ort.get_available_providers()}")
    failures = []
    if config["ort_path"] and not os.path.realpath(ort.__file__).startswith(os.path.realpath(config["ort_path"])):
        failures.append(f"imported onnxruntime from {ort.__file__}, not from the wheel's folder {config['ort_path']}")
    if config["device"] == "cuda":
        from sglrp_onnx.runtime.session import preload_cuda_libraries

        output = preload_cuda_libraries()
        report["preload_dlls"] = output
        log("preload_dlls(): " + (" | ".join(output) if output else "no complaints"))
        if CUDA not in ort.get_available_providers():
            failures.append(f"this onnxruntime has no CUDA provider: {ort.get_available_providers()}")
    config["tensorrt"] = config["device"] == "cuda" and TENSORRT in ort.get_available_providers()
    report["models"] = []
    if not failures:
        for name, (path, preset) in config["models"].items():
            try:
                result = check_model(name, path, preset, config)
            except Exception as error:  # noqa: BLE001 - report and go on with the next model
                result = {"model": name, "failures": [f"{type(error).__name__}: {error}"], "timing": []}
                log(f"[{name}] FAIL: {type(error).__name__}: {error}")
            report["models"].append(result)
            failures += [f"{name}: {f}" for f in result["failures"]]
    report["failures"] = failures
    Path(config["report"]).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 1 if failures else 0


# -- report -----------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    """The summary table of a report."""
    lines = ["| model | runtime | batch | forward img/s | augmented img/s | ratio |", "|---|---|---:|---:|---:|---:|"]
    for model in report.get("models", []):
        for row in model.get("timing", []):
            if "error" in row:
                lines.append(f"| {model['model']} | {row['runtime']} | {row.get('batch', '-')} | error: {row['error'][:60]} | | |")
            else:
                lines.append(f"| {model['model']} | {row['runtime']} | {row['batch']} | {row['forward_img_s']} | "
                             f"{row['augmented_img_s']} | {row['ratio']} |")
    lines += ["", "| model | provider | float nodes on the CPU | max relative L2 vs CPU | same classes | deterministic bit-identical |",
              "|---|---|---:|---:|---|---|"]
    for model in report.get("models", []):
        errors = model.get("relevance_rel_l2") or [float("nan")]
        lines.append(f"| {model['model']} | {model.get('provider', '-')} | {len(model.get('placement', {}).get('float_on_cpu', []))} | "
                     f"{max(errors):.1e} | {model.get('same_classes', '-')} | {model.get('deterministic_bit_identical', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("wheel", nargs="?", help="the onnxruntime-gpu wheel file (not needed with --cpu-only)")
    parser.add_argument("--out", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--resnet50", metavar="FILE", help="ResNet-50 ONNX file (default: export one with torchvision)")
    parser.add_argument("--model", action="append", metavar="NAME=PATH[:PRESET]",
                        help="check these models instead of EfficientNet-Lite0 and ResNet-50 (repeatable)")
    parser.add_argument("--batches", default="1,32,64", help="batch sizes to time (default 1,32,64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (median; default 5)")
    parser.add_argument("--deps", metavar="DIR", help="a folder of wheels for python modules this machine lacks "
                        "(onnxslim, tqdm, ...), installed offline into the work folder")
    parser.add_argument("--cpu-only", action="store_true", help="test this script without a GPU: CPU provider, no wheel")
    parser.add_argument("--stage", choices=("all", "child"), default="all", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "child":
        return child(json.loads(Path(args.config).read_text(encoding="utf-8")))
    if not args.cpu_only and not (args.wheel and Path(args.wheel).is_file()):
        parser.error("give the onnxruntime-gpu wheel file (or --cpu-only)")
    args.out = args.out or tempfile.mkdtemp(prefix="sglrp-gpu-check-")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {"mode": "cpu-only" if args.cpu_only else "gpu"}
    failures: list[str] = []
    args.ort_path = args.deps_path = None
    failures = install_deps(args)
    if not args.cpu_only and not failures:
        failures = check_machine(args, report)
    if not failures:
        config = {
            "device": "cpu" if args.cpu_only else "cuda",
            "provider": CPU if args.cpu_only else CUDA,
            "models": prepare_models(args, report),
            "batches": [int(b) for b in args.batches.split(",")],
            "repeats": args.repeats,
            "out": args.out,
            "ort_path": args.ort_path,
            "report": str(Path(args.out) / "child.json"),
            "deadline": time.time() + BUDGET_SECONDS - (time.perf_counter() - started),
        }
        config_path = Path(args.out) / "config.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        env = dict(os.environ)
        paths = [p for p in (args.ort_path, args.deps_path, str(ROOT)) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        code = subprocess.call([sys.executable, __file__, "--stage", "child", "--config", str(config_path)], env=env)
        child_report = Path(config["report"])
        if child_report.is_file():
            report.update(json.loads(child_report.read_text(encoding="utf-8")))
            failures += report.get("failures", [])
        elif code != 0:
            failures.append(f"the check process failed (exit code {code})")
    report["failures"] = failures
    report["seconds"] = round(time.perf_counter() - started, 1)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    log("\n" + markdown(report))
    log(f"\nreport: {Path(args.out) / 'gpu_check.json'} ({report['seconds']} s)")
    if failures:
        log("FAIL:\n  " + "\n  ".join(failures))
        return 1
    log("OK: every check passed" + (" (CPU-only mode: no GPU was checked)" if args.cpu_only else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
