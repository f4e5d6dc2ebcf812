""":class:`Explainer`: a model ready to explain, composed of the runtime's parts.

``Explainer`` opens a model converted by :func:`sglrp_onnx.convert` (recognised by its metadata),
or converts a plain classifier on the fly and caches the converted file (:mod:`.cache`), opens an
ONNX Runtime session on the best provider (:mod:`.session`), and explains batches with an
:class:`~sglrp_onnx.runtime.step.ExplainStep` after checking them (:mod:`.inputs`)::

    from sglrp_onnx.runtime import Explainer

    explainer = Explainer("resnet50.onnx", preset="imagenet")        # converts (cached) with SGLRP
    result = explainer.explain_images(["cat.jpg"], targets=["tabby cat"])
    result.relevance.shape          # [1, 3, 224, 224]
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sglrp_onnx.errors import UnsupportedModelError, UsageError
from sglrp_onnx.labels import label_of
from sglrp_onnx.presets import Preset, get_preset
from sglrp_onnx.runtime.cache import convert_cached
from sglrp_onnx.runtime.contract import KEY_METHOD, KEY_PRESET, is_augmented, load_onnx, metadata_of, shape_text
from sglrp_onnx.runtime.inputs import Preprocessing, check_images, check_targets
from sglrp_onnx.runtime.result import Explanation
from sglrp_onnx.runtime.providers import RuntimeOptions
from sglrp_onnx.runtime.session import runtime_options, shared_arena_options
from sglrp_onnx.skeleton import skeleton
from sglrp_onnx.runtime.step import ExplainStep


def _io_attribute(name: str, doc: str) -> property:
    """An attribute of the Explainer that reads (and writes) the explain step's :class:`ModelIO`."""
    return property(lambda self: getattr(self.step.io, name), lambda self, value: setattr(self.step.io, name, value), doc=doc)


class Explainer:
    """An augmented model ready to run.

    Args:
        model: an augmented model (made by :func:`sglrp_onnx.convert`) or a plain ONNX classifier,
            as a path, an ``onnx.ModelProto`` or serialized bytes. A plain classifier is converted
            with ``sglrp_onnx.convert(model, **convert_kwargs)``; an augmented one is used as it is
            unless conversion options are given (or a preset other than the recorded one), in which
            case it is converted again.
        providers: ``None`` or ``"auto"`` (CUDA if usable, else CPU), ``"cpu"``, ``"cuda"``,
            ``"tensorrt"`` (TensorRT, CUDA for what TensorRT does not take, CPU last), a
            :class:`~sglrp_onnx.runtime.providers.RuntimeOptions` (provider options: TF32, cuDNN
            algorithm search, CUDA graphs, TensorRT cache, ...), or a list for
            ``onnxruntime.InferenceSession`` (used as it is). A provider asked for by name that
            cannot be used is an error saying why; ``auto`` falls back to the CPU and says why in
            ``provider_note`` (and as a warning when a GPU provider is installed but not usable).
        labels: a labels file, or a list of class names (default: ImageNet names for 1000 classes).
        cache: keep converted models in ``cache_dir`` (default :func:`default_cache_dir`), keyed by
            a hash of the model bytes, the options and the engine version.
        io_binding: use ONNX Runtime IO binding with device buffers reused across batches
            (default: on GPU providers only).
        session_options: an ``onnxruntime.SessionOptions`` (default: ONNX Runtime's warnings are
            captured and passed on as ``RuntimeWarning``).
        deterministic: reproducible choices where ONNX Runtime offers them (see
            :class:`~sglrp_onnx.runtime.providers.RuntimeOptions`; docs/runtime.md says what it
            cannot promise). A plain classifier converted on the fly then gets the scatter-free
            form (``target_runtime="tensorrt"``), as it does for the ``tensorrt`` provider, unless
            ``target_runtime`` is given.
        placement: check where ONNX Runtime placed each node, from one profiled run at start
            (``placement`` attribute): ``auto`` (on GPU providers; float computation on the CPU
            is a warning), ``check`` (on any provider), ``require`` (float computation on the CPU
            of a GPU session is an :class:`~sglrp_onnx.errors.UnsupportedModelError`), ``off``.
        keep_model: keep the augmented model, weights and all, as ``model`` (what Ray ships to its
            workers); False keeps its graph only (:func:`sglrp_onnx.skeleton.skeleton`): the
            session has its own copy of the weights.
        **convert_kwargs: options of :func:`sglrp_onnx.convert` (method, composite, contrast, preset,
            low, high, ...). ``preset`` alone makes an augmented model convert again only when it
            differs from the preset recorded in the model; otherwise it only chooses the
            preprocessing of :meth:`explain_images`.
    """

    def __init__(
        self,
        model,
        providers=None,
        *,
        labels: str | os.PathLike | Sequence[str] | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        io_binding: bool | None = None,
        session_options=None,
        deterministic: bool = False,
        placement: str = "auto",
        keep_model: bool = True,
        **convert_kwargs,
    ):
        proto, path = load_onnx(model)
        preset_name = convert_kwargs.get("preset")
        self.converted = False
        self.cache_path: Path | None = None
        options = {k: v for k, v in convert_kwargs.items() if v is not None}
        request = runtime_options(providers)
        if _needs_conversion(proto, options):
            recorded = metadata_of(proto).get(KEY_PRESET)
            if recorded and not any(k in options for k in ("preset", "low", "high")):
                options["preset"] = recorded  # converting again keeps the recorded preprocessing
            proto, path = _convert_for(proto, options, request, deterministic, cache, cache_dir)
            self.cache_path = path
            self.converted = True
        self.model = proto
        self.model_path = path
        self.metadata = metadata_of(proto)
        self.method = self.metadata.get(KEY_METHOD)
        preset_name = preset_name or self.metadata.get(KEY_PRESET) or None
        self.preset: Preset | None = get_preset(preset_name) if preset_name else None

        if deterministic:
            if not isinstance(request, RuntimeOptions):
                raise UsageError("deterministic=True needs the provider by name or as RuntimeOptions, not a provider list")
            request = replace(request, deterministic=True)
        self.runtime_options = request if isinstance(request, RuntimeOptions) else None
        self.step = ExplainStep.from_proto(proto, path, request, labels=labels, io_binding=io_binding,
                                           session_options=session_options, placement=placement)
        self.session = self.step.session
        if not keep_model:  # the session has its own copy of the weights: keep the graph only
            self.model = skeleton(proto)

    @property
    def provider(self) -> str:
        """The provider that runs the model, as the session reports it (never what was only asked for)."""
        return self.step.provider

    @property
    def provider_note(self) -> str:
        """Why the provider that runs is not the one asked for ("" when it is)."""
        return self.step.provider_note

    @property
    def placement(self):
        """Where ONNX Runtime ran each node (:class:`~sglrp_onnx.runtime.placement.PlacementReport`),
        where a profiled run was made; else ``None``."""
        return self.step.placement

    image_input = _io_attribute("image_input", "Name of the image input.")
    target_input = _io_attribute("target_input", "Name of the target input.")
    logits_output = _io_attribute("logits_output", "Name of the logits output.")
    explained_output = _io_attribute("explained_output", "Name of the explained-class output.")
    relevance_output = _io_attribute("relevance_output", "Name of the relevance output.")
    output_names = _io_attribute("output_names", "Every output name, in the session's order.")
    original_outputs = _io_attribute("original_outputs", "The original classifier's outputs.")
    input_shape = _io_attribute("input_shape", "Shape of the image input (dynamic axes as names or None).")
    input_dtype = _io_attribute("input_dtype", "numpy dtype of the image input.")
    layout = _io_attribute("layout", '"NCHW" or "NHWC".')
    num_classes = _io_attribute("num_classes", "Class count K, or None where the model leaves it dynamic.")

    @property
    def labels(self) -> list[str] | None:
        """Class names, where known."""
        return self.step.labels

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) of the image input where static, else ``None``."""
        return self.step.io.input_size

    @property
    def static_batch(self) -> int | None:
        """The batch size where the model fixes it, else ``None``."""
        return self.step.io.static_batch

    def label(self, index: int) -> str:
        """The name of class ``index``."""
        return label_of(int(index), self.labels)

    def __repr__(self) -> str:
        return (
            f"Explainer(method={self.method!r}, provider={self.provider!r}, input={self.image_input!r} "
            f"{shape_text(self.input_shape)}, layout={self.layout!r}, classes={self.num_classes})"
        )

    # -- validation -----------------------------------------------------------------------

    def check_images(self, images) -> np.ndarray:
        """The batch as the model wants it, or an :class:`InputError` saying what is wrong."""
        return check_images(images, self.step.io)

    def check_targets(self, targets, n: int) -> np.ndarray:
        """int64 ``[n]`` targets (-1: predicted) from ``None``, one target, or ``n`` of them."""
        return check_targets(targets, n, self.labels, self.num_classes)

    def preprocessing(self, fit: str = "crop", size=None) -> Preprocessing:
        """How :meth:`explain_images` and the ``explain`` command turn photos into this model's input."""
        return Preprocessing.for_model(self.step.io, self.preset, fit=fit, size=size)

    # -- running --------------------------------------------------------------------------

    def explain(self, images: np.ndarray, targets=None, batch_size: int | None = None) -> Explanation:
        """Logits, probabilities, explained classes and relevance for a preprocessed batch.

        Args:
            images: the image input as the model takes it (float32, the model's shape and layout).
            targets: ``None`` (explain each image's predicted class), one target for every image, or
                one per image; a target is a class index, a class name, or a negative number (the
                predicted class).
            batch_size: run at most this many images at once (default: all; a model with a fixed
                batch size runs in pieces of that size).

        Raises:
            InputError: wrong array type, dtype or shape, non-finite values, a target out of range
                or an unknown class name.
        """
        x = self.check_images(images)
        t = self.check_targets(targets, x.shape[0])
        return self.step.run(x, t, batch_size)

    def explain_images(
        self,
        images,
        targets=None,
        *,
        fit: str = "crop",
        size: int | Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> Explanation:
        """Like :meth:`explain`, for photos: PIL images, uint8 arrays or file paths.

        The photos are fitted to the model's input size (``fit``: crop, stretch or pad; ``size``
        where the model's size is dynamic, default 224) and normalised with the preset (given to
        the constructor or recorded in the model). The fitted photos are in ``result.images``.
        """
        x, pixels = self.preprocessing(fit=fit, size=size)(images)
        result = self.explain(x, targets, batch_size=batch_size)
        result.images = pixels
        return result


def _convert_for(proto, options: dict, request, deterministic: bool, cache: bool, cache_dir):
    """Convert for the runtime that will run the model: unless ``target_runtime`` is given, the
    TensorRT provider and deterministic mode get the scatter-free form (SPEC section 8: TensorRT
    refuses MaxPool's Indices and scatter reductions; CUDA adds scattered values with atomics, in
    no fixed order). Where a model has no such form, the default form is used and a warning says so."""
    provider = request.provider if isinstance(request, RuntimeOptions) else None
    if "target_runtime" in options or not (provider == "tensorrt" or deterministic):
        return convert_cached(proto, options, cache, cache_dir)
    try:
        return convert_cached(proto, {**options, "target_runtime": "tensorrt"}, cache, cache_dir)
    except UnsupportedModelError as error:
        why = "the TensorRT provider" if provider == "tensorrt" else "deterministic mode"
        warnings.warn(f"converted with the default form, not the scatter-free one {why} asks for: {error}", RuntimeWarning, stacklevel=3)
        return convert_cached(proto, options, cache, cache_dir)


def _needs_conversion(proto, options: dict) -> bool:
    """Whether the model must be converted: it is not augmented, a conversion option is given, or a
    preset other than the recorded one (other zbox bounds)."""
    if not is_augmented(proto):
        return True
    recorded = metadata_of(proto).get(KEY_PRESET)
    preset = options.get("preset")
    if preset and recorded and get_preset(preset).name != get_preset(recorded).name:
        return True
    return any(k != "preset" for k in options)


def options_for_method(options: Mapping[str, Any], method: str) -> dict:
    """Conversion ``options`` for ``method``: ``contrast`` is dropped for ``lrp``, which has none."""
    chosen = dict(options, method=method)
    if method == "lrp":
        chosen.pop("contrast", None)
    return chosen


def explainers_for_methods(
    model,
    methods: Sequence[str] = ("lrp", "clrp", "sglrp"),
    providers=None,
    common: Mapping[str, Any] | None = None,
    **kwargs,
) -> dict[str, Explainer]:
    """One :class:`Explainer` per method, converted from the same model (for side-by-side views).

    ``contrast`` in ``common`` is not passed to ``lrp``, which has none. Unless ``session_options``
    is given, the sessions share one CPU arena (:func:`~sglrp_onnx.runtime.session.shared_arena_options`)
    and, unless ``keep_model`` is given, the explainers keep their model's graph without its
    weights (``Explainer.model``), so that three methods take less than twice the memory of one.
    """
    proto, _ = load_onnx(model)
    result = {}
    for method in methods:
        options = options_for_method(common or {}, method)
        extra = dict(kwargs)
        extra.setdefault("keep_model", False)
        if "session_options" not in extra:
            extra["session_options"] = shared_arena_options()
        result[method] = Explainer(proto, providers, **options, **extra)
    return result
