"""tools/floor.py: the sorting of profiled kernels and the floors computed from them.

- ``category`` sorts kernels by the names ONNX Runtime gives them after its own rewrites;
- ``fastest_run`` keeps the kernels of the shortest run only;
- ``bounds`` applies the relevance part's shares to its wall-clock time (worked by hand);
- on a real conversion of a small CNN, the profiled forward model has no relevance kernels and
  the augmented one has its linear maps and divisions, each kernel counted once;
- the command runs end to end on a tiny model (nothing about speed is asserted).
"""

from __future__ import annotations

import json
from collections import Counter
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import sglrp_onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor  # noqa: E402
from tiny_models import plain_cnn  # noqa: E402


@pytest.mark.parametrize("name, op, expected", [
    ("/features/features.3/Relu_output_0_nchwc", "Conv", "forward"),
    ("fused /classifier/classifier.0/Gemm", "FusedGemm", "forward"),
    ("sglrp/c_345_nchwc", "Conv", "linear maps"),
    ("sglrp/Gemm_79/GemmTransposeFusion/", "Gemm", "linear maps"),
    ("sglrp/ConvTranspose_916", "ConvTranspose", "linear maps"),
    ("sglrp/Div_340", "Div", "divisions"),
    ("sglrp/Mul_348", "Mul", "products"),
    ("sglrp/ScatterElements_332", "ScatterElements", "pooling"),
    ("sglrp/MaxPool_320", "MaxPool", "pooling"),
    ("/features/features.4/MaxPool_output_0_nchwc", "MaxPool", "forward"),
    ("ReorderOutput_token_100", "ReorderOutput", "layout"),
    ("sglrp/HardSigmoid_1203", "HardSigmoid", "other"),
])
def test_category(name, op, expected):
    assert floor.category(name, op) == expected


def _kernel(ts, dur, name, op):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_fastest_run_keeps_the_shortest_runs_kernels():
    events = [
        {"name": "model_run", "ts": 0, "dur": 100}, _kernel(10, 90, "a", "Conv"),
        {"name": "model_run", "ts": 200, "dur": 50}, _kernel(210, 30, "a", "Conv"), _kernel(240, 5, "sglrp/d", "Div"),
        {"name": "model_run", "ts": 300, "dur": 70}, _kernel(310, 60, "a", "Conv"),
    ]
    kept = floor.fastest_run(events)
    assert [e["dur"] for e in kept] == [30, 5]
    assert floor.breakdown(kept) == {**dict.fromkeys(floor.CATEGORIES, 0.0), "forward": 0.03, "divisions": 0.005}


def test_bounds_by_hand():
    # relevance kernels: linear 6, divisions 2, products 1, layout 1.5 - 0.5 (forward's own), other 1: total 11
    parts = {"forward": 10.0, "linear maps": 6.0, "divisions": 2.0, "products": 1.0, "pooling": 0.0, "layout": 1.5, "other": 1.0}
    forward_parts = dict.fromkeys(floor.CATEGORIES, 0.0) | {"forward": 8.0, "layout": 0.5}
    b = floor.bounds(forward_s=0.1, augmented_s=0.32, parts=parts, forward_parts=forward_parts)
    assert b["ratio"] == pytest.approx(3.2)
    assert b["shares"]["layout"] == pytest.approx(1 / 11)
    assert sum(b["shares"].values()) == pytest.approx(1.0)
    # the forward's kernels took 10 / 8 of their time alone: 0.25 of the forward is theirs, not the relevance part's
    assert b["forward_kernels_ratio"] == pytest.approx(1.25)
    assert b["floor_linear"] == pytest.approx(1 + 6 / 11 * 1.95)
    assert b["floor_divisions"] == pytest.approx(1 + 8 / 11 * 1.95)
    # forward kernels faster inside the augmented model (noise): the whole difference counts
    faster = floor.bounds(0.1, 0.32, parts, forward_parts | {"forward": 12.0})
    assert faster["floor_linear"] == pytest.approx(1 + 6 / 11 * 2.2)


def test_profiles_of_a_real_conversion(tmp_path):
    source = tmp_path / "tiny.onnx"
    onnx.save(plain_cnn(size=32), str(source))
    target = tmp_path / "tiny.dtd.onnx"
    sglrp_onnx.save(sglrp_onnx.convert(str(source), composite="dtd", low=-1.0, high=1.0), target)
    forward = floor.profiled_kernels(str(source), 2, 1, 32, runs=2)
    augmented = floor.profiled_kernels(str(target), 2, 1, 32, runs=2)
    fwd_parts, aug_parts = floor.breakdown(forward), floor.breakdown(augmented)
    assert fwd_parts["forward"] > 0
    assert all(fwd_parts[k] == 0 for k in ("linear maps", "divisions", "products", "pooling", "other"))
    assert aug_parts["linear maps"] > 0 and aug_parts["divisions"] > 0 and aug_parts["pooling"] > 0
    names = [e["name"] for e in augmented]
    assert len(names) == len(set(names))  # one run: each kernel once
    # the forward's kernels are all there; more of them where the relevance part reads a tensor
    # that a fusion hid (here the first Conv's output, read by zbox, keeps its ReLU apart)
    def forward_ops(kernels):
        return Counter(e["args"]["op_name"] for e in kernels if floor.category(e["name"], e["args"]["op_name"]) == "forward")
    assert forward_ops(forward) <= forward_ops(augmented)
    assert forward_ops(augmented) - forward_ops(forward) == Counter({"Relu": 1})


def test_floor_command_on_a_tiny_model(tmp_path):
    source = tmp_path / "tiny.onnx"
    onnx.save(plain_cnn(size=16), str(source))
    out = tmp_path / "floor.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "floor.py"), "--model-file", str(source), "--size", "16",
                           "--variants", "epsilon", "--batches", "2", "--runs", "1", "--repeats", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["models"]
    entry = row["variants"]["epsilon"]["2"]
    assert entry["augmented_s"] > 0 and entry["forward_s"] > 0
    assert 1.0 <= entry["floor_linear"] <= entry["floor_divisions"] <= entry["ratio"]
    assert entry["forward_kernels_ratio"] > 0
    assert "| tiny | epsilon | 2 |" in done.stdout
