"""The augmented model's contract as the runtime sees it: metadata, tensor names, shapes, layout.

A converted model names its contract tensors in its ``sglrp_onnx.*`` metadata (SPEC section 2,
:mod:`sglrp_onnx.metadata`); :class:`ModelIO` reads them and checks them against what the ONNX
Runtime session reports, so that everything downstream (validation, the explain step) works with
names and shapes that are known to exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sglrp_onnx import metadata as _metadata
from sglrp_onnx.errors import ModelLoadError, UsageError

# The contract's metadata keys (defined once, in sglrp_onnx.metadata).
KEY_RELEVANCE = _metadata.RELEVANCE_OUTPUT
KEY_IMAGE = _metadata.IMAGE_INPUT
KEY_TARGET = _metadata.TARGET_INPUT
KEY_LOGITS = _metadata.LOGITS_OUTPUT
KEY_EXPLAINED = _metadata.EXPLAINED_CLASS_OUTPUT
KEY_PRESET = _metadata.PRESET
KEY_LAYOUT = _metadata.LAYOUT
KEY_METHOD = _metadata.METHOD

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def metadata_of(model) -> dict[str, str]:
    """The ``sglrp_onnx.*`` metadata of an ``onnx.ModelProto`` as a dict."""
    return _metadata.read(model)


def is_augmented(model) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto``) was made by :func:`sglrp_onnx.convert`."""
    return KEY_RELEVANCE in _metadata.read(model)


def load_onnx(model):
    """(ModelProto, path or None) from a ModelProto, a path or serialized bytes.

    Files go through :func:`sglrp_onnx.io.load_model` (untrusted input: external data only from
    the model's own folder, declared sizes checked).
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, None
    if not isinstance(model, (bytes, bytearray, str, os.PathLike)):
        raise UsageError(f"expected an onnx.ModelProto, a path or bytes, got {type(model).__name__}")
    from sglrp_onnx.io import load_model

    proto = load_model(model)
    return proto, (Path(model) if isinstance(model, (str, os.PathLike)) else None)


def dims(shape) -> list:
    """Static sizes of an ONNX Runtime shape; ``None`` for symbolic or unknown dimensions."""
    return [d if isinstance(d, int) and d > 0 else None for d in (shape or [])]


def shape_text(shape) -> str:
    """A shape as users read it: ``[N, 3, 224, 224]`` (``?`` for an unnamed dynamic dimension)."""
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


@dataclass
class ModelIO:
    """Names, shapes and layout of an augmented model's inputs and outputs.

    Attributes:
        image_input, target_input: the input names.
        logits_output, explained_output, relevance_output: the contract's output names.
        output_names: every output, in the session's order.
        original_outputs: the outputs of the original classifier (the others).
        input_shape: the image input's shape (ints for static, strings or None for dynamic axes).
        input_dtype: the image input's numpy dtype (float32, or float16 for float16 models).
        layout: ``"NCHW"`` or ``"NHWC"``.
        num_classes: ``K`` where the logits' class axis is static, else ``None``.
    """

    image_input: str
    target_input: str
    logits_output: str
    explained_output: str
    relevance_output: str
    output_names: list[str]
    original_outputs: list[str]
    input_shape: list
    input_dtype: np.dtype
    layout: str
    num_classes: int | None

    @classmethod
    def from_session(cls, session, metadata: dict[str, str]) -> "ModelIO":
        """Read the names from ``metadata`` and check them against the session's inputs and outputs.

        Raises:
            ModelLoadError: the metadata names a tensor the model lacks, or the model has inputs
                besides the image and the target.
        """
        if KEY_RELEVANCE not in metadata:
            raise ModelLoadError("the model is not an augmented model (no sglrp_onnx.relevance_output metadata)")
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        target_input = metadata.get(KEY_TARGET, "target")
        image_input = metadata.get(KEY_IMAGE)
        if image_input is None:
            floats = [n for n, i in inputs.items() if n != target_input and "float" in i.type]
            if len(floats) != 1:
                raise ModelLoadError("the model's metadata does not name its image input (sglrp_onnx.image_input)")
            image_input = floats[0]
        logits = metadata.get(KEY_LOGITS, "logits")
        explained = metadata.get(KEY_EXPLAINED, "explained_class")
        relevance = metadata[KEY_RELEVANCE]
        for name, what in ((image_input, "image input"), (target_input, "target input")):
            if name not in inputs:
                raise ModelLoadError(f"the model has no {what} {name!r} although its metadata names it")
        for name in (logits, explained, relevance):
            if name not in outputs:
                raise ModelLoadError(f"the model has no output {name!r} although its metadata names it")
        extra = [n for n in inputs if n not in (image_input, target_input)]
        if extra:
            raise ModelLoadError(
                f"the model has inputs besides the image and the target ({', '.join(extra)}); not supported"
            )
        image = inputs[image_input]
        input_shape = list(image.shape)
        logits_meta = next(o for o in session.get_outputs() if o.name == logits)
        k = dims(logits_meta.shape)
        return cls(
            image_input=image_input,
            target_input=target_input,
            logits_output=logits,
            explained_output=explained,
            relevance_output=relevance,
            output_names=outputs,
            original_outputs=[n for n in outputs if n not in (logits, explained, relevance)],
            input_shape=input_shape,
            input_dtype=np.dtype(_ORT_DTYPES.get(image.type, np.float32)),
            layout=_layout(metadata.get(KEY_LAYOUT), input_shape),
            num_classes=k[1] if len(k) == 2 else None,
        )

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) of the image input where static, else ``None``."""
        d = dims(self.input_shape)
        if len(d) != 4:
            return None
        h, w = (d[2], d[3]) if self.layout == "NCHW" else (d[1], d[2])
        return (h, w) if h and w else None

    @property
    def static_batch(self) -> int | None:
        """The batch size where the model fixes it, else ``None``."""
        d = dims(self.input_shape)
        return d[0] if d else None


def _layout(recorded: str | None, input_shape: list) -> str:
    """The recorded layout, else a guess from the shape (channels last when the last axis is 1, 3 or 4)."""
    if recorded in ("NCHW", "NHWC"):
        return recorded
    d = dims(input_shape)
    return "NHWC" if len(d) == 4 and d[-1] in (1, 3, 4) and d[1] not in (1, 3, 4) else "NCHW"
