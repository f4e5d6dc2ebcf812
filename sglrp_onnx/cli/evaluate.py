"""``sglrp-onnx evaluate``: measure relevance maps on annotated photos (sglrp_onnx.metrics)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from sglrp_onnx.composites import COMPOSITES as COMPOSITE_TABLE
from sglrp_onnx.errors import InputError, ModelLoadError, OutputError, SglrpError, UsageError

METHOD_SPECS = ("lrp", "clrp", "clrp:signed", "clrp:scaled", "sglrp", "sglrp:signed", "sglrp:scaled")
DEFAULT_METHODS = ("lrp", "clrp:scaled", "sglrp:signed", "sglrp:scaled")
BASELINES = ("random", "gradient")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GRADIENT_NAME = "gradient x input"

DESCRIPTION = """\
Measure how good relevance maps are, on photos with annotated objects: for every image, every
annotated object (or those of --target) and every method x composite (plus the baselines), compute

  localisation   mass in box     share of the map's positive relevance inside the object
                 rank acc.       of the K most relevant pixels (K = object size), share inside
                 pointing        1 if the map's maximum lies inside the object, else 0
  discrimination discrim.        on images with several objects: positive relevance on the
                                 requested object / on all annotated objects
  faithfulness   max-patch drop  probability drop when the 9x9 patch (--patch) at the map's maximum
                                 is removed
                 AOPC            mean probability drop over the deletion steps (Samek et al. 2017)
                 deletion AUC    area under the probability while removing 9x9 patches, most
                                 relevant first, 1% of the patches per step (lower is better)
                 insertion AUC   the same, inserting patches into a removed image (higher is better)

Maps are summed over channels; localisation uses their positive part. Removed pixels take the
--fill value in the model's preprocessed input space. Baselines: 'random' (uniform noise map) and
'gradient' (gradient x input of the target logit, computed exactly; models with smooth
activations or gates have none). MODEL is a plain ONNX classifier or a converted one; each
method/composite is converted on the fly and cached, as 'explain' does. Definitions, conventions
and the comparison with Quantus: docs/evaluation.md."""

EPILOG = """\
annotations:
  --boxes FILE   JSON: {"IMAGE FILE NAME": [{"class": INDEX_OR_NAME, "box": [x0, y0, x1, y1]}, ...]}
                 in the photo's pixels (x right, y down; x1, y1 exclusive)
  --masks DIR    one PNG per image and class: DIR/<image name without extension>.<class index>.png,
                 the photo's size, non-zero = object
  Annotations follow the photo through --fit (crop, stretch, pad) to the model's input.

methods (--methods): lrp, clrp[:signed|:scaled], sglrp[:signed|:scaled]; a bare clrp/sglrp takes
  the method's default contrast (clrp: scaled, sglrp: signed). Each is run under every --composites.

files (in OUT; a new run replaces them):
  evaluation.md     the table: mean ± standard deviation over the cases per method
  evaluation.json   settings, summary, and every case's metrics and curves
  curves.png        deletion and insertion curves, mean with a ± 1 std band
  scores.png        bars of mass in box, pointing, discrimination and AOPC
  heatmaps.png      maps of the first cases for every method (--heatmap-rows; 0: none)
  (the PNG files need matplotlib: pip install 'sglrp-onnx[eval]'; --no-plots skips them)

examples:
  sglrp-onnx evaluate resnet50.onnx photos/ --boxes boxes.json --preset imagenet --out eval/
  sglrp-onnx evaluate model.onnx photos/ --masks masks/ --methods lrp sglrp --composites dtd epsilon-plus-flat
  sglrp-onnx evaluate model.onnx photos/ --boxes boxes.json --fill blur --steps 20 --baselines random"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure relevance maps on annotated photos (localisation, faithfulness, discrimination)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="converted model, or a plain ONNX classifier to convert")
    parser.add_argument("inputs", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files and folders of images")
    notes = parser.add_argument_group("annotations (one of them is required)")
    given = notes.add_mutually_exclusive_group(required=True)
    given.add_argument("--boxes", metavar="FILE", help="JSON file of boxes per image (format below)")
    given.add_argument("--masks", metavar="DIR", help="folder of PNG masks per image and class (format below)")
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--target", metavar="INDEX_OR_NAME", nargs="+", action="extend",
                      help="evaluate only objects of these classes (default: every annotated object)")
    what.add_argument("--labels", metavar="FILE", help="class names: text (one per line) or JSON; default: ImageNet for 1000 classes")
    what.add_argument("--methods", metavar="METHOD", nargs="+", choices=METHOD_SPECS, default=list(DEFAULT_METHODS),
                      help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)}; choices: {', '.join(METHOD_SPECS)})")
    what.add_argument("--composites", metavar="NAME", nargs="+", choices=tuple(COMPOSITE_TABLE), default=["dtd"],
                      help=f"composites to compare (default: dtd; choices: {', '.join(COMPOSITE_TABLE)})")
    what.add_argument("--baselines", metavar="NAME", nargs="*", choices=BASELINES, default=None,
                      help="baselines: random, gradient (default: both, gradient only where it is exact; "
                      "--baselines with no name: none)")
    what.add_argument("--preset", metavar="NAME",
                      help="preprocessing preset (imagenet, caffe, tf, efficientnet-lite, raw); also the zbox bounds "
                      "and the noise range (default: the preset recorded in the model)")
    perturb = parser.add_argument_group("perturbation")
    perturb.add_argument("--fill", choices=("zero", "blur", "noise"), default="zero",
                         help="what removed pixels become, in the preprocessed input: zero (the dataset mean; default), "
                         "blur (a Gaussian blur of the image), noise (uniform between the preset's bounds)")
    perturb.add_argument("--blur-sigma", type=float, default=5.0, metavar="PIXELS", help="sigma of --fill blur (default 5)")
    perturb.add_argument("--patch", type=int, default=9, metavar="P", help="patch size in pixels (default 9)")
    perturb.add_argument("--steps", type=int, default=100, metavar="S",
                         help="steps of the deletion/insertion curves (default 100: 1%% of the patches per step)")
    perturb.add_argument("--seed", type=int, default=0, help="seed of the random baseline and of --fill noise (default 0)")
    run_group = parser.add_argument_group("running and output")
    run_group.add_argument("--out", metavar="DIR", default="sglrp-eval", help="output folder (default ./sglrp-eval)")
    run_group.add_argument("--fit", choices=("crop", "stretch", "pad"), default="crop",
                           help="fit photos to the input size (default crop: resize the shorter side, cut the centre)")
    run_group.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per run of the model (default 32)")
    run_group.add_argument("--heatmap-rows", type=int, default=4, metavar="N", help="cases shown in heatmaps.png (default 4)")
    run_group.add_argument("--no-plots", action="store_true", help="write only the table and the JSON")
    run_group.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                           help="ONNX Runtime execution provider (default auto)")
    run_group.add_argument("--no-cache", action="store_true", help="do not cache models converted on the fly")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named or found (sorted, not recursive) in the folders named."""
    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            images.append(path)
        else:
            raise InputError(f"{path}: no such image file or folder")
    if not images:
        raise InputError(f"no images found in {', '.join(inputs)}")
    names = [p.name for p in images]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"two images share the file name '{twice[0]}': annotations are keyed by file name")
    return images


def method_options(spec: str) -> dict:
    """``sglrp:scaled`` -> ``{"method": "sglrp", "contrast": "scaled"}``."""
    method, _, contrast = spec.partition(":")
    return {"method": method, **({"contrast": contrast} if contrast else {})}


def source_name(spec: str, composite: str) -> str:
    return f"{spec.replace(':', ' ')} / {composite}"


def _build_cases(args, images, explainer, size):
    from sglrp_onnx.labels import resolve_target
    from sglrp_onnx.metrics import annotations
    from sglrp_onnx.metrics.runner import Case
    from sglrp_onnx.presets import fit_image, load_image

    boxes = annotations.read_boxes(args.boxes) if args.boxes else None
    if args.masks:
        annotations.check_masks_folder(args.masks)
    wanted = {resolve_target(t, explainer.labels, explainer.num_classes) for t in (args.target or [])}
    if -1 in wanted:
        raise UsageError("--target takes class indices or names; 'predicted' has no annotation to compare with")
    photos, cases, unannotated = [], [], []
    for image in images:
        photo = load_image(image)
        if boxes is not None:
            objects = annotations.boxes_for(args.boxes, boxes, image.name, photo.size, explainer.labels, explainer.num_classes)
        else:
            objects = annotations.masks_for(args.masks, image.name, photo.size, explainer.num_classes)
        if not objects:
            unannotated.append(image.name)
            continue
        index = len(photos)
        photos.append(fit_image(photo, size, args.fit))
        fitted = [annotations.fit_mask(o.mask, size, args.fit) for o in objects]
        for i, obj in enumerate(objects):
            if wanted and obj.target not in wanted:
                continue
            if not fitted[i].any():
                raise InputError(f"{image.name}: the object of class {obj.target} is cut away by --fit {args.fit}")
            others = [m for j, m in enumerate(fitted) if j != i and objects[j].target != obj.target]
            other = np.logical_or.reduce(others) if others else None
            cases.append(Case(index, image.name, obj.target, explainer.label(obj.target), fitted[i], other))
    if boxes is not None:
        missing = sorted(set(boxes) - {p.name for p in images})
        if missing:
            print(f"note: {len(missing)} annotated file(s) not among the images, e.g. {missing[0]}", file=sys.stderr)
    if unannotated:
        print(f"note: {len(unannotated)} image(s) without annotations skipped, e.g. {unannotated[0]}", file=sys.stderr)
    if not cases:
        raise InputError("no annotated object to evaluate (check the file names in the annotations and --target)")
    return np.stack(photos), cases


def _session_options():
    """ONNX Runtime options for the many sessions of one run: without the CPU memory arena, each
    of which would otherwise keep the peak memory of its largest batch for the whole run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    return options


def _sources(args, common, base_options):
    """Explainers per method x composite, and the baselines: name -> map source."""
    from sglrp_onnx.metrics.gradient import gradient_explainer
    from sglrp_onnx.metrics.runner import LazyExplainerSource, explainer_source, random_source
    from sglrp_onnx.runtime import Explainer

    # The first explainer stays (its forward pass scores the perturbed inputs); the others are
    # made when their turn comes and released after it (see LazyExplainerSource).
    first = None
    sources = {}
    for composite in args.composites:
        for spec in dict.fromkeys(args.methods):
            options = dict(common, **base_options, composite=composite, **method_options(spec))
            name = source_name(spec, composite)
            if first is None:
                first = Explainer(args.model, **options)
                sources[name] = explainer_source(first)
            else:
                sources[name] = LazyExplainerSource(lambda options=options: Explainer(args.model, **options))
    baselines = BASELINES if args.baselines is None else args.baselines
    if "gradient" in baselines:
        try:
            from sglrp_onnx.io import load_model
            from sglrp_onnx.metrics.gradient import gradient_model

            gradient_model(load_model(args.model))  # refuses now where it is not exact
            sources[GRADIENT_NAME] = LazyExplainerSource(
                lambda: gradient_explainer(
                    args.model, common["providers"], labels=common["labels"], cache=common["cache"],
                    session_options=common["session_options"],
                )
            )
        except SglrpError as error:
            if args.baselines is not None:
                raise
            print(f"note: no gradient x input baseline: {error}", file=sys.stderr)
    if "random" in baselines:
        sources["random"] = random_source(first.layout, args.seed)
    return first, sources


def run(args) -> int:
    from sglrp_onnx.metrics import report
    from sglrp_onnx.metrics.runner import Settings, evaluate, summarise
    from sglrp_onnx.metrics.scorer import ForwardScorer
    from sglrp_onnx.presets import get_preset

    for name in ("batch_size", "patch", "steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.heatmap_rows < 0:
        raise UsageError(f"--heatmap-rows must be 0 or more, got {args.heatmap_rows}")
    if args.blur_sigma <= 0:
        raise UsageError(f"--blur-sigma must be positive, got {args.blur_sigma}")
    if args.preset:
        get_preset(args.preset)
    if not Path(args.model).is_file():
        raise ModelLoadError(f"{args.model}: no such model file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    if not args.no_plots:
        report._pyplot()  # fail before the long run, not after it
    images = collect_images(args.inputs)
    from sglrp_onnx.metrics import annotations

    if args.boxes:  # the annotation files' form is checked before any conversion
        annotations.read_boxes(args.boxes)
    else:
        annotations.check_masks_folder(args.masks)

    started = time.perf_counter()
    common = dict(providers=args.provider, labels=args.labels, cache=not args.no_cache, session_options=_session_options())
    base_options = {"preset": args.preset} if args.preset else {}
    first, sources = _sources(args, common, base_options)
    if first.preset is None:
        raise UsageError("the model records no preprocessing preset: give --preset (imagenet, caffe, tf, efficientnet-lite, raw)")
    if len(first.input_shape) != 4:
        raise UsageError(f"evaluate needs a 4-D image input; the model's is {first.input_shape}")
    size = first.input_size or (224, 224)
    photos, cases = _build_cases(args, images, first, size)
    inputs = first.preset.normalize(photos, first.layout).astype(first.input_dtype, copy=False)
    settings = Settings(
        fill=args.fill, patch=args.patch, steps=args.steps, batch_size=args.batch_size, sigma=args.blur_sigma,
        seed=args.seed, low=first.preset.low, high=first.preset.high,
    )
    scorer = ForwardScorer(first)

    from tqdm import tqdm

    bar = tqdm(total=len(sources) * len(cases), desc="evaluate", unit="map", disable=args.quiet, file=sys.stderr)
    try:
        records = evaluate(
            inputs, first.layout, cases, sources, scorer, settings, progress=bar.update,
            keep_maps=0 if args.no_plots else args.heatmap_rows,
        )
    finally:
        bar.close()
    summary = summarise(records)
    elapsed = time.perf_counter() - started

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create --out {out}: {error.strerror or error}") from None
    run_settings = {
        "model": str(args.model),
        "images": len(photos),
        "cases": len(cases),
        "sources": list(sources),
        "preset": first.preset.name,
        "fit": args.fit,
        "fill": args.fill,
        "blur_sigma": args.blur_sigma,
        "patch": args.patch,
        "steps": args.steps,
        "seed": args.seed,
        "provider": first.provider,
        "seconds": round(elapsed, 1),
    }
    table = report.markdown_table(summary)
    written = [
        report.write_text(out / "evaluation.md", "# sglrp-onnx evaluate\n\n" + _settings_line(run_settings) + "\n\n" + table),
        report.write_json(out / "evaluation.json", report.results_json(records, summary, run_settings)),
    ]
    if not args.no_plots:
        written.append(report.plot_curves(summary, out / "curves.png"))
        written.append(report.plot_bars(summary, ("relevance_mass", "pointing_game", "discrimination", "aopc"), out / "scores.png"))
        if args.heatmap_rows:
            written.append(report.plot_heatmaps(records, dict(enumerate(photos)), out / "heatmaps.png", args.heatmap_rows))
    print(table)
    print(f"evaluated {len(sources)} source(s) on {len(cases)} case(s) in {elapsed:.0f} s; wrote {', '.join(map(str, written))}")
    return 0


def _settings_line(settings: dict) -> str:
    return (
        f"{settings['cases']} case(s) on {settings['images']} image(s); preset {settings['preset']}, fit {settings['fit']}, "
        f"fill {settings['fill']}, {settings['patch']}x{settings['patch']} patches, {settings['steps']} steps; "
        f"{settings['provider']}, {settings['seconds']} s"
    )
