"""Run augmented models with ONNX Runtime.

The parts, one concern each (docs/design.md, "Runtime"):

- :mod:`.contract`: the model's metadata, tensor names, shapes and layout (:class:`ModelIO`);
- :mod:`.cache`: convert a plain classifier on the fly and cache the converted file;
- :mod:`.providers`: execution providers, their options (:class:`RuntimeOptions`), fallback reasons;
- :mod:`.session`: ONNX Runtime sessions: which provider really runs, and why;
- :mod:`.placement`: where ONNX Runtime ran each node, from a profiled run (:class:`PlacementReport`);
- :mod:`.binding`: IO binding with device buffers reused across batches;
- :mod:`.inputs`: photos -> model input (:class:`Preprocessing`), checks of batches and targets;
- :mod:`.step`: :class:`ExplainStep`, one session + the explain step (what a worker holds);
- :mod:`.result`: :class:`Explanation`;
- :mod:`.explainer`: :class:`Explainer`, which composes them.

A worker process (a Ray actor, a serving process) needs only an :class:`ExplainStep` on an already
converted model and the :class:`Preprocessing` of the driver::

    step = ExplainStep.open("model.sglrp.onnx", "auto")
    x, photos = preprocessing(["a.jpg", "b.jpg"])          # Preprocessing from Explainer.preprocessing()
    result = step.explain(x, targets=[-1, 285])
"""

from sglrp_onnx.runtime.cache import cache_key, convert_cached, default_cache_dir
from sglrp_onnx.runtime.contract import (
    KEY_EXPLAINED,
    KEY_IMAGE,
    KEY_LAYOUT,
    KEY_LOGITS,
    KEY_METHOD,
    KEY_PRESET,
    KEY_RELEVANCE,
    KEY_TARGET,
    ModelIO,
    is_augmented,
    metadata_of,
)
from sglrp_onnx.runtime.explainer import Explainer, explainers_for_methods
from sglrp_onnx.runtime.inputs import Preprocessing, check_images, check_targets
from sglrp_onnx.runtime.result import Explanation, softmax
from sglrp_onnx.runtime.placement import PlacementReport, parse_profile
from sglrp_onnx.runtime.providers import CPU, CUDA, TENSORRT, RuntimeOptions
from sglrp_onnx.runtime.session import open_session
from sglrp_onnx.runtime.step import ExplainStep

__all__ = [
    "CPU",
    "CUDA",
    "TENSORRT",
    "PlacementReport",
    "RuntimeOptions",
    "parse_profile",
    "ExplainStep",
    "Explainer",
    "Explanation",
    "ModelIO",
    "Preprocessing",
    "cache_key",
    "check_images",
    "check_targets",
    "convert_cached",
    "default_cache_dir",
    "explainers_for_methods",
    "is_augmented",
    "metadata_of",
    "open_session",
    "softmax",
    "KEY_EXPLAINED",
    "KEY_IMAGE",
    "KEY_LAYOUT",
    "KEY_LOGITS",
    "KEY_METHOD",
    "KEY_PRESET",
    "KEY_RELEVANCE",
    "KEY_TARGET",
]
