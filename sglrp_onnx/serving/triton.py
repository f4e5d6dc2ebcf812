"""A Triton Inference Server model repository for an augmented model (onnxruntime backend).

Triton (https://github.com/triton-inference-server/server) loads models from a folder laid out as
``REPOSITORY/<name>/config.pbtxt`` plus ``REPOSITORY/<name>/<version>/model.onnx``. The config is
a text-format ``inference.ModelConfig`` protobuf (schema: ``model_config.proto`` in Triton's
``common`` repository; Python bindings in ``tritonclient.grpc.model_config_pb2``). This module
derives it from the augmented model itself, so that the names, types and shapes Triton checks
requests against are exactly those of the contract (SPEC section 2): the image input and
``target``; the original outputs, ``logits``, ``explained_class`` and ``relevance``.

Batching: with ``max_batch_size > 0`` Triton's ``dims`` leave out the batch axis, which every
input and output must have first and leave dynamic. The 1-D contract tensors (``target``,
``explained_class``: ``[N]``) then have no dims left; Triton wants at least one, so they are
declared ``dims: [1]`` with ``reshape { shape: [] }`` (Triton's documented way for per-request
scalars). With ``max_batch_size: 0`` the dims are the model's full shapes and Triton does not
batch requests.

The config also carries the model's preprocessing and contract names as ``parameters``
(``sglrp_onnx.preset``, ``sglrp_onnx.layout``, ...), so a client that reads the config from the
server (``get_model_config``) knows how to prepare images without the ONNX file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import onnx

from sglrp_onnx import metadata as _metadata
from sglrp_onnx.errors import ModelLoadError, OutputError, UnsupportedModelError, UsageError

#: Model file name inside a version folder; the onnxruntime backend's default.
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
BACKEND = "onnxruntime"

#: ONNX element type -> Triton ``DataType`` (model_config.proto).
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}

#: Metadata copied into the config's ``parameters``: what a client needs to prepare a request.
CLIENT_METADATA = (
    _metadata.PRESET,
    _metadata.LAYOUT,
    _metadata.METHOD,
    _metadata.IMAGE_INPUT,
    _metadata.TARGET_INPUT,
    _metadata.LOGITS_OUTPUT,
    _metadata.EXPLAINED_CLASS_OUTPUT,
    _metadata.RELEVANCE_OUTPUT,
    _metadata.VERSION,
)


@dataclass(frozen=True)
class TensorConfig:
    """One ``input`` or ``output`` entry of a Triton model config."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass
class TritonConfig:
    """A Triton model config (the parts this project writes); :meth:`to_text` gives ``config.pbtxt``."""

    name: str
    max_batch_size: int
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]
    instances: int = 1
    gpu: bool = False
    max_queue_delay_us: int = 1000
    parameters: dict[str, str] = field(default_factory=dict)

    def to_text(self) -> str:
        """The config in protobuf text format, as Triton reads ``config.pbtxt``."""
        lines = [
            f"name: {_quote(self.name)}",
            f"backend: {_quote(BACKEND)}",
            f"default_model_filename: {_quote(MODEL_FILE)}",
            f"max_batch_size: {self.max_batch_size}",
        ]
        lines += _tensor_block("input", self.inputs)
        lines += _tensor_block("output", self.outputs)
        if self.max_batch_size > 0:  # Triton rejects dynamic_batching without batching
            lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {self.max_queue_delay_us}", "}"]
        kind = "KIND_GPU" if self.gpu else "KIND_CPU"
        lines += ["instance_group [", "  {", f"    count: {self.instances}", f"    kind: {kind}", "  }", "]"]
        for key, value in self.parameters.items():
            lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; UTF-8 passes as it is)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _int_list(values: tuple[int, ...]) -> str:
    return "[ " + ", ".join(map(str, values)) + " ]" if values else "[ ]"


def _tensor_block(kind: str, tensors: list[TensorConfig]) -> list[str]:
    lines = [f"{kind} ["]
    for index, tensor in enumerate(tensors):
        lines += [
            "  {",
            f"    name: {_quote(tensor.name)}",
            f"    data_type: {tensor.data_type}",
            f"    dims: {_int_list(tensor.dims)}",
        ]
        if tensor.reshape is not None:
            lines.append(f"    reshape {{ shape: {_int_list(tensor.reshape)} }}")
        lines.append("  }" + ("," if index < len(tensors) - 1 else ""))
    lines.append("]")
    return lines


# -- from the ONNX model ------------------------------------------------------------------------


def _shape_of(value: onnx.ValueInfoProto) -> list[int | None]:
    """The declared shape: ints for fixed axes, ``None`` for symbolic or unknown ones."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise UnsupportedModelError(
            f"tensor {value.name!r} has no declared shape; Triton needs the rank of every input and output"
        )
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def _data_type(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in TRITON_TYPES:
        raise UnsupportedModelError(
            f"tensor {value.name!r} has ONNX element type {onnx.TensorProto.DataType.Name(elem)}, "
            "which Triton's model config cannot declare"
        )
    return TRITON_TYPES[elem]


def _tensor_config(value: onnx.ValueInfoProto, batching: bool) -> TensorConfig:
    shape = _shape_of(value)
    data_type = _data_type(value)
    if not batching:
        return TensorConfig(value.name, data_type, tuple(-1 if d is None else d for d in shape))
    if not shape:
        raise UnsupportedModelError(
            f"tensor {value.name!r} is a scalar (no batch axis); with --max-batch > 0 every input and output "
            "needs the batch axis first: use --max-batch 0"
        )
    if shape[0] is not None:
        raise UsageError(
            f"tensor {value.name!r} has a fixed batch size of {shape[0]} (shape {_shape_text(shape)}), but "
            "Triton's batching (--max-batch > 0) needs a dynamic batch axis: re-export the model with a dynamic "
            "batch axis (e.g. torch.onnx.export(..., dynamic_axes={'input': {0: 'N'}})), or pass --max-batch 0 "
            "to serve it without batching"
        )
    rest = tuple(-1 if d is None else d for d in shape[1:])
    if not rest:  # [N]: Triton wants at least one dim; [1] per request, reshaped to a scalar
        return TensorConfig(value.name, data_type, (1,), reshape=())
    return TensorConfig(value.name, data_type, rest)


def _shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _contract(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata, checked to describe an augmented model whose tensors exist."""
    meta = _metadata.read(model)
    if _metadata.RELEVANCE_OUTPUT not in meta:
        raise UnsupportedModelError("the model is not an augmented model (no sglrp_onnx.relevance_output metadata)")
    inputs = {v.name for v in model.graph.input}
    outputs = {v.name for v in model.graph.output}
    wanted = [
        (_metadata.IMAGE_INPUT, inputs, "input"),
        (_metadata.TARGET_INPUT, inputs, "input"),
        (_metadata.LOGITS_OUTPUT, outputs, "output"),
        (_metadata.EXPLAINED_CLASS_OUTPUT, outputs, "output"),
        (_metadata.RELEVANCE_OUTPUT, outputs, "output"),
    ]
    for key, names, what in wanted:
        if key in meta and meta[key] not in names:
            raise ModelLoadError(f"the model has no {what} {meta[key]!r} although its metadata ({key}) names it")
    return meta


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs (IR < 4 models also list their initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def triton_config(
    model: onnx.ModelProto,
    name: str,
    *,
    max_batch: int = 8,
    instances: int = 1,
    gpu: bool = False,
    max_queue_delay_us: int = 1000,
) -> TritonConfig:
    """The Triton model config of an augmented model (see the module docstring).

    Args:
        model: a model made by :func:`sglrp_onnx.convert`.
        name: the model's name in the repository (its folder name).
        max_batch: Triton's ``max_batch_size``; ``> 0`` enables dynamic batching and needs a
            dynamic batch axis on every input and output; ``0`` serves the model's shapes as they are.
        instances: model instances (ONNX Runtime sessions) Triton runs side by side.
        gpu: ``KIND_GPU`` instances (the onnxruntime backend's CUDA provider) instead of ``KIND_CPU``.
        max_queue_delay_us: how long Triton may hold a request to batch it with later ones.

    Raises:
        UsageError: a bad option, or batching asked for a model with a fixed batch size.
        UnsupportedModelError: not an augmented model, or a tensor Triton's config cannot declare.
    """
    if not isinstance(max_batch, int) or max_batch < 0:
        raise UsageError(f"max batch size must be 0 (no batching) or more, got {max_batch}")
    if not isinstance(instances, int) or instances < 1:
        raise UsageError(f"instances must be at least 1, got {instances}")
    if max_queue_delay_us < 0:
        raise UsageError(f"the queue delay must be 0 or more microseconds, got {max_queue_delay_us}")
    check_model_name(name)
    meta = _contract(model)
    batching = max_batch > 0
    inputs = [_tensor_config(v, batching) for v in _graph_inputs(model)]
    outputs = [_tensor_config(v, batching) for v in model.graph.output]
    parameters = {key: meta[key] for key in CLIENT_METADATA if key in meta}
    return TritonConfig(name, max_batch, inputs, outputs, instances, gpu, max_queue_delay_us, parameters)


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_model_name(name: str) -> str:
    """``name`` if it can be a model folder name (letters, digits, ``_ . -``), else a UsageError."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise UsageError(
            f"model name {name!r} is not usable as a Triton model folder: use letters, digits, '_', '.' and '-'"
        )
    return name


def model_name_from_path(path: str | os.PathLike) -> str:
    """A model name from a file name: its stem with anything but letters, digits, ``_ -`` made ``_``."""
    stem = Path(path).name
    for suffix in (".onnx",):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    name = re.sub(r"[^A-Za-z0-9_-]", "_", stem).strip("_") or "model"
    return name if name[0].isalnum() else "m" + name


# -- conversion and writing -----------------------------------------------------------------------


def _load(source) -> onnx.ModelProto:
    from sglrp_onnx.io import load_model

    return load_model(source)


def augmented_model(model, convert_options: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """The augmented model to serve: ``model`` itself when it is one and no options are given,
    else ``sglrp_onnx.convert(model, **convert_options)`` (a plain classifier, or converting again)."""
    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    options = {k: v for k, v in (convert_options or {}).items() if v is not None}
    if _metadata.RELEVANCE_OUTPUT in _metadata.read(proto) and not options:
        return proto
    from sglrp_onnx import convert

    return convert(proto, **options)


def write_model_repository(
    model,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    version: int = 1,
    max_batch: int = 8,
    instances: int = 1,
    gpu: bool = False,
    max_queue_delay_us: int = 1000,
    convert_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Triton model repository ``out`` holding one model; returns its model folder.

    Writes ``out/<name>/<version>/model.onnx`` (with ``model.onnx.data`` beside it for models
    over 2 GiB) and ``out/<name>/config.pbtxt`` (:func:`triton_config`). ``model`` is an
    augmented model or a plain classifier (path, bytes or ``onnx.ModelProto``); a plain one is
    converted with ``convert_options`` first, as ``sglrp-onnx convert`` does. Everything is
    written into a temporary folder beside ``out`` and renamed to ``out`` at the end: a failure
    leaves nothing behind, and ``out`` must not exist yet.

    Raises:
        OutputError: ``out`` exists, or its parent folder is missing or not writable.
        UsageError, UnsupportedModelError: see :func:`triton_config`; conversion errors as in
            :func:`sglrp_onnx.convert`.
    """
    target = Path(out)
    check_new_folder(target)
    if name is None:
        name = model_name_from_path(model) if isinstance(model, (str, os.PathLike)) else "model"
    if not isinstance(version, int) or version < 1:
        raise UsageError(f"the model version must be a positive integer, got {version}")
    check_model_name(name)
    proto = model if isinstance(model, onnx.ModelProto) else _load(model)
    if max_batch > 0:  # before a conversion that may take long: the batch axis stays as it is
        for value in _graph_inputs(proto):
            _tensor_config(value, batching=True)
    proto = augmented_model(proto, convert_options)
    config = triton_config(
        proto, name, max_batch=max_batch, instances=instances, gpu=gpu, max_queue_delay_us=max_queue_delay_us
    )
    _write_atomically(target, lambda folder: _write_model(folder / name, version, proto, config))
    return target / name


def check_new_folder(target: Path) -> None:
    """Raise :class:`OutputError` unless ``target`` is free and its parent folder writable."""
    if target.exists() or target.is_symlink():
        raise OutputError(
            f"{target}: already exists; give a new folder (to add a model to an existing repository, "
            "write it to a new folder and move its model folder in)"
        )
    from sglrp_onnx.io import check_parent_writable

    check_parent_writable(target)


def _write_model(folder: Path, version: int, model: onnx.ModelProto, config: TritonConfig) -> None:
    from sglrp_onnx.io import atomic_write_bytes, save_model

    version_folder = folder / str(version)
    version_folder.mkdir(parents=True)
    save_model(model, version_folder / MODEL_FILE)
    atomic_write_bytes(folder / CONFIG_FILE, config.to_text().encode("utf-8"))


def _write_atomically(target: Path, fill) -> None:
    """Run ``fill(temp_folder)``, then rename the folder to ``target``; remove it on any failure."""
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as error:
        raise OutputError(f"{target}: cannot write into '{target.parent}': {error.strerror or error}") from None
    try:
        fill(temp)
        _open_permissions(temp)
        try:
            # rename() would silently replace an empty folder made meanwhile; a non-empty one fails
            os.rename(temp, target)
        except OSError as error:
            raise OutputError(f"{target}: cannot create it: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _open_permissions(folder: Path) -> None:
    """mkdtemp makes a 0o700 folder; give the repository the usual permissions (a Triton container
    often runs as another user than the one who wrote the files)."""
    from sglrp_onnx.io import _umask

    mode = 0o777 & ~_umask()
    os.chmod(folder, mode)
    for root, dirs, _files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), mode)
