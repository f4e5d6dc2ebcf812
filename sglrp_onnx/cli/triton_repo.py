"""``sglrp-onnx triton-repo``: write a Triton Inference Server model repository for a model.

The repository (``OUT/<name>/1/model.onnx`` and ``OUT/<name>/config.pbtxt`` for the onnxruntime
backend, see :mod:`sglrp_onnx.serving.triton`) is written into a temporary folder and renamed to
OUT at the end, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sglrp_onnx.cli.convert import add_options, convert_kwargs

DESCRIPTION = """\
Write a Triton Inference Server model repository that serves MODEL with the onnxruntime backend:
OUT/NAME/1/model.onnx and OUT/NAME/config.pbtxt, whose inputs and outputs are the augmented
model's contract (the image input and 'target'; the original outputs, 'logits', 'explained_class'
and 'relevance'), with dynamic batching up to --max-batch images.

MODEL is a model made by 'sglrp-onnx convert' (served as it is unless method options are given)
or a plain ONNX classifier, which is converted first with the method options below, as
'sglrp-onnx convert' does. OUT must not exist yet."""

EPILOG = """\
start Triton on the repository (GPU; drop --gpus and use a config written without --gpu for CPU):
  docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
      -v "$PWD/OUT:/models" nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
      tritonserver --model-repository=/models

examples:
  sglrp-onnx triton-repo resnet50.sglrp.onnx model_repository --gpu --instances 2
  sglrp-onnx triton-repo resnet50.onnx model_repository --preset imagenet --max-batch 32
  sglrp-onnx triton-repo fixed_batch1.sglrp.onnx repo --max-batch 0    # a model with a fixed batch size"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository (onnxruntime backend)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="converted model, or a plain ONNX classifier to convert")
    parser.add_argument("out", metavar="OUT", help="the repository folder to create (must not exist)")
    serving = parser.add_argument_group("serving")
    serving.add_argument("--name", help="model name in the repository (default: MODEL's file name without .onnx)")
    serving.add_argument(
        "--max-batch",
        type=int,
        default=8,
        metavar="N",
        help="Triton's max_batch_size: requests are batched up to N images (default 8); needs a dynamic batch "
        "axis; 0 serves a model with a fixed batch size without batching",
    )
    serving.add_argument("--instances", type=int, default=1, metavar="K", help="model instances (sessions) side by side (default 1)")
    serving.add_argument("--gpu", action="store_true", help="run the instances on GPUs (KIND_GPU) instead of CPUs")
    serving.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=1000,
        metavar="US",
        help="how long Triton may hold a request to batch it with others (default 1000 microseconds)",
    )
    add_options(parser)
    parser.set_defaults(run=run)


def _default_options() -> dict:
    """The conversion options as they are when no flag is given."""
    probe = argparse.ArgumentParser(add_help=False)
    add_options(probe)
    return convert_kwargs(probe.parse_args([]))


def _given_options(args: argparse.Namespace) -> dict:
    """Conversion options that differ from their defaults (they make a converted model convert again)."""
    options = convert_kwargs(args)
    defaults = _default_options()
    return {k: v for k, v in options.items() if v != defaults.get(k)}


def run(args: argparse.Namespace) -> int:
    from sglrp_onnx import metadata
    from sglrp_onnx.io import load_model
    from sglrp_onnx.serving.triton import check_new_folder, write_model_repository

    check_new_folder(Path(args.out))  # fail before a long conversion, not after
    model = load_model(args.model)
    augmented = metadata.RELEVANCE_OUTPUT in metadata.read(model)
    options = _given_options(args) if augmented else convert_kwargs(args)
    if augmented and options:
        print(f"converting again with {', '.join(sorted(options))}", file=sys.stderr)
    elif not augmented:
        print("converting the plain classifier first", file=sys.stderr)
    folder = write_model_repository(
        model,
        args.out,
        name=args.name or _default_name(args.model),
        max_batch=args.max_batch,
        instances=args.instances,
        gpu=args.gpu,
        max_queue_delay_us=args.max_queue_delay_us,
        convert_options=options,
    )
    print(f"wrote {folder}/1/model.onnx and {folder}/config.pbtxt", file=sys.stderr)
    print(f"start Triton: tritonserver --model-repository={Path(args.out).resolve()}", file=sys.stderr)
    return 0


def _default_name(path: str) -> str:
    from sglrp_onnx.serving.triton import model_name_from_path

    return model_name_from_path(path)
