"""Reading ONNX files as untrusted input, and writing outputs atomically.

ONNX files come from anywhere: a model may name external-data files anywhere on disk, declare
absurd tensor sizes, or simply be truncated. :func:`load_model` refuses what it cannot read
safely with a :mod:`sglrp_onnx.errors` exception naming the file; :func:`atomic_write_bytes`
writes to a temporary file beside the target and renames it into place, so that a failure
never leaves half a file behind and never touches an existing one.

What :func:`load_model` checks, in this order, before the engine sees the model:

1. the path names a regular file (not a folder, FIFO or device), not empty, at most 2 GiB;
2. the bytes parse as a ``ModelProto`` that has a graph;
3. ``-1`` dimensions in graph inputs/outputs/value_info (Paddle's exporter writes them for
   dynamic dimensions) become unknown dimensions; declared sizes: no tensor (initializer, attribute, sparse tensor, in subgraphs and functions
   too), no static shape of a graph input/output/value_info, and no constant shape given to
   ``ConstantOfShape`` / ``Expand`` / ``Range`` may exceed :data:`MAX_TENSOR_ELEMENTS`;
4. external data: only files inside the model's own folder (after resolving symbolic links),
   regular files, with offset/length inside the file and exactly the bytes the tensor needs;
   anything else is refused before any external file is opened;
5. the ONNX checker and strict shape inference (``full_check``), and the inferred shapes against
   the same element limit.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from sglrp_onnx.errors import ModelLoadError, OutputError, UnsafeModelError, UsageError

#: Largest number of elements a single tensor may declare (about 16 GiB of float32).
MAX_TENSOR_ELEMENTS = 1 << 32

#: A single protobuf message (an ONNX file without external data) cannot exceed 2 GiB.
MAX_PROTOBUF_BYTES = (1 << 31) - 1

#: Bytes per element of the fixed-size tensor types (4-bit types are handled separately).
_ITEM_BYTES = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT16: 2, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8, onnx.TensorProto.BOOL: 1, onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.UINT32: 4, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.COMPLEX64: 8, onnx.TensorProto.COMPLEX128: 16, onnx.TensorProto.BFLOAT16: 2,
}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"):
    if hasattr(onnx.TensorProto, _name):
        _ITEM_BYTES[getattr(onnx.TensorProto, _name)] = 1
_HALF_BYTE_TYPES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}

#: Ops whose output size is set by a constant shape input: (op type, index of that input).
_SHAPE_INPUTS = (("ConstantOfShape", 0), ("Expand", 1))


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Load and check an ONNX model from a path, bytes, or a ModelProto (which is copied).

    External data is read only from files inside the model's own folder; any other location
    (absolute paths, ``..``, symbolic links out of the folder) raises :class:`UnsafeModelError`
    before anything is read. Every error message starts with the file's path (``<model>`` or
    ``<bytes>`` for in-memory sources).
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        base_dir = None
        label = "<model>"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ModelLoadError("<bytes>: empty, not an ONNX model")
        model = _parse(data, "<bytes>")
        base_dir = None
        label = "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = str(path)
        data = _read_model_file(path, label)
        model = _parse(data, label)
        del data
        base_dir = path.resolve().parent
    else:
        raise UsageError(f"expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}")
    _unknown_for_minus_one(model)
    _check_declared_sizes(model, label)
    _load_external_data(model, base_dir, label)
    _check_model(model, label)
    return model


def _read_model_file(path: Path, label: str) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{label}: no such file") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise ModelLoadError(f"{label}: cannot access the file: {getattr(error, 'strerror', None) or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{label}: is a folder, not an ONNX file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{label}: not a regular file (a device, FIFO or socket); give the path of an .onnx file")
    if info.st_size == 0:
        raise ModelLoadError(f"{label}: empty file, not an ONNX model")
    if info.st_size > MAX_PROTOBUF_BYTES:
        raise ModelLoadError(
            f"{label}: {info.st_size} bytes; an ONNX file cannot exceed 2 GiB (large weights belong in external data files)"
        )
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_PROTOBUF_BYTES + 1)
    except OSError as error:
        raise ModelLoadError(f"{label}: cannot read: {error.strerror or error}") from None
    if not data:
        raise ModelLoadError(f"{label}: empty file, not an ONNX model")
    if len(data) > MAX_PROTOBUF_BYTES:
        raise ModelLoadError(f"{label}: larger than 2 GiB, which an ONNX file cannot be")
    return data


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, RecursionError) as error:
        raise ModelLoadError(f"{label}: not a readable ONNX model (truncated or corrupt file: {error})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{label}: not an ONNX model (no graph found in the file)")
    return model


# -- walking every tensor and graph of a model ------------------------------------------------


def _subgraphs(nodes) -> Iterator[onnx.GraphProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs_in(attribute.g)
            for graph in attribute.graphs:
                yield from _graphs_in(graph)


def _graphs_in(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    yield from _subgraphs(graph.node)


def _all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    yield from _graphs_in(model.graph)
    for function in model.functions:
        yield from _subgraphs(function.node)


def _node_lists(model: onnx.ModelProto):
    for graph in _all_graphs(model):
        yield graph.node
    for function in model.functions:
        yield function.node


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse tensors and attribute tensors, in the
    main graph, its subgraphs (If/Loop/Scan bodies) and local functions."""
    for graph in _all_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for nodes in _node_lists(model):
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield attribute.sparse_tensor.values
                    yield attribute.sparse_tensor.indices
                for sparse in attribute.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices


# -- declared sizes ---------------------------------------------------------------------------


def _element_count(dims) -> int:
    return math.prod(int(d) for d in dims) if len(dims) else 1


def _unknown_for_minus_one(model: onnx.ModelProto) -> None:
    """Clear ``dim_value: -1`` in value infos: Paddle's way of writing a dynamic dimension.

    ONNX writes a dynamic dimension as a ``dim_param`` or as an empty dimension; ``-1`` is not a
    size, so it becomes an empty (unknown) dimension. Other negative sizes stay and are refused.
    """
    for graph in _all_graphs(model):
        for value in (*graph.input, *graph.output, *graph.value_info):
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
                continue
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value == -1:
                    dim.ClearField("dim_value")


def _check_declared_sizes(model: onnx.ModelProto, label: str) -> None:
    for tensor in _all_tensors(model):
        if any(dim < 0 for dim in tensor.dims):
            raise UnsafeModelError(f"{label}: tensor '{tensor.name}' declares a negative dimension {list(tensor.dims)}")
        count = _element_count(tensor.dims)
        if count > MAX_TENSOR_ELEMENTS:
            raise UnsafeModelError(
                f"{label}: tensor '{tensor.name}' declares {count} elements (dims {list(tensor.dims)}), "
                f"more than the limit of {MAX_TENSOR_ELEMENTS}"
            )
    for graph in _all_graphs(model):
        for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
            for value in values:
                _check_value_info(value, f"graph {kind} '{value.name}'", label)
    constants = _small_int_constants(model)
    for nodes in _node_lists(model):
        _check_shape_constants(nodes, constants, label)


def _check_value_info(value: onnx.ValueInfoProto, where: str, label: str) -> None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
    if any(dim < 0 for dim in dims):
        raise UnsafeModelError(f"{label}: {where} declares a negative dimension {dims}")
    count = _element_count([d for d in dims if d > 0])
    if count > MAX_TENSOR_ELEMENTS:
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]
        raise UnsafeModelError(
            f"{label}: {where} has the shape {shape}, {count} elements per "
            f"sample or more, beyond the limit of {MAX_TENSOR_ELEMENTS}"
        )


def _small_int_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Integer constants of at most 64 elements (shape vectors), from initializers and Constant nodes."""
    found: dict[str, np.ndarray] = {}

    def take(name: str, tensor: onnx.TensorProto) -> None:
        if tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return
        if _element_count(tensor.dims) > 64:
            return
        try:
            found[name] = numpy_helper.to_array(tensor).astype(np.int64).reshape(-1)
        except Exception:  # noqa: BLE001 - malformed constants are the checker's business
            pass

    for graph in _all_graphs(model):
        for tensor in graph.initializer:
            take(tensor.name, tensor)
    for node in (node for nodes in _node_lists(model) for node in nodes):
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.HasField("t"):
                    take(node.output[0], attribute.t)
                elif attribute.name == "value_ints":
                    found[node.output[0]] = np.asarray(list(attribute.ints), dtype=np.int64)
    return found


def _check_shape_constants(nodes, constants: dict[str, np.ndarray], label: str) -> None:
    """Refuse nodes whose constant shape inputs ask for absurdly large tensors."""
    for index, node in enumerate(nodes):
        name = node.name or f"{node.op_type}_{index}"
        count = None
        for op_type, position in _SHAPE_INPUTS:
            if node.op_type == op_type and len(node.input) > position and node.input[position] in constants:
                shape = constants[node.input[position]]
                count = _element_count([abs(int(d)) for d in shape])
        if node.op_type == "Range" and len(node.input) == 3 and all(i in constants for i in node.input):
            start, limit, delta = (constants[i] for i in node.input)
            if start.size == limit.size == delta.size == 1 and int(delta[0]) != 0:
                count = max(0, -(-(int(limit[0]) - int(start[0])) // int(delta[0])))
        if count is not None and count > MAX_TENSOR_ELEMENTS:
            raise UnsafeModelError(
                f"{label}: node '{name}' (op {node.op_type}) would create a tensor of {count} elements from "
                f"constant shape values, beyond the limit of {MAX_TENSOR_ELEMENTS}"
            )


# -- external data ----------------------------------------------------------------------------


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    count = _element_count(tensor.dims)
    if tensor.data_type in _HALF_BYTE_TYPES:
        return (count + 1) // 2
    item = _ITEM_BYTES.get(tensor.data_type)
    return None if item is None else count * item


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None, label: str) -> None:
    external = [t for t in _all_tensors(model) if external_data_helper.uses_external_data(t)]
    if not external:
        return
    if base_dir is None:
        raise UnsafeModelError(
            f"{label}: the model keeps tensors in external data files ({external[0].name}); load it from its file path"
        )
    for tensor in external:
        _check_external_tensor(tensor, base_dir, label)
    try:
        external_data_helper.load_external_data_for_model(model, str(base_dir))
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"{label}: cannot read external data: {error}") from None


def _check_external_tensor(tensor: onnx.TensorProto, base_dir: Path, label: str) -> None:
    """Refuse, before anything is opened, external data outside ``base_dir`` or of the wrong size."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    where = f"{label}: tensor '{tensor.name}'"
    if not location:
        raise ModelLoadError(f"{where} is marked as external data but names no file")
    if "\0" in location:
        raise UnsafeModelError(f"{where}: its external data path contains a NUL byte; refused, nothing was read")
    if os.path.isabs(location):
        raise UnsafeModelError(
            f"{where} points to external data outside the model's folder ('{location}', an absolute path); "
            "refused, nothing was read"
        )
    try:
        target = (base_dir / location).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symbolic link loop
        raise UnsafeModelError(f"{where}: external data path '{location}' cannot be resolved ({error}); refused") from None
    if not target.is_relative_to(base_dir):
        raise UnsafeModelError(
            f"{where} points to external data outside the model's folder ('{location}' is {target}); "
            "refused, nothing was read"
        )
    try:
        info = target.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{where}: its external data file '{location}' is missing") from None
    except OSError as error:
        raise ModelLoadError(f"{where}: cannot access external data file '{location}': {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeModelError(f"{where}: external data '{location}' is not a regular file; refused")
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise ModelLoadError(f"{where}: malformed external data offset/length") from None
    size = info.st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        end = offset + (length or 0)
        raise ModelLoadError(f"{where} wants bytes {offset}..{end} of '{location}', which has {size} bytes")
    available = length if length is not None else size - offset
    expected = _expected_bytes(tensor)
    if expected is not None and available != expected:
        raise ModelLoadError(
            f"{where} (dims {list(tensor.dims)}) needs {expected} bytes but its external data in "
            f"'{location}' holds {available} bytes from offset {offset}"
        )


# -- the ONNX checker -------------------------------------------------------------------------


def _one_line(error: Exception, limit: int = 500) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _encoded_size(tensor: onnx.TensorProto) -> int:
    """Bytes of ``tensor`` in the file (raw data plus a generous header), without encoding it."""
    if tensor.raw_data:
        return len(tensor.raw_data) + len(tensor.name) + 16 * len(tensor.dims) + 64
    return tensor.ByteSize()


def _model_size(model: onnx.ModelProto, light: onnx.ModelProto | None = None, large=None) -> int:
    """Bytes of ``model`` encoded, within a few bytes per large tensor, without encoding it
    (protobuf's ``ByteSize`` encodes the whole message, a transient copy of every weight)."""
    from sglrp_onnx.skeleton import large_initializers, skeleton

    light = skeleton(model) if light is None else light
    large = large_initializers(model) if large is None else large
    return light.ByteSize() + sum(_encoded_size(tensor) for tensor in large)


def _check_model(model: onnx.ModelProto, label: str) -> None:
    """The ONNX checker, then strict shape inference (what ``full_check=True`` adds), whose
    inferred shapes must stay within :data:`MAX_TENSOR_ELEMENTS` too (a 1 KB model with
    ``pads=[10**6, ...]`` would otherwise ask for petabytes at run time)."""
    from sglrp_onnx.skeleton import large_initializers, skeleton

    # The checker and shape inference copy the model they are given, and protobuf's ByteSize
    # encodes it: the large weights are sized and checked one at a time, the graph without them
    # as a whole (VGG-16: 2.8 GB -> 1.2 GB peak at load)
    light = skeleton(model)
    large = large_initializers(model)
    if _model_size(model, light, large) > MAX_PROTOBUF_BYTES:
        raise ModelLoadError(
            f"{label}: the model is larger than 2 GiB with its external data, which sglrp-onnx cannot convert "
            "(one ONNX protobuf message is limited to 2 GiB)"
        )
    try:
        for tensor in large:
            onnx.checker.check_tensor(tensor)
        onnx.checker.check_model(light)
    except Exception as error:  # noqa: BLE001 - ValidationError, and ValueError/RuntimeError from the C++ side
        raise ModelLoadError(f"{label}: the model fails the ONNX checker: {_one_line(error)}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except Exception as error:  # noqa: BLE001 - InferenceError and others
        raise ModelLoadError(f"{label}: the model fails the ONNX checker (shape inference): {_one_line(error)}") from None
    producers = {out: node for node in inferred.graph.node for out in node.output}
    for value in inferred.graph.value_info:
        node = producers.get(value.name)
        where = f"tensor '{value.name}'" + (f" (output of node '{node.name}', op {node.op_type})" if node is not None and node.name else "")
        _check_value_info(value, where, label)


# -- writing ----------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Raise :class:`OutputError` now if ``path`` cannot be written (the CLI calls this before a
    long conversion): an existing file without ``force``, a folder, or a missing parent folder."""
    if not str(path):
        raise OutputError("no output path given")
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; give the path of the file to write")
    if (target.exists() or target.is_symlink()) and not force:
        raise OutputError(f"{target}: already exists (use --force / force=True to overwrite)")
    check_parent_writable(target)
    return target


def check_parent_writable(target: Path) -> None:
    """Raise :class:`OutputError` unless the folder that is to hold ``target`` exists and is writable."""
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise OutputError(f"{target}: cannot write: the folder '{folder}' {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: cannot write into the folder '{folder}': permission denied")


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Iterable[bytes], force: bool = False) -> Path:
    """Write ``data`` (bytes, or an iterable of bytes written in turn) to ``path`` through a
    temporary file in the same folder and a rename.

    Without ``force`` an existing file is never replaced (:class:`OutputError`), even when one
    appears while writing (the final step is then a hard link, which fails if the name exists).
    On any failure the temporary file is removed and the target is left as it was. The new file
    gets the usual permissions (``0o666`` minus the umask), not the temporary file's ``0o600``.
    """
    target = check_output_path(path, force)
    folder = target.parent
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise OutputError(f"{target}: cannot write into the folder '{folder}': {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            for part in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                stream.write(part)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())
        if force:
            os.replace(temp_name, target)
        else:
            _link_no_replace(temp_name, target)
    except BaseException as error:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        if isinstance(error, FileExistsError):
            raise OutputError(f"{target}: already exists (use --force / force=True to overwrite)") from None
        if isinstance(error, OSError):
            raise OutputError(f"{target}: cannot write: {error.strerror or error}") from None
        raise
    _sync_folder(folder)
    return target


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field_number: int, length: int) -> bytes:
    """Protobuf key and length of a length-delimited field (wire type 2)."""
    return _varint(field_number << 3 | 2) + _varint(length)


def _copy_fields(source, target, skip: str) -> None:
    """Every set field of protobuf message ``source`` but ``skip`` into ``target``."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        field = getattr(target, descriptor.name)
        if descriptor.label == descriptor.LABEL_REPEATED:
            field.extend(value)
        elif descriptor.message_type is not None:
            field.CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def encoded_parts(model: onnx.ModelProto) -> Iterator[bytes]:
    """``model.SerializeToString()`` in parts: the model without its large initializers, then each
    of them as its own ``graph.initializer`` entry (protobuf concatenates a message's fields, so
    the parts read back as the same model). Only one large tensor is encoded at a time, where
    encoding the whole model holds the serialised file plus protobuf's growing buffer (VGG-16:
    2.8 GB peak -> about the model's own size)."""
    from sglrp_onnx.skeleton import is_large

    tensors = list(model.graph.initializer)
    large = [tensor for tensor in tensors if is_large(tensor)]
    if not large:
        yield model.SerializeToString()
        return
    head = onnx.ModelProto()
    _copy_fields(model, head, skip="graph")
    graph = onnx.GraphProto()
    _copy_fields(model.graph, graph, skip="initializer")
    graph.initializer.extend(tensor for tensor in tensors if not is_large(tensor))
    graph_bytes = graph.SerializeToString()
    sizes = [tensor.ByteSize() for tensor in large]
    total = len(graph_bytes) + sum(len(_length_delimited(5, size)) + size for size in sizes)
    yield head.SerializeToString()
    yield _length_delimited(7, total)  # ModelProto.graph = 7
    yield graph_bytes
    for tensor, size in zip(large, sizes):
        yield _length_delimited(5, size)  # GraphProto.initializer = 5
        yield tensor.SerializeToString()


def _link_no_replace(temp_name: str, target: Path) -> None:
    """Give the temporary file the name ``target`` only if that name is free (no race)."""
    try:
        os.link(temp_name, target)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # A file system without hard links: check, then rename (a small window remains).
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
        os.replace(temp_name, target)
        return
    try:
        os.unlink(temp_name)
    except OSError:
        pass


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False) -> Path:
    """Serialise ``model`` and write it atomically to ``path`` (see :func:`atomic_write_bytes`).

    A model over the 2 GiB a protobuf file can hold is written as ONNX external data: the large
    tensors go to ``<path>.data`` beside it (written first, also atomically), the graph to
    ``path``. If writing the graph fails, a data file this call created is removed again.
    """
    if _model_size(model) <= EXTERNAL_DATA_ABOVE_BYTES:
        return atomic_write_bytes(path, encoded_parts(model), force=force)
    target = check_output_path(path, force)
    data_path = target.with_name(target.name + ".data")
    check_output_path(data_path, force)
    graph_only, data = _split_external_data(model, data_path.name)
    existed = data_path.exists()
    atomic_write_bytes(data_path, data, force=force)
    try:
        return atomic_write_bytes(target, graph_only.SerializeToString(), force=force)
    except BaseException:
        if not existed:
            data_path.unlink(missing_ok=True)
        raise


#: Models larger than this are saved with external data (the protobuf limit; tests lower it).
EXTERNAL_DATA_ABOVE_BYTES = MAX_PROTOBUF_BYTES
#: Tensors at least this large go to the external data file of such a model.
EXTERNAL_DATA_THRESHOLD = 1024


def _split_external_data(model: onnx.ModelProto, location: str) -> tuple[onnx.ModelProto, bytes]:
    """A copy of ``model`` whose large initializers point into one data blob, and that blob."""
    graph_only = onnx.ModelProto()
    graph_only.CopyFrom(model)
    chunks, offset = [], 0
    for tensor in graph_only.graph.initializer:
        if not tensor.HasField("raw_data"):
            continue  # typed fields: small tensors as exporters write them; they stay inline
        raw = tensor.raw_data
        if len(raw) < EXTERNAL_DATA_THRESHOLD:
            continue
        padding = (-offset) % 4096  # page-aligned offsets, as onnx's own writer uses
        chunks.append(b"\0" * padding)
        offset += padding
        chunks.append(raw)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += len(raw)
    if graph_only.ByteSize() > MAX_PROTOBUF_BYTES:
        raise OutputError("the model's graph without its large tensors is still over 2 GiB; it cannot be saved as ONNX")
    return graph_only, b"".join(chunks)
