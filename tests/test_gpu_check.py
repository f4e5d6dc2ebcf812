"""tools/gpu_check.py without a GPU: the requirement checks (wheel, driver, CUDA, cuDNN), the
offline install of a wheel file into its own folder, and the whole pipeline in --cpu-only mode on
a small model (convert, placement, CPU comparison, deterministic runs, timing, table, JSON)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest

from tiny_models import plain_cnn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_wheel_and_cuda_versions():
    assert gpu_check.wheel_version("dist/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_27_x86_64.whl") == (1, 31, 1)
    assert gpu_check.wheel_version("onnxruntime-1.32.0-cp311-cp311-linux_x86_64.whl") is None  # the CPU package
    assert gpu_check.cuda_major_of_release((1, 31, 1)) == 13
    assert gpu_check.cuda_major_of_release((1, 27, 0)) == 13
    assert gpu_check.cuda_major_of_release((1, 22, 0)) == 12


def test_nvidia_smi_parsing():
    banner = "| NVIDIA-SMI 580.65.06    Driver Version: 580.65.06    CUDA Version: 13.0     |"
    info = gpu_check.parse_nvidia_smi("NVIDIA H200, 580.65.06, 143771 MiB\n", banner)
    assert info == {"gpu": "NVIDIA H200", "driver": (580, 65, 6), "memory": "143771 MiB", "driver_cuda": "13.0"}
    assert gpu_check.parse_nvidia_smi("", "")["driver"] is None


@pytest.mark.parametrize(
    "cuda, driver, driver_cuda, cudnn, expected",
    [
        ("13.0", (580, 65, 6), "13.0", 9, []),
        ("13.0", (575, 57, 8), "12.9", 9, ["needs driver >= 580", "supports CUDA up to 12.9"]),
        ("12.8", (550, 54), "12.4", 9, []),
        ("13.0", (580, 65), "13.0", 8, ["cuDNN 8 found"]),
        ("13.0", None, None, 9, ["no NVIDIA driver"]),
    ],
)
def test_requirements(cuda, driver, driver_cuda, cudnn, expected):
    problems = gpu_check.requirement_problems(cuda, driver, driver_cuda, cudnn)
    assert len(problems) == len(expected)
    for problem, text in zip(problems, expected):
        assert text in problem


def fake_gpu_wheel(folder: Path) -> Path:
    """A wheel named like onnxruntime-gpu's, holding only capi/version_info.py (what the script reads)."""
    path = folder / "onnxruntime_gpu-1.31.1-py3-none-any.whl"
    dist = "onnxruntime_gpu-1.31.1.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("onnxruntime/capi/version_info.py", 'use_cuda = True\ncuda_version = "13.0"\n')
        wheel.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def test_wheel_is_installed_offline_into_its_own_folder(tmp_path):
    wheel = fake_gpu_wheel(tmp_path)
    out = tmp_path / "work"
    # a PATH without nvidia-smi: the machine looks like one without a driver, GPU or not
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    done = subprocess.run([sys.executable, str(SCRIPT), str(wheel), "--out", str(out), "--model", "m=unused.onnx"],
                          capture_output=True, text=True, timeout=300, env=env)
    target = out / "onnxruntime-gpu"
    assert gpu_check.cuda_version_of_install(target) == "13.0"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["wheel"]["cuda"] == "13.0"
    # no GPU here: the driver check stops the run before any model is touched
    assert done.returncode == 1 and "no NVIDIA driver found" in done.stdout, done.stdout + done.stderr
    assert "models" not in report


def test_missing_modules_are_named():
    assert gpu_check.missing_modules(["numpy", "no_such_module_for_sure"]) == ["no_such_module_for_sure"]


def test_needs_a_wheel_or_cpu_only():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "wheel" in done.stderr


def test_cpu_only_pipeline(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(plain_cnn(num_classes=5, size=16), model)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-only", "--model", f"tiny={model}:imagenet", "--batches", "1,3",
         "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    (tiny,) = report["models"]
    assert tiny["provider"] == "CPUExecutionProvider" and tiny["same_classes"]
    assert max(tiny["relevance_rel_l2"]) <= 1e-6  # the same provider: the IO-bound path equals the plain one
    assert tiny["placement"]["float_on_cpu"] == [] and tiny["deterministic_bit_identical"] is True
    assert [row["batch"] for row in tiny["timing"]] == [1, 3]
    assert all(row["forward_img_s"] > 0 and row["augmented_img_s"] > 0 for row in tiny["timing"])
    assert "| tiny | cpu | 3 |" in done.stdout and "CPU-only mode" in done.stdout


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
def test_gpu_branch_reports_an_unusable_cuda_provider(tmp_path, monkeypatch):
    """The child's CUDA branch on a machine where onnxruntime lists CUDA but cannot start it."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():  # pragma: no cover - GPU machines
        pytest.skip("a real CUDA provider is installed: tools/gpu_check.sh checks it")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = tmp_path / "tiny.onnx"
    onnx.save(plain_cnn(num_classes=5, size=16), model)
    config = {"device": "cuda", "provider": "CUDAExecutionProvider", "models": {"tiny": [str(model), "imagenet"]},
              "batches": [1], "repeats": 1, "out": str(tmp_path), "ort_path": None,
              "report": str(tmp_path / "child.json"), "deadline": 0}
    assert gpu_check.child(config) == 1
    report = json.loads((tmp_path / "child.json").read_text())
    (failure,) = report["failures"]
    assert failure.startswith("tiny: UsageError: the CUDAExecutionProvider was asked for but could not be used")
