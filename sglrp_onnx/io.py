"""Reading ONNX files as untrusted input, and writing outputs atomically.

ONNX files come from anywhere: a model may name external-data files anywhere on disk, declare
absurd tensor sizes, or simply be truncated. :func:`load_model` refuses what it cannot read
safely with a :mod:`sglrp_onnx.errors` exception naming the file; :func:`atomic_write_bytes`
writes to a temporary file beside the target and renames it into place, so that a failure
never leaves half a file behind and never touches an existing one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from sglrp_onnx.errors import ModelLoadError, OutputError, UnsafeModelError

#: Largest number of elements a single tensor may declare (about 16 GiB of float32).
MAX_TENSOR_ELEMENTS = 1 << 32


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Load and check an ONNX model from a path, bytes, or a ModelProto (which is copied).

    External data is read only from files inside the model's own folder; any other location
    (absolute paths, ``..``, symbolic links out of the folder) raises :class:`UnsafeModelError`
    before anything is read.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        base_dir = None
        label = "<model>"
    elif isinstance(source, (bytes, bytearray)):
        model = _parse(bytes(source), "<bytes>")
        base_dir = None
        label = "<bytes>"
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise ModelLoadError(f"{label}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{label}: is a folder, not an ONNX file")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ModelLoadError(f"{label}: cannot read: {error.strerror}") from None
        if not data:
            raise ModelLoadError(f"{label}: empty file, not an ONNX model")
        model = _parse(data, label)
        base_dir = path.resolve().parent
    _check_declared_sizes(model, label)
    _load_external_data(model, base_dir, label)
    return model


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{label}: not a readable ONNX model (truncated or corrupt file: {error})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{label}: not an ONNX model (no graph found in the file)")
    return model


def _all_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        yield tensor
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t


def _check_declared_sizes(model: onnx.ModelProto, label: str) -> None:
    for tensor in _all_tensors(model):
        count = 1
        for dim in tensor.dims:
            if dim < 0:
                raise UnsafeModelError(f"{label}: tensor '{tensor.name}' declares a negative dimension {list(tensor.dims)}")
            count *= dim
        if count > MAX_TENSOR_ELEMENTS:
            raise UnsafeModelError(
                f"{label}: tensor '{tensor.name}' declares {count} elements (dims {list(tensor.dims)}), "
                f"more than the limit of {MAX_TENSOR_ELEMENTS}"
            )


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None, label: str) -> None:
    external = [t for t in _all_tensors(model) if external_data_helper.uses_external_data(t)]
    if not external:
        return
    if base_dir is None:
        raise UnsafeModelError(
            f"{label}: the model keeps tensors in external data files ({external[0].name}); load it from its file path"
        )
    for tensor in external:
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location or ""
        target = (base_dir / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base_dir):
            raise UnsafeModelError(
                f"{label}: tensor '{tensor.name}' points to external data outside the model's folder "
                f"('{location}'); refused, nothing was read"
            )
        if not target.is_file():
            raise ModelLoadError(f"{label}: external data file '{location}' of tensor '{tensor.name}' is missing")
        size = target.stat().st_size
        offset = int(info.offset or 0)
        length = int(info.length or 0)
        if offset < 0 or offset > size or (length and offset + length > size):
            raise ModelLoadError(
                f"{label}: tensor '{tensor.name}' wants bytes {offset}..{offset + length} of '{location}', "
                f"which has {size} bytes"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(base_dir))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{label}: cannot read external data: {error}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Without ``force`` an existing file is never replaced (:class:`OutputError`). On any failure
    the temporary file is removed and the target is left as it was.
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputError(f"{target}: already exists (use --force / force=True to overwrite)")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{target}: folder '{folder}' does not exist")
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise OutputError(f"{target}: cannot write into '{folder}': {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if target.exists() and not force:
            raise OutputError(f"{target}: already exists (use --force / force=True to overwrite)")
        os.replace(temp_name, target)
    except BaseException as error:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise OutputError(f"{target}: cannot write: {error.strerror}") from None
        raise
    return target


def save_model(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False) -> Path:
    """Serialise ``model`` and write it atomically to ``path`` (see :func:`atomic_write_bytes`)."""
    data = model.SerializeToString()
    if len(data) >= 2**31 - 1:
        raise OutputError(f"{path}: the model is larger than 2 GiB, which one ONNX protobuf file cannot hold")
    return atomic_write_bytes(path, data, force=force)
