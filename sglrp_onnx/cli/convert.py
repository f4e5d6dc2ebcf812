"""``sglrp-onnx convert``: write the augmented model (forward + relevance) of an ONNX classifier.

The output is checked before the conversion starts (an existing file needs ``--force``, the folder
must exist) and written atomically (:func:`sglrp_onnx.io.atomic_write_bytes`): a failed
conversion leaves no file and no temporary file behind, and never touches an existing output.
"""

from __future__ import annotations

import argparse
import json
import sys

from sglrp_onnx.composites import COMPOSITES
from sglrp_onnx.emit.methods import CONTRASTS, METHODS


def add_options(parser: argparse.ArgumentParser) -> None:
    """Conversion options shared by ``convert`` and ``explain``."""
    group = parser.add_argument_group("relevance method")
    group.add_argument("--method", choices=METHODS, default="sglrp", help="initial relevance at the logits (default: sglrp)")
    group.add_argument("--contrast", choices=CONTRASTS, default=None,
                       help="how clrp/sglrp combine target and dual: signed (sglrp default) or scaled (clrp default); not for lrp")
    group.add_argument("--positive", action="store_true", help="clamp the final relevance at 0 (CLRP's max(0, .))")
    group.add_argument("--composite", choices=list(COMPOSITES), default="dtd", help="rule of each layer kind (default: dtd)")
    group.add_argument("--rules", metavar="FILE|JSON",
                       help="per-node rule overrides (node name, glob or op type -> rule): a JSON or YAML file, "
                       "or inline JSON such as '{\"Add\": \"epsilon\"}'")
    group.add_argument("--attention", choices=["cp", "attnlrp"], default="cp",
                       help="rule for attention weights: cp (CP-LRP, held constant; default) or attnlrp (AttnLRP)")
    group.add_argument("--target-runtime", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                       help="shape the relevance part for onnxruntime (default: fastest on its CPU and CUDA providers) or "
                       "tensorrt (no MaxPool Indices, no scatter reductions: TensorRT parses it; bit-reproducible on CUDA)")
    group.add_argument("--low", metavar="L", help="zbox lower input bound: one number, or one per channel (comma-separated)")
    group.add_argument("--high", metavar="H", help="zbox upper input bound: one number, or one per channel (comma-separated)")
    group.add_argument("--preset", help="preprocessing preset that sets the bounds (imagenet, caffe, tf, efficientnet-lite, raw)")
    group.add_argument("--epsilon", type=float, default=1e-6, help="epsilon of the epsilon rule (default 1e-6)")
    group.add_argument("--stabilizer", type=float, default=1e-6, help="stabiliser of every other rule (default 1e-6)")
    group.add_argument("--gamma", type=float, default=None, help="gamma of the gamma rule (default 0.25; 0.05 with --composite transformer)")
    group.add_argument("--input", dest="image_input", metavar="NAME", help="name of the image input when the model has several")
    group.add_argument("--layout", choices=["NCHW", "NHWC", "NCW", "NWC"], help="image layout (detected when omitted)")


def convert_kwargs(args: argparse.Namespace) -> dict:
    return {
        "method": args.method,
        "contrast": args.contrast,
        "positive": args.positive,
        "composite": args.composite,
        "rules": args.rules,
        "low": args.low,
        "high": args.high,
        "preset": args.preset,
        "epsilon": args.epsilon,
        "stabilizer": args.stabilizer,
        "gamma": args.gamma,
        "image_input": args.image_input,
        "layout": args.layout,
        "attention": args.attention,
        "target_runtime": args.target_runtime,
    }


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an ONNX classifier into a forward + relevance model",
        description="Write an ONNX model that computes the original outputs plus 'logits', 'explained_class' "
        "and a 'relevance' map for the class given in the extra int64 input 'target' (negative = predicted class).",
    )
    parser.add_argument("model", metavar="IN.onnx", help="the ONNX classifier (an already converted model is converted again)")
    parser.add_argument("-o", "--output", metavar="OUT.onnx", required=True, help="where to write the converted model")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.onnx if it exists (replaced atomically)")
    add_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sglrp_onnx import convert, save
    from sglrp_onnx.io import check_output_path
    from sglrp_onnx.metadata import read

    check_output_path(args.output, force=args.force)  # fail before a long conversion, not after
    model = convert(args.model, **convert_kwargs(args))
    path = save(model, args.output, force=args.force)
    meta = read(model)
    summary = {k.split(".", 1)[1]: meta[k] for k in sorted(meta) if not k.endswith("layer_rules")}
    print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(summary, indent=None))
    return 0
