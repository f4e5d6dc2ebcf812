"""The ``sglrp-onnx`` command line: one module per sub-command, each with ``add_parser`` and ``run``.

Every :class:`sglrp_onnx.errors.SglrpError` becomes one ``error: ...`` line on stderr and the exit
code of its class (table in ``docs/errors.md``); ``--debug`` shows the traceback as well. Any
other exception is a bug: it becomes one ``internal error: ...`` line, a hint to rerun with
``--debug``, and exit code 1. Errors about the model that do not name its file get the file's
path in front, so that every message says which file it is about.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from sglrp_onnx import __version__
from sglrp_onnx.errors import (
    EXIT_CODES,
    ModelLoadError,
    SglrpError,
    UnsafeModelError,
    UnsupportedModelError,
    UsageError,
)

from . import convert, evaluate, explain, inspect, triton_repo

SUBCOMMANDS = (convert, explain, inspect, evaluate, triton_repo)


#: Error kinds that are about the model file: their messages get the file's path when they lack it.
_MODEL_ERRORS = (ModelLoadError, UnsafeModelError, UnsupportedModelError)


def _exit_code_table() -> str:
    lines = [f"  {code:>3}  {text}" for code, text in EXIT_CODES.items()]
    return "exit codes (details and example messages: docs/errors.md):\n" + "\n".join(lines)


def _message(error: SglrpError, args: argparse.Namespace) -> str:
    """The error's text, with the model file's path in front where the error is about the model."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__
    model = getattr(args, "model", None)
    about_model = isinstance(error, _MODEL_ERRORS) or (isinstance(error, UsageError) and "the model" in text)
    if model and about_model and str(model) not in text:
        text = f"{model}: {text}"
    return text


def _print_error(text: str) -> None:
    try:
        print(text, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or gone: nothing more can be said
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sglrp-onnx",
        description=textwrap.dedent(
            """\
            Class-discriminative relevance maps (SGLRP, LRP, CLRP) as an ONNX graph.
            'convert' turns an ONNX classifier into a model that also outputs a relevance map;
            'explain' runs it on images and writes heatmaps; 'inspect' shows what the engine sees;
            'evaluate' measures the maps on annotated photos; 'triton-repo' writes a Triton Inference Server
            model repository for it."""
        ),
        epilog=_exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sglrp-onnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for subparser in sub.choices.values():  # `sglrp-onnx convert ... --debug` works too
        if "--debug" not in subparser._option_string_actions:
            subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see :data:`sglrp_onnx.errors.EXIT_CODES`)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits with 2 on bad options
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()
        return code
    except SglrpError as error:
        if args.debug:
            raise
        _print_error(f"error: {_message(error, args)}")
        return error.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        _print_error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`sglrp-onnx inspect m.onnx | head`): not an error of
        # ours, and Python must not complain again while flushing stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except Exception as error:  # noqa: BLE001 - a bug: one line, not a traceback
        if args.debug:
            raise
        first = (str(error).strip().splitlines() or [""])[0]
        detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
        if len(detail) > 300:
            detail = detail[:297] + "..."
        _print_error(f"internal error: {detail}")
        _print_error("hint: this is a bug in sglrp-onnx; run the same command with --debug to see the traceback, and report it")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
