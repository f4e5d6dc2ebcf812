#!/usr/bin/env python3
"""The convert-model tool: ``python tools/convert_model.py IN.onnx -o OUT.onnx [options]``.

A thin wrapper around ``sglrp-onnx convert`` (same options, same exit codes), for use from a
checkout without installing the package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sglrp_onnx.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
