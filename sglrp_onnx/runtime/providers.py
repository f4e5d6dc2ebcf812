"""Execution providers: the names, the option dictionaries we pass, and why one is not usable.

Everything here is plain data and string work (no session is opened), so it is tested without a
GPU. :mod:`sglrp_onnx.runtime.session` opens the sessions.

Provider options are ONNX Runtime's (CUDA: ``onnxruntime/core/providers/cuda/cuda_provider_options``
and the CUDA Execution Provider page of onnxruntime.ai; TensorRT: the TensorRT Execution Provider
page). The values we choose, and why, are in docs/runtime.md ("Providers and options").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sglrp_onnx.errors import UsageError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

#: What ``provider=`` / ``--provider`` accept.
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
#: ONNX Runtime's cuDNN convolution algorithm searches (CUDA provider option cudnn_conv_algo_search).
CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
ARENA_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")

#: Oldest NVIDIA Linux driver for each CUDA major version (NVIDIA's CUDA Toolkit release notes,
#: "minor version compatibility": 12.x needs >= 525.60.13, 13.x needs >= 580).
MIN_DRIVER_FOR_CUDA = {12: 525, 13: 580}


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are opened: the provider and its options.

    Attributes:
        provider: ``auto`` (CUDA when usable, else CPU), ``cpu``, ``cuda`` or ``tensorrt``
            (TensorRT, with CUDA for the nodes TensorRT does not take, CPU last).
        device_id: the GPU to use.
        deterministic: run-to-run reproducible choices where ONNX Runtime offers them:
            ``SessionOptions.use_deterministic_compute`` (no fast non-deterministic reductions),
            ``cudnn_conv_algo_search=HEURISTIC`` (the algorithm does not depend on timing) and TF32
            off. See docs/runtime.md for what it cannot promise.
        tf32: allow TF32 tensor-core math for float32 convolutions and matrix products (faster on
            Ampere and later, about 10 mantissa bits instead of 23). Off by default: relevance
            divides by layer outputs and is more sensitive to precision than the logits are.
        conv_algo_search: ``EXHAUSTIVE`` (ONNX Runtime's default: time every cuDNN algorithm on
            the first run of each shape), ``HEURISTIC`` or ``DEFAULT``; ``None``: EXHAUSTIVE, or
            HEURISTIC in deterministic mode.
        arena_extend_strategy: how the GPU memory arena grows; ``kSameAsRequested`` (our default)
            wastes less memory than ONNX Runtime's ``kNextPowerOfTwo`` with large relevance tensors.
        gpu_mem_limit: bytes the CUDA arena may hold (``None``: no limit).
        cuda_graph: capture the run as a CUDA graph and replay it (needs fixed shapes: batches are
            padded to one size, and IO binding with fixed buffers, which the runtime does).
        tensorrt_cache_dir: TensorRT engine and timing cache folder (``None``: a ``tensorrt``
            folder in the conversion cache, :func:`sglrp_onnx.runtime.default_cache_dir`).
        tensorrt_fp16: let TensorRT use float16 (off: check the relevance first, docs/runtime.md).
        tensorrt_max_batch: the largest batch of TensorRT's shape profile.
        extra: further provider options by provider name, merged over ours.
    """

    provider: str = "auto"
    device_id: int = 0
    deterministic: bool = False
    tf32: bool = False
    conv_algo_search: str | None = None
    arena_extend_strategy: str = "kSameAsRequested"
    gpu_mem_limit: int | None = None
    cuda_graph: bool = False
    tensorrt_cache_dir: str | None = None
    tensorrt_fp16: bool = False
    tensorrt_max_batch: int = 64
    extra: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if self.provider not in PROVIDER_CHOICES:
            raise UsageError(f"unknown provider {self.provider!r}; valid: {', '.join(PROVIDER_CHOICES)}")
        if self.conv_algo_search is not None and self.conv_algo_search not in CONV_ALGO_SEARCHES:
            raise UsageError(
                f"unknown cudnn_conv_algo_search {self.conv_algo_search!r}; valid: {', '.join(CONV_ALGO_SEARCHES)}"
            )
        if self.arena_extend_strategy not in ARENA_STRATEGIES:
            raise UsageError(
                f"unknown arena_extend_strategy {self.arena_extend_strategy!r}; valid: {', '.join(ARENA_STRATEGIES)}"
            )
        if self.deterministic and self.tf32:
            raise UsageError("deterministic mode and TF32 exclude each other: TF32 is turned off for determinism")
        if int(self.device_id) < 0 or int(self.tensorrt_max_batch) < 1:
            raise UsageError("device_id must be >= 0 and tensorrt_max_batch >= 1")


def cuda_provider_options(options: RuntimeOptions) -> dict[str, str]:
    """The CUDA provider's options for ``options`` (strings, as ONNX Runtime takes them)."""
    search = options.conv_algo_search or ("HEURISTIC" if options.deterministic else "EXHAUSTIVE")
    values = {
        "device_id": str(int(options.device_id)),
        "cudnn_conv_algo_search": search,
        "use_tf32": "1" if options.tf32 and not options.deterministic else "0",
        "arena_extend_strategy": options.arena_extend_strategy,
        "do_copy_in_default_stream": "1",
    }
    if options.gpu_mem_limit is not None:
        values["gpu_mem_limit"] = str(int(options.gpu_mem_limit))
    if options.cuda_graph:
        values["enable_cuda_graph"] = "1"
    values.update({k: str(v) for k, v in options.extra.get(CUDA, {}).items()})
    return values


def tensorrt_provider_options(options: RuntimeOptions, profile: dict[str, list[int]] | None = None) -> dict[str, str]:
    """The TensorRT provider's options: engine and timing caches (building an engine takes minutes;
    the cache keeps it for the next session), float32 unless asked, and the shape profile.

    ``profile`` maps each input to its shape at batch 1 (``None``: leave the profile to ONNX
    Runtime, which rebuilds the engine when a new shape comes).
    """
    from sglrp_onnx.runtime.cache import default_cache_dir

    folder = Path(options.tensorrt_cache_dir) if options.tensorrt_cache_dir else default_cache_dir() / "tensorrt"
    values = {
        "device_id": str(int(options.device_id)),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": os.fspath(folder),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": os.fspath(folder),
        "trt_fp16_enable": "True" if options.tensorrt_fp16 else "False",
    }
    if profile:
        def shapes(batch: int) -> str:
            return ",".join(f"{name}:{'x'.join(str(d) for d in [batch, *dims[1:]])}" for name, dims in profile.items())

        values["trt_profile_min_shapes"] = shapes(1)
        values["trt_profile_opt_shapes"] = shapes(int(options.tensorrt_max_batch))
        values["trt_profile_max_shapes"] = shapes(int(options.tensorrt_max_batch))
    values.update({k: str(v) for k, v in options.extra.get(TENSORRT, {}).items()})
    return values


def provider_chain(options: RuntimeOptions, available: list[str], profile=None) -> list:
    """The provider list for ``InferenceSession`` (name, options) pairs, best first, CPU last.

    ``auto`` lists CUDA only where this onnxruntime has it; ``cuda``/``tensorrt`` list what was
    asked for (the caller checks availability first, :func:`missing_provider_reason`).
    """
    chain: list = []
    if options.provider == "tensorrt":
        chain.append((TENSORRT, tensorrt_provider_options(options, profile)))
    if options.provider in ("tensorrt", "cuda") or (options.provider == "auto" and CUDA in available):
        chain.append((CUDA, cuda_provider_options(options)))
    chain.append((CPU, {}))
    return chain


def wanted_provider(options: RuntimeOptions) -> str:
    """The provider that should run the model when everything works."""
    return {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}.get(options.provider, CUDA)


def installed_onnxruntime_packages() -> list[str]:
    """The ONNX Runtime distributions pip installed here (``onnxruntime``, ``onnxruntime-gpu``, ...)."""
    from importlib import metadata

    names = set()
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name == "onnxruntime" or name.startswith("onnxruntime-") or name.startswith("onnxruntime_"):
            names.add(name.replace("_", "-"))
    return sorted(names)


def missing_provider_reason(provider: str, available: list[str], packages: list[str] | None = None) -> str:
    """Why ``provider`` is not in ``onnxruntime.get_available_providers()``, in words for the user."""
    packages = installed_onnxruntime_packages() if packages is None else packages
    gpu_packages = [p for p in packages if p.startswith("onnxruntime-gpu")]
    if "onnxruntime" in packages and gpu_packages:
        return (
            f"both onnxruntime and {gpu_packages[0]} are installed; they write the same 'onnxruntime' folder "
            "and whichever came last wins: uninstall both, then install onnxruntime-gpu only"
        )
    if provider == TENSORRT and CUDA in available:
        return "this onnxruntime-gpu build has no TensorRT provider (available: " + ", ".join(available) + ")"
    if not gpu_packages:
        return (
            "this onnxruntime is the CPU package"
            + (f" ({', '.join(packages)})" if packages else "")
            + "; for CUDA install onnxruntime-gpu instead of it (pip install 'sglrp-onnx[gpu]'), never beside it"
        )
    return f"this onnxruntime build has no {provider} (available: {', '.join(available)})"


def parse_driver_version(text: str) -> tuple[int, ...] | None:
    """The driver version in ``nvidia-smi --query-gpu=driver_version`` output or in
    ``/proc/driver/nvidia/version`` (``... Kernel Module  580.65.06 ...``), as a tuple of ints."""
    import re

    match = re.search(r"(?<![\d.])(\d{3,})\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


def driver_version() -> tuple[int, ...] | None:
    """The loaded NVIDIA kernel driver's version (``/proc/driver/nvidia/version``), or ``None``."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as handle:
            return parse_driver_version(handle.read())
    except OSError:
        return None


def driver_problem(cuda_version: str | None, driver: tuple[int, ...] | None) -> str:
    """What is wrong with the driver for an onnxruntime-gpu built with ``cuda_version`` ("" if nothing)."""
    if driver is None:
        return "no NVIDIA driver is loaded (no /proc/driver/nvidia/version): no GPU, or the driver is not installed"
    if not cuda_version:
        return ""
    try:
        major = int(str(cuda_version).split(".")[0])
    except ValueError:
        return ""
    needed = MIN_DRIVER_FOR_CUDA.get(major)
    if needed and driver[0] < needed:
        return (
            f"onnxruntime-gpu is built for CUDA {cuda_version}, which needs NVIDIA driver >= {needed}; "
            f"this machine has {'.'.join(map(str, driver))}"
        )
    return ""


def library_problems(log_lines: list[str]) -> list[str]:
    """The lines of ONNX Runtime's log or of ``preload_dlls()`` that say a CUDA/cuDNN/TensorRT
    library could not be loaded."""
    keys = ("cannot open shared object", "Failed to load", "LoadLibrary", "libcudnn", "libcublas", "libnvinfer",
            "libcudart", "CUDA driver version is insufficient", "no CUDA-capable device", "cudaErrorNoDevice")
    return [line.strip() for line in log_lines if any(key in line for key in keys)]


def unusable_provider_reason(provider: str, log_lines: list[str], cuda_version: str | None,
                             driver: tuple[int, ...] | None) -> str:
    """Why a provider that onnxruntime lists did not end up running the session."""
    reasons = []
    problem = driver_problem(cuda_version, driver)
    if problem:
        reasons.append(problem)
    libraries = library_problems(log_lines)
    if libraries:
        reasons.append("libraries missing: " + " | ".join(libraries[:3]))
    if not reasons:
        reasons.append("ONNX Runtime did not say why" + (f"; its log: {' | '.join(log_lines[-3:])}" if log_lines else ""))
    return f"{provider} is installed but not usable: " + "; ".join(reasons)
