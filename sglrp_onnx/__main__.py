"""``python -m sglrp_onnx`` runs the command line."""

import sys

from sglrp_onnx.cli import main

sys.exit(main())
