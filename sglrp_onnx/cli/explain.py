"""``sglrp-onnx explain``: relevance heatmaps for photos, written as PNG files and JSON lines.

This module holds the arguments and the loop over batches; the photos are prepared by
:class:`sglrp_onnx.runtime.Preprocessing`, run by :class:`sglrp_onnx.runtime.Explainer`, and the
files are written by :mod:`sglrp_onnx.cli.explain_output`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from sglrp_onnx.cli.explain_output import (
    ResultsFile,
    error_record,
    file_sha256,
    image_record,
    output_names,
    settings_key,
    write_image,
)
from sglrp_onnx.composites import COMPOSITES as COMPOSITE_TABLE
from sglrp_onnx.distributed_cli import add_engine_options, check_engine_arguments, done_with_parquet, engine_settings
from sglrp_onnx.errors import InputError, ModelLoadError, OutputError, UsageError
from sglrp_onnx.labels import resolve_target
from sglrp_onnx.presets import get_preset
from sglrp_onnx.runtime.providers import PROVIDER_CHOICES
from sglrp_onnx.runtime.step import explain_batch

METHODS = ("lrp", "clrp", "sglrp")
COMPOSITES = tuple(COMPOSITE_TABLE)
CONTRASTS = ("signed", "scaled")
PRESET_NAMES = ("imagenet", "caffe", "tf", "efficientnet-lite", "raw")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

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
        "--target-runtime",
        choices=("onnxruntime", "tensorrt"),
        help="form of the relevance part: onnxruntime (fastest on its CPU and CUDA providers) or tensorrt "
        "(no MaxPool Indices, no scatter reductions); default when converting: tensorrt with --provider "
        "tensorrt or --deterministic, else onnxruntime",
    )
    method.add_argument(
        "--compare",
        action="store_true",
        help="also render LRP, CLRP and SGLRP side by side (converts the model three times, cached; "
        "the methods run in turn, one model in memory at a time)",
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
    run_group.add_argument("--no-cache", action="store_true", help="do not cache models converted on the fly")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar, no provider report")
    add_engine_options(parser)
    gpu = parser.add_argument_group("execution provider (docs/runtime.md, 'Providers and options')")
    gpu.add_argument(
        "--provider",
        choices=PROVIDER_CHOICES,
        default="auto",
        help="ONNX Runtime execution provider (default auto: CUDA when onnxruntime-gpu and a GPU are usable, "
        "else the CPU, saying why); tensorrt: TensorRT, CUDA for the nodes TensorRT does not take, CPU last",
    )
    gpu.add_argument("--device", type=int, default=0, metavar="N", help="GPU to use (default 0)")
    gpu.add_argument(
        "--deterministic",
        action="store_true",
        help="reproducible choices where ONNX Runtime offers them: deterministic compute, heuristic cuDNN "
        "algorithm choice, TF32 off (see docs/runtime.md for what it cannot promise)",
    )
    gpu.add_argument("--tf32", action="store_true", help="allow TF32 math on the GPU (faster, less precise; default off)")
    gpu.add_argument("--cuda-graph", action="store_true",
                     help="capture the run as a CUDA graph (batches padded to one size; needs every node on CUDA)")
    gpu.add_argument("--tensorrt-cache", metavar="DIR", help="TensorRT engine cache (default: the conversion cache's tensorrt/)")
    gpu.add_argument(
        "--verify-placement",
        action="store_true",
        help="profile one run, print where ONNX Runtime ran the nodes, and stop with exit code 5 if a GPU "
        "provider leaves float computation on the CPU (without it: checked on GPU providers, a warning)",
    )
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


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- what to run ---------------------------------------------------------------------------------


def convert_options(args) -> dict:
    """The conversion options given on the command line (those not given are left out)."""
    options = {
        "method": args.method,
        "composite": args.composite,
        "contrast": args.contrast,
        "positive": args.positive,
        "preset": args.preset,
        "target_runtime": args.target_runtime,
    }
    return {k: v for k, v in options.items() if v is not None}


def check_arguments(args) -> None:
    """Refuse contradictory or out-of-range options before any work is done."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.top_k is not None and args.target:
        raise UsageError("give either --target or --top-k, not both")
    if args.method == "lrp" and args.contrast:
        raise UsageError("--contrast applies to clrp and sglrp, not to --method lrp")
    if args.preset:
        get_preset(args.preset)  # fail early on a wrong name


def explainer_settings(args) -> dict:
    """The Explainer settings of the provider, labels and cache flags; with --compare, whose
    sessions are used in turn, each session's own options on one shared CPU arena."""
    from sglrp_onnx.runtime.session import shared_arena_options

    settings = dict(
        providers=runtime_request(args),
        labels=args.labels,
        cache=not args.no_cache,
        placement="require" if args.verify_placement else "auto",
    )
    if args.compare:
        settings["session_options"] = shared_arena_options()
    return settings


def open_explainers(args) -> tuple[str, dict]:
    """``(main method, {method: Explainer})``: the model's method (--compare opens the other
    methods in turn, :func:`run_other_methods`)."""
    from sglrp_onnx.runtime import Explainer

    explainer = Explainer(args.model, **explainer_settings(args), **convert_options(args))
    if explainer.preset is None:
        raise UsageError(f"the model records no preprocessing preset: give --preset ({', '.join(PRESET_NAMES)})")
    if len(explainer.input_shape) != 4:
        raise UsageError(f"explain needs a 4-D image input; the model's is {explainer.input_shape}")
    main_method = explainer.method or args.method or "sglrp"
    return main_method, {main_method: explainer}


def open_method(args, method: str):
    """An Explainer of ``args.model`` for one more method of ``--compare`` (graph kept, weights not)."""
    from sglrp_onnx.runtime import Explainer
    from sglrp_onnx.runtime.explainer import options_for_method

    options = options_for_method(convert_options(args), method)
    return Explainer(args.model, **explainer_settings(args), keep_model=False, **options)


@contextlib.contextmanager
def _maps_folder(out: Path, wanted: bool):
    """A hidden folder in ``out`` for --compare's maps, removed afterwards whatever happens (None
    where not wanted)."""
    if not wanted:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=".compare-", dir=out) as folder:
        yield Path(folder)


class _StoredRelevance:
    """A method's relevance maps for one batch, read back from disk: what the comparison panel draws."""

    def __init__(self, relevance: np.ndarray):
        self.relevance = relevance


def run_other_methods(args, main_method: str, batches: list, preprocessing, targets: list[int], folder: Path) -> None:
    """``--compare``: each other method in turn (one session alive at a time), over every batch;
    its relevance maps go to ``folder`` (``METHOD.BATCH.npz``, one array per target or rank)."""
    for method in METHODS:
        if method == main_method:
            continue
        explainer = open_method(args, method)
        for number, batch in enumerate(batches):
            pixels, _, _ = preprocessing.fit_many(batch, skip_unreadable=True)
            if len(pixels):
                runs = explain_batch(preprocessing.normalize(pixels), {method: explainer}, method, targets, args.top_k)
                np.savez(folder / f"{method}.{number}.npz", **{str(key): by[method].relevance for key, by in runs.items()})
        del explainer
        gc.collect()


def stored_runs(runs: dict, folder: Path, number: int) -> dict:
    """``runs`` of the main method with the other methods' maps of batch ``number`` added."""
    for part in sorted(folder.glob(f"*.{number}.npz")):
        method = part.name.split(".")[0]
        with np.load(part) as arrays:
            for key, by_method in runs.items():
                by_method[method] = _StoredRelevance(arrays[str(key)])
    return runs


def runtime_request(args):
    """The :class:`~sglrp_onnx.runtime.RuntimeOptions` of the provider flags."""
    from sglrp_onnx.runtime import RuntimeOptions

    return RuntimeOptions(
        provider=args.provider,
        device_id=args.device,
        deterministic=args.deterministic,
        tf32=args.tf32,
        cuda_graph=args.cuda_graph,
        tensorrt_cache_dir=args.tensorrt_cache,
    )


def report_provider(explainer, warned: list, quiet: bool) -> None:
    """Tell the user what runs and why (stderr): the provider, the reason for a fallback, the
    placement check, and the warnings ONNX Runtime logged while the session was made."""
    for warning in warned:
        print(f"warning: {warning.message}", file=sys.stderr)
    if quiet:
        return
    line = f"provider: {explainer.provider}"
    if explainer.provider_note:
        line += f" ({explainer.provider_note})"
    print(line, file=sys.stderr)
    if explainer.placement is not None:
        print(f"placement: {explainer.placement.summary()}", file=sys.stderr)


def progress_bar(total: int, done: int, enabled: bool):
    """A tqdm progress bar on stderr counting images (finished ones from earlier runs included)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        desc="explain",
        unit="img",
        disable=not enabled or total == 0,
        file=sys.stderr,
        dynamic_ncols=True,
    )


# -- running -----------------------------------------------------------------------------------


def run(args) -> int:
    check_arguments(args)
    check_engine_arguments(args)
    listed = max(args.top_k or 0, 5)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    images = collect_images(args.inputs, args.recursive, exclude=out if out.exists() else None)
    if not Path(args.model).is_file():
        raise ModelLoadError(f"{args.model}: no such model file")

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        main_method, explainers = open_explainers(args)
    explainer = explainers[main_method]
    report_provider(explainer, [w for w in warned if issubclass(w.category, RuntimeWarning)], args.quiet)
    targets: list[int] = []
    for value in args.target or ["predicted"]:
        index = resolve_target(value, explainer.labels, explainer.num_classes)
        if index not in targets:
            targets.append(index)
    preprocessing = explainer.preprocessing(fit=args.fit)
    names = output_names(images)
    key = settings_key(
        {
            "model_sha256": file_sha256(args.model),
            "convert": convert_options(args),
            "method": main_method,
            "targets": targets,
            "compare": bool(args.compare),
            "fit": args.fit,
            "preset": preprocessing.preset.name,
            "top_k": args.top_k,
            "listed": listed,
            "labels": os.path.abspath(args.labels) if args.labels else None,
            **engine_settings(args),
        }
    )

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create --out {out}: {error.strerror or error}") from None
    results = ResultsFile(out)
    keys = {image: str(image.resolve()) for image in images}
    if args.force:
        results.drop(set(keys.values()))
        done: set[str] = set()
    else:
        done = results.done(key)
        if args.format == "parquet":
            done = done_with_parquet(done, results, key, out)
    pending = [image for image in images if keys[image] not in done]
    skipped = len(images) - len(pending)

    print_lines = len(images) <= 10
    if args.engine == "ray":
        from sglrp_onnx.distributed_cli import PendingRun, explain_on_ray

        return explain_on_ray(args, PendingRun(
            explainer=explainer, targets=targets, listed=listed, method=main_method, settings=key, out=out,
            results=results, names=names, keys=keys, pending=pending, total=len(images), skipped=skipped,
            print_lines=print_lines,
        ))
    batches = list(_chunks(pending, args.batch_size))
    failures = written = 0
    with _maps_folder(out, args.compare and bool(pending)) as parts:
        if parts is not None:
            # one session alive at a time: the other methods run first, over every image, their
            # maps kept on disk; then the main method's session opens again (from the cache
            # unless --no-cache)
            explainers = explainer = None
            gc.collect()
            run_other_methods(args, main_method, batches, preprocessing, targets, parts)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # reported when it was opened first
                main_method, explainers = open_explainers(args)
            explainer = explainers[main_method]
        with progress_bar(len(images), skipped, enabled=not args.quiet) as bar:
            for number, batch in enumerate(batches):
                pixels, kept, errors = preprocessing.fit_many(batch, skip_unreadable=True)
                for index, error in errors:
                    failures += 1
                    results.append(error_record(keys[batch[index]], key, error))
                    bar.write(f"warning: {error}", file=sys.stderr)
                ok = [batch[i] for i in kept]
                if ok:
                    runs = explain_batch(preprocessing.normalize(pixels), explainers, main_method, targets, args.top_k)
                    if parts is not None:
                        runs = stored_runs(runs, parts, number)
                    top = next(iter(runs.values()))[main_method].top_k(listed)
                    for i, image in enumerate(ok):
                        name = names[keys[image]]
                        explanations = write_image(out, name, i, pixels[i], runs, main_method, preprocessing.layout)
                        record = image_record(keys[image], name, key, main_method, explainer.provider, top[i], explanations)
                        results.append(record)
                        written += 1
                        if print_lines:
                            best = record["predictions"][0]
                            files = ", ".join(str(out / e["files"]["overlay"]) for e in explanations)
                            bar.write(f"{image}: {best['label']} ({best['class']}) p={best['probability']:.3f} -> {files}", file=sys.stdout)
                if failures:
                    bar.set_postfix(failed=failures, refresh=False)
                bar.update(len(batch))
    print(
        f"explained {written} image(s), skipped {skipped} already done, {failures} failed; "
        f"results in {results.path}"
    )
    return InputError.exit_code if failures else 0
