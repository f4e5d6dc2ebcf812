"""The ``sglrp-onnx`` command line: one module per sub-command, each with ``add_parser`` and ``run``.

Every :class:`sglrp_onnx.errors.SglrpError` becomes one ``error: ...`` line on stderr and the exit
code of its class (table in ``docs/errors.md``); ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from sglrp_onnx import __version__
from sglrp_onnx.errors import EXIT_CODES, SglrpError

from . import convert, explain, inspect

SUBCOMMANDS = (convert, explain, inspect)


def _exit_code_table() -> str:
    lines = [f"  {code}  {text}" for code, text in EXIT_CODES.items()]
    return "exit codes:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sglrp-onnx",
        description=textwrap.dedent(
            """\
            Class-discriminative relevance maps (SGLRP, LRP, CLRP) as an ONNX graph.
            'convert' turns an ONNX classifier into a model that also outputs a relevance map;
            'explain' runs it on images and writes heatmaps; 'inspect' shows what the engine sees."""
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SglrpError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
