"""``sglrp-onnx explain``: relevance heatmaps for photos, written as PNG files and JSON lines."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from sglrp_onnx.composites import COMPOSITES as COMPOSITE_TABLE
from sglrp_onnx.errors import InputError, ModelLoadError, OutputError, SglrpError, UsageError
from sglrp_onnx.heatmap import heatmap, overlay, panel, save_png
from sglrp_onnx.labels import resolve_target
from sglrp_onnx.presets import fit_image, get_preset

METHODS = ("lrp", "clrp", "sglrp")
COMPOSITES = tuple(COMPOSITE_TABLE)
CONTRASTS = ("signed", "scaled")
PRESET_NAMES = ("imagenet", "caffe", "tf", "efficientnet-lite", "raw")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
RESULTS_FILE = "results.jsonl"

DESCRIPTION = """\
Explain a classifier's decisions on photos: for every image, write a heatmap PNG of the relevance
map (red: evidence for the explained class, blue: evidence against it, white: none), an overlay
PNG of the heatmap on the photo, and one JSON line in OUT/results.jsonl with the top predictions,
the explained class(es) and the files written.

MODEL is either a model made by 'sglrp-onnx convert' (used as it is) or a plain ONNX classifier,
which is converted on the fly with --method/--composite/--contrast/--preset and cached (in
$SGLRP_ONNX_CACHE, else ~/.cache/sglrp-onnx). Giving any of those options with a converted model
converts it again with them.

Images are resized so the shorter side matches the model's input size and the centre is cropped
(--fit), then normalised with the preprocessing preset (--preset, or the one the model records).
Folders are read in sorted order (--recursive for sub-folders) and processed in batches of
--batch-size, with a progress bar on stderr. The run can be interrupted and started again: images
already recorded in OUT/results.jsonl with the same settings are skipped (--force redoes them)."""

EPILOG = """\
targets:
  Without --target each image's predicted class is explained. A target is a class index
  (0-based), a class name (case-insensitive, e.g. "Egyptian cat"; names come from --labels, or
  the bundled ImageNet names for 1000-class models), or 'predicted'. Several targets give one
  heatmap per target and image. --top-k K explains each image's K most probable classes instead.

files (in OUT; NAME is the image's file name without extension):
  NAME.METHOD.cCLASS.heatmap.png    relevance summed over channels, symmetric colour scale
  NAME.METHOD.cCLASS.overlay.png    the heatmap over a grey copy of the (cropped) photo
  NAME.cCLASS.compare.png           with --compare: LRP, CLRP and SGLRP side by side
  results.jsonl                     one JSON object per image (predictions, explanations, files)

examples:
  sglrp-onnx explain resnet50.onnx cat.jpg --preset imagenet
  sglrp-onnx explain model.sglrp.onnx photos/ --target "tiger cat" 285 --out out/
  sglrp-onnx explain resnet50.onnx cat.jpg --preset imagenet --compare --target 281"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "explain",
        help="write relevance heatmaps and overlays for images",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="converted model, or a plain ONNX classifier to convert")
    parser.add_argument("inputs", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files and folders of images")
    what = parser.add_argument_group("what to explain")
    what.add_argument(
        "--target",
        metavar="INDEX_OR_NAME",
        nargs="+",
        action="extend",
        help="class(es) to explain: index, name or 'predicted' (default: the predicted class)",
    )
    what.add_argument("--top-k", type=int, default=None, metavar="K",
                      help="explain each image's K most probable classes (instead of --target); "
                      "results.jsonl lists max(K, 5) predictions per image")
    what.add_argument("--labels", metavar="FILE", help="class names: text (one per line) or JSON; default: ImageNet for 1000 classes")
    method = parser.add_argument_group(
        "method (these convert the model; for a converted model they convert it again)"
    )
    method.add_argument("--method", choices=METHODS, help="initial relevance: lrp, clrp or sglrp (convert's default: sglrp)")
    method.add_argument(
        "--composite",
        choices=COMPOSITES,
        metavar="NAME",
        help=f"rule per layer type: {', '.join(COMPOSITES)} (convert's default: dtd)",
    )
    method.add_argument("--contrast", choices=CONTRASTS, help="how clrp/sglrp combine target and dual parts")
    method.add_argument("--positive", action="store_true", default=None, help="clamp the relevance at 0")
    method.add_argument(
        "--preset",
        metavar="NAME",
        help=f"preprocessing ({', '.join(PRESET_NAMES)}); sets the zbox bounds when converting "
        "(default: the preset recorded in the model)",
    )
    method.add_argument(
        "--compare",
        action="store_true",
        help="also render LRP, CLRP and SGLRP side by side (converts the model three times, cached)",
    )
    run_group = parser.add_argument_group("running and output")
    run_group.add_argument("--out", metavar="DIR", default="sglrp-out", help="output folder (default: ./sglrp-out)")
    run_group.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per run of the model (default 16)")
    run_group.add_argument(
        "--fit",
        choices=("crop", "stretch", "pad"),
        default="crop",
        help="fit photos to the input size: crop the centre after resizing the shorter side (default), "
        "stretch, or pad with black",
    )
    run_group.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    run_group.add_argument("--force", action="store_true", help="redo images already in results.jsonl and overwrite their files")
    run_group.add_argument(
        "--provider",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="ONNX Runtime execution provider (default auto: CUDA when onnxruntime-gpu and a GPU are usable)",
    )
    run_group.add_argument("--no-cache", action="store_true", help="do not cache models converted on the fly")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


# -- inputs ----------------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def collect_images(inputs: Iterable[str], recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files named directly, and those found in folders (sorted; ``exclude``'s tree skipped)."""
    found: list[Path] = []
    seen: set[Path] = set()
    excluded = exclude.resolve() if exclude is not None else None
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.iterdir()
            candidates = sorted(p for p in pattern if p.is_file() and _is_image(p))
            if excluded is not None:
                candidates = [p for p in candidates if not p.resolve().is_relative_to(excluded)]
        elif path.is_file():
            candidates = [path]
        else:
            raise InputError(f"{item}: no such image file or folder")
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    if not found:
        raise InputError(f"no images found in {', '.join(inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def output_names(images: list[Path]) -> dict[str, str]:
    """A file-name stem per image: its own stem, plus a short hash of its path where stems clash."""
    counts: dict[str, int] = {}
    for image in images:
        counts[image.stem] = counts.get(image.stem, 0) + 1
    names = {}
    for image in images:
        stem = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in image.stem) or "image"
        if counts[image.stem] > 1:
            stem += "-" + hashlib.sha1(str(image.resolve()).encode()).hexdigest()[:8]
        names[str(image.resolve())] = stem
    return names


# -- results.jsonl -----------------------------------------------------------------------------


def read_results(path: Path) -> list[dict]:
    """The parseable lines of a results file (a line cut off by an interruption is ignored)."""
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _append_line(path: Path, record: dict) -> None:
    data = json.dumps(record, ensure_ascii=False)
    try:
        needs_newline = path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        with open(path, "a", encoding="utf-8") as handle:
            if needs_newline:
                handle.write("\n")
            handle.write(data + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def _rewrite_without(path: Path, drop: set[str]) -> None:
    """Rewrite the results file atomically without the records of the images in ``drop``."""
    if not path.is_file():
        return
    from sglrp_onnx.io import atomic_write_bytes

    kept = [r for r in read_results(path) if r.get("image") not in drop]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    atomic_write_bytes(path, text.encode("utf-8"), force=True)


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True, stream=None):
        self.total = total
        self.done = done
        self.start_done = done
        self.enabled = enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self.failed = 0

    def update(self, count: int, failed: int = 0) -> None:
        self.done += count
        self.failed += failed
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        extra = f", {self.failed} failed" if self.failed else ""
        line = f"explain [{bar}] {self.done}/{self.total} images, {rate:.1f} img/s, ~{left:.0f}s left{extra}"
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- running -----------------------------------------------------------------------------------


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_options(args) -> dict:
    options = {
        "method": args.method,
        "composite": args.composite,
        "contrast": args.contrast,
        "positive": args.positive,
        "preset": args.preset,
    }
    return {k: v for k, v in options.items() if v is not None}


def run(args) -> int:
    from sglrp_onnx.runtime import Explainer

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.top_k is not None and args.target:
        raise UsageError("give either --target or --top-k, not both")
    listed = max(args.top_k or 0, 5)
    if args.method == "lrp" and args.contrast:
        raise UsageError("--contrast applies to clrp and sglrp, not to --method lrp")
    if args.preset:
        get_preset(args.preset)  # fail early on a wrong name
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    images = collect_images(args.inputs, args.recursive, exclude=out if out.exists() else None)
    if not Path(args.model).is_file():
        raise ModelLoadError(f"{args.model}: no such model file")

    options = _convert_options(args)
    common = dict(
        providers=args.provider,
        labels=args.labels,
        cache=not args.no_cache,
    )
    explainer = Explainer(args.model, **common, **options)
    if explainer.preset is None:
        raise UsageError(
            "the model records no preprocessing preset: give --preset "
            f"({', '.join(PRESET_NAMES)})"
        )
    if len(explainer.input_shape) != 4:
        raise UsageError(f"explain needs a 4-D image input; the model's is {explainer.input_shape}")
    main_method = explainer.method or args.method or "sglrp"
    explainers = {main_method: explainer}
    if args.compare:
        for method in METHODS:
            if method in explainers:
                continue
            opts = dict(options, method=method)
            if method == "lrp":
                opts.pop("contrast", None)
            explainers[method] = Explainer(args.model, **common, **opts)

    requested = args.target or ["predicted"]
    targets: list[int] = []
    for value in requested:
        index = resolve_target(value, explainer.labels, explainer.num_classes)
        if index not in targets:
            targets.append(index)

    size = explainer.input_size or (224, 224)
    layout = explainer.layout
    preset = explainer.preset
    names = output_names(images)
    settings = {
        "model_sha256": _file_sha256(args.model),
        "convert": options,
        "method": main_method,
        "targets": targets,
        "compare": bool(args.compare),
        "fit": args.fit,
        "preset": preset.name,
        "top_k": args.top_k,
        "listed": listed,
        "labels": os.path.abspath(args.labels) if args.labels else None,
    }
    settings_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create --out {out}: {error.strerror or error}") from None
    results_path = out / RESULTS_FILE
    keys = {image: str(image.resolve()) for image in images}
    if args.force:
        _rewrite_without(results_path, set(keys.values()))
        done: set[str] = set()
    else:
        done = {
            r["image"]
            for r in read_results(results_path)
            if r.get("settings") == settings_key and "error" not in r and isinstance(r.get("image"), str)
        }
    pending = [image for image in images if keys[image] not in done]
    skipped = len(images) - len(pending)

    progress = Progress(len(images), skipped, enabled=not args.quiet)
    printed_lines = len(images) <= 10
    failures = 0
    written = 0
    try:
        for batch in _chunks(pending, args.batch_size):
            photos, ok = [], []
            for image in batch:
                try:
                    photos.append(fit_image(image, size, args.fit))
                    ok.append(image)
                except SglrpError as error:
                    failures += 1
                    _append_line(results_path, {"image": keys[image], "settings": settings_key, "error": str(error)})
                    print(f"warning: {error}", file=sys.stderr)
            if ok:
                pixels = np.stack(photos)
                x = preset.normalize(pixels, layout).astype(explainer.input_dtype, copy=False)
                runs = {}
                if args.top_k:  # the K most probable classes of each image, rank by rank
                    runs[0] = {m: e.explain(x, [-1] * len(ok)) for m, e in explainers.items()}
                    ranked = np.argsort(-runs[0][main_method].logits, axis=1, kind="stable")
                    for rank in range(1, min(args.top_k, ranked.shape[1])):
                        runs[rank] = {m: e.explain(x, ranked[:, rank].tolist()) for m, e in explainers.items()}
                else:
                    for target in targets:
                        runs[target] = {m: e.explain(x, [target] * len(ok)) for m, e in explainers.items()}
                first = next(iter(runs.values()))[main_method]
                top = first.top_k(listed)
                for i, image in enumerate(ok):
                    record = _record_image(
                        image, keys[image], names[keys[image]], i, pixels[i], runs, main_method, top[i],
                        out, layout, settings_key, explainer,
                    )
                    _append_line(results_path, record)
                    written += 1
                    if printed_lines:
                        best = record["predictions"][0]
                        files = ", ".join(
                            str(out / f) for e in record["explanations"] for k, f in e["files"].items() if k == "overlay"
                        )
                        progress_clear(progress)
                        print(f"{image}: {best['label']} ({best['class']}) p={best['probability']:.3f} -> {files}")
            progress.update(len(batch), failed=len(batch) - len(ok))
    finally:
        progress.close()
    print(
        f"explained {written} image(s), skipped {skipped} already done, {failures} failed; "
        f"results in {results_path}"
    )
    return InputError.exit_code if failures else 0


def progress_clear(progress: Progress) -> None:
    if progress.enabled and progress.tty:
        progress.stream.write("\r\033[K")
        progress.stream.flush()


def _record_image(image, key, name, i, photo, runs, main_method, top, out, layout, settings_key, explainer) -> dict:
    """Write one image's PNGs and return its results.jsonl record."""
    explanations = []
    seen_classes: set[int] = set()
    for target, by_method in runs.items():
        result = by_method[main_method]
        cls = int(result.explained_class[i])
        if cls in seen_classes:
            continue
        seen_classes.add(cls)
        relevance = result.relevance[i]
        files = {
            "heatmap": f"{name}.{main_method}.c{cls}.heatmap.png",
            "overlay": f"{name}.{main_method}.c{cls}.overlay.png",
        }
        save_png(heatmap(relevance, layout), out / files["heatmap"])
        save_png(overlay(photo, relevance, layout), out / files["overlay"])
        if len(by_method) > 1:
            files["compare"] = f"{name}.c{cls}.compare.png"
            order = [m for m in METHODS if m in by_method]
            heat_row = [photo] + [heatmap(by_method[m].relevance[i], layout) for m in order]
            over_row = [np.full_like(photo, 255)] + [overlay(photo, by_method[m].relevance[i], layout) for m in order]
            header = f"class {cls}: {result.label(cls)} (p={result.probabilities[i, cls]:.3f})"
            save_png(panel([heat_row, over_row], ["photo"] + [m.upper() for m in order], header), out / files["compare"])
        r = relevance.astype(np.float64)
        explanations.append(
            {
                "target": int(target),
                "explained_class": cls,
                "explained_label": result.label(cls),
                "probability": float(result.probabilities[i, cls]),
                "logit": float(result.logits[i, cls]),
                "relevance_sum": float(r.sum()),
                "relevance_max_abs": float(np.abs(r).max()),
                "files": files,
            }
        )
    return {
        "image": key,
        "name": name,
        "settings": settings_key,
        "method": main_method,
        "provider": explainer.provider,
        "predictions": top,
        "explanations": explanations,
    }
