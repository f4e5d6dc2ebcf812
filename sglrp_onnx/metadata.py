"""``metadata_props`` of a converted model: how it was made and where its contract tensors are.

Every key starts with ``sglrp_onnx.``; values are strings (JSON for structured values). The
runtime reads the tensor names from here, so that a model whose names had to change on a clash
still works, and a converted model can be recognised and converted again.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

KEY_PREFIX = "sglrp_onnx."
VERSION = KEY_PREFIX + "version"
NODE_PREFIX = KEY_PREFIX + "node_prefix"
IMAGE_INPUT = KEY_PREFIX + "image_input"
TARGET_INPUT = KEY_PREFIX + "target_input"
LOGITS_TENSOR = KEY_PREFIX + "logits_tensor"
LOGITS_OUTPUT = KEY_PREFIX + "logits_output"
EXPLAINED_CLASS_OUTPUT = KEY_PREFIX + "explained_class_output"
RELEVANCE_OUTPUT = KEY_PREFIX + "relevance_output"
ORIGINAL_OUTPUTS = KEY_PREFIX + "original_outputs"
PRESET = KEY_PREFIX + "preset"
LAYOUT = KEY_PREFIX + "layout"
METHOD = KEY_PREFIX + "method"


def read(model: onnx.ModelProto) -> dict[str, str]:
    """All ``sglrp_onnx.*`` metadata of ``model`` (empty for a model the engine did not make)."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(KEY_PREFIX)}


def is_augmented(model: onnx.ModelProto) -> bool:
    return VERSION in read(model)


def write(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Replace the model's ``sglrp_onnx.*`` metadata by ``values`` (others are kept)."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(KEY_PREFIX)]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.metadata_props.add(key=KEY_PREFIX + key if not key.startswith(KEY_PREFIX) else key, value=text)
