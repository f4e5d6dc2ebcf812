"""The demo end to end on the real pretrained EfficientNet-Lite0 (models/), without PyTorch.

SGLRP must separate the two objects of the photo: for "Egyptian cat" (285) most positive
relevance lies on the cat (left half), for "espresso" (967) on the cup (right half).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "models" / "efficientnet_lite0.onnx").is_file(), reason="bundled model missing")
def test_demo(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(tmp_path), "--provider", "cpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shares = {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"^(\w+): share of positive relevance on the cat half .*?: (\d+)%; .*?: (\d+)%$",
                             done.stdout, re.MULTILINE)
    }
    assert set(shares) == {"sglrp", "lrp"}, done.stdout
    cat, cup = shares["sglrp"]
    assert cat >= 80 and cup >= 80, shares
    for name in ("sglrp_cat", "sglrp_espresso", "lrp_cat", "lrp_espresso"):
        for kind in ("heatmap", "overlay"):
            with Image.open(tmp_path / f"{name}.{kind}.png") as img:
                assert img.size == (448, 224)
                assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 100
    with Image.open(tmp_path / "comparison.png") as img:
        assert img.width > 3 * 448
