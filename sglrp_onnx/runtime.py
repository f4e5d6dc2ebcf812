"""Run augmented models with ONNX Runtime: :class:`Explainer` and its result, :class:`Explanation`.

``Explainer`` opens a model converted by :func:`sglrp_onnx.convert` (recognised by its metadata),
or converts a plain classifier on the fly and caches the converted file, picks the execution
provider (CUDA when ``onnxruntime-gpu`` and a GPU are there, the CPU otherwise), checks inputs and
targets, and returns logits, probabilities, the explained classes and the relevance maps::

    from sglrp_onnx.runtime import Explainer

    explainer = Explainer("resnet50.onnx", preset="imagenet")        # converts (cached) with SGLRP
    result = explainer.explain_images(["cat.jpg"], targets=["tabby cat"])
    result.relevance.shape          # [1, 3, 224, 224]
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sglrp_onnx.errors import InputError, ModelLoadError, UsageError
from sglrp_onnx.labels import label_of, labels_for, resolve_target
from sglrp_onnx.presets import Preset, get_preset

from sglrp_onnx import metadata as _metadata

# The contract's metadata keys (defined once, in sglrp_onnx.metadata).
KEY_RELEVANCE = _metadata.RELEVANCE_OUTPUT
KEY_IMAGE = _metadata.IMAGE_INPUT
KEY_TARGET = _metadata.TARGET_INPUT
KEY_LOGITS = _metadata.LOGITS_OUTPUT
KEY_EXPLAINED = _metadata.EXPLAINED_CLASS_OUTPUT
KEY_PRESET = _metadata.PRESET
KEY_LAYOUT = _metadata.LAYOUT
KEY_METHOD = _metadata.METHOD

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def default_cache_dir() -> Path:
    """Where converted models are cached: ``$SGLRP_ONNX_CACHE``, else ``$XDG_CACHE_HOME/sglrp-onnx``,
    else ``~/.cache/sglrp-onnx``."""
    env = os.environ.get("SGLRP_ONNX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sglrp-onnx"


def metadata_of(model) -> dict[str, str]:
    """The ``sglrp_onnx.*`` metadata of an ``onnx.ModelProto`` as a dict."""
    return _metadata.read(model)


def is_augmented(model) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto``) was made by :func:`sglrp_onnx.convert`."""
    return KEY_RELEVANCE in _metadata.read(model)


def _load_onnx(model):
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


_CUDA_PRELOADED = False


def _preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN installed from PyPI (nvidia-* wheels); best effort, once."""
    global _CUDA_PRELOADED
    if _CUDA_PRELOADED:
        return
    _CUDA_PRELOADED = True
    import contextlib
    import io

    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            preload()
    except Exception:  # noqa: BLE001 - the libraries may come from the system instead
        pass


def _dims(shape) -> list:
    return [d if isinstance(d, int) and d > 0 else None for d in (shape or [])]


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


@dataclass
class Explanation:
    """What :meth:`Explainer.explain` returns for a batch of ``N`` images.

    Attributes:
        logits: float32 ``[N, K]``, the scores the method starts from.
        probabilities: float32 ``[N, K]``, softmax of the logits.
        explained_class: int64 ``[N]``, the class each relevance map explains.
        relevance: float32, the image input's shape and layout.
        targets: int64 ``[N]``, the targets as requested (-1: the predicted class).
        outputs: the model's original outputs by name.
        layout: ``"NCHW"`` or ``"NHWC"``.
        labels: class names, where known.
        images: the photos as fitted to the input (uint8 ``[N, H, W, 3]``), from
            :meth:`Explainer.explain_images`; else ``None``.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    explained_class: np.ndarray
    relevance: np.ndarray
    targets: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    layout: str = "NCHW"
    labels: Sequence[str] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.explained_class.shape[0])

    @property
    def predicted_class(self) -> np.ndarray:
        """int64 ``[N]``: the argmax of the logits."""
        return self.logits.argmax(axis=1).astype(np.int64)

    def relevance_map(self) -> np.ndarray:
        """float32 ``[N, H, W]``: the relevance summed over the channel axis."""
        axis = 1 if self.layout == "NCHW" else -1
        if self.relevance.ndim != 4:
            return self.relevance.reshape(self.relevance.shape[0], -1)
        return self.relevance.sum(axis=axis, dtype=np.float32)

    def label(self, index: int) -> str:
        return label_of(int(index), self.labels)

    def top_k(self, k: int = 5) -> list[list[dict[str, Any]]]:
        """For each image, the ``k`` most probable classes: dicts with class, label, probability, logit."""
        k = max(1, min(int(k), self.logits.shape[1]))
        order = np.argsort(-self.logits, axis=1, kind="stable")[:, :k]
        return [
            [
                {
                    "class": int(c),
                    "label": self.label(int(c)),
                    "probability": float(self.probabilities[i, c]),
                    "logit": float(self.logits[i, c]),
                }
                for c in row
            ]
            for i, row in enumerate(order)
        ]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Explainer:
    """An augmented model ready to run.

    Args:
        model: an augmented model (made by :func:`sglrp_onnx.convert`) or a plain ONNX classifier,
            as a path, an ``onnx.ModelProto`` or serialized bytes. A plain classifier is converted
            with ``sglrp_onnx.convert(model, **convert_kwargs)``; an augmented one is used as it is
            unless conversion options are given (or a preset other than the recorded one), in which
            case it is converted again.
        providers: ``None`` or ``"auto"`` (CUDA if usable, else CPU), ``"cpu"``, ``"cuda"``, or a
            list for ``onnxruntime.InferenceSession``.
        labels: a labels file, or a list of class names (default: ImageNet names for 1000 classes).
        cache: keep converted models in ``cache_dir`` (default :func:`default_cache_dir`), keyed by
            a hash of the model bytes, the options and the engine version.
        io_binding: use ONNX Runtime IO binding (default: on CUDA only).
        session_options: an ``onnxruntime.SessionOptions``.
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
        **convert_kwargs,
    ):
        proto, path = _load_onnx(model)
        preset_name = convert_kwargs.get("preset")
        self.converted = False
        self.cache_path: Path | None = None
        options = {k: v for k, v in convert_kwargs.items() if v is not None}
        augmented = is_augmented(proto)
        recorded = metadata_of(proto).get(KEY_PRESET) if augmented else None
        # A preset other than the recorded one means other zbox bounds: convert again.
        other_preset = bool(preset_name and recorded and get_preset(preset_name).name != get_preset(recorded).name)
        needs_convert = not augmented or other_preset or any(k != "preset" for k in options)
        if needs_convert:
            if recorded and not any(k in options for k in ("preset", "low", "high")):
                options["preset"] = recorded  # converting again keeps the recorded preprocessing
            proto, path = self._convert(proto, options, cache, cache_dir)
            self.converted = True
        self.model = proto
        self.model_path = path
        self.metadata = metadata_of(proto)
        meta = self.metadata
        self.image_input = meta.get(KEY_IMAGE)
        self.target_input = meta.get(KEY_TARGET, "target")
        self.logits_output = meta.get(KEY_LOGITS, "logits")
        self.explained_output = meta.get(KEY_EXPLAINED, "explained_class")
        self.relevance_output = meta[KEY_RELEVANCE]
        self.method = meta.get(KEY_METHOD)
        preset_name = preset_name or meta.get(KEY_PRESET) or None
        self.preset: Preset | None = get_preset(preset_name) if preset_name else None

        self.session, self.provider = self._make_session(proto, path, providers, session_options)
        self._io_binding = (self.provider == CUDA) if io_binding is None else bool(io_binding)
        self._device_id = self._cuda_device_id()

        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if self.image_input is None:
            floats = [n for n, i in inputs.items() if n != self.target_input and "float" in i.type]
            if len(floats) != 1:
                raise ModelLoadError("the model's metadata does not name its image input (sglrp_onnx.image_input)")
            self.image_input = floats[0]
        for name, what in ((self.image_input, "image input"), (self.target_input, "target input")):
            if name not in inputs:
                raise ModelLoadError(f"the model has no {what} {name!r} although its metadata names it")
        for name in (self.logits_output, self.explained_output, self.relevance_output):
            if name not in outputs:
                raise ModelLoadError(f"the model has no output {name!r} although its metadata names it")
        extra = [n for n in inputs if n not in (self.image_input, self.target_input)]
        if extra:
            raise ModelLoadError(f"the model has inputs besides the image and the target ({', '.join(extra)}); not supported")
        image = inputs[self.image_input]
        self.input_shape = list(image.shape)
        self.input_dtype = np.dtype(_ORT_DTYPES.get(image.type, np.float32))
        self.output_names = outputs
        self.original_outputs = [
            n for n in outputs if n not in (self.logits_output, self.explained_output, self.relevance_output)
        ]
        layout = meta.get(KEY_LAYOUT)
        if layout not in ("NCHW", "NHWC"):
            dims = _dims(self.input_shape)
            layout = "NHWC" if len(dims) == 4 and dims[-1] in (1, 3, 4) and dims[1] not in (1, 3, 4) else "NCHW"
        self.layout = layout
        logits_meta = next(o for o in self.session.get_outputs() if o.name == self.logits_output)
        k = _dims(logits_meta.shape)
        self.num_classes: int | None = k[1] if len(k) == 2 else None
        if isinstance(labels, (str, os.PathLike)) or labels is None:
            self.labels = labels_for(self.num_classes, labels)
        else:
            self.labels = list(labels)
            if self.num_classes is not None and len(self.labels) != self.num_classes:
                raise UsageError(f"{len(self.labels)} labels given but the model has {self.num_classes} classes")

    # -- construction helpers -------------------------------------------------------------

    def _convert(self, proto, options: dict, cache: bool, cache_dir):
        import sglrp_onnx

        convert = getattr(sglrp_onnx, "convert", None)
        if convert is None:  # pragma: no cover - only while the engine is missing
            raise UsageError("this installation of sglrp_onnx has no convert(); cannot convert the model")
        engine = getattr(sglrp_onnx, "__version__", "unknown")
        cache_file = None
        if cache:
            digest = hashlib.sha256()
            digest.update(proto.SerializeToString())
            digest.update(json.dumps({"engine": engine, "options": options}, sort_keys=True, default=repr).encode())
            folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            cache_file = folder / f"{digest.hexdigest()[:32]}.onnx"
            if cache_file.is_file():
                try:
                    from sglrp_onnx.io import load_model

                    cached = load_model(cache_file)  # cache files are files too: same safety checks
                    if is_augmented(cached):
                        self.cache_path = cache_file
                        return cached, cache_file
                except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
                    pass
        converted = convert(proto, **options)
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                sglrp_onnx.save(converted, cache_file, force=True)
                self.cache_path = cache_file
                return converted, cache_file
            except Exception as error:  # noqa: BLE001 - caching is best effort
                warnings.warn(f"could not cache the converted model in {cache_file.parent}: {error}", stacklevel=3)
        return converted, None

    @staticmethod
    def _provider_list(providers) -> list | None:
        if providers is None or providers == "auto":
            return None
        if isinstance(providers, str):
            key = providers.lower()
            if key in ("cpu", CPU.lower()):
                return [CPU]
            if key in ("cuda", "gpu", CUDA.lower()):
                return [CUDA, CPU]
            return [providers]
        return list(providers)

    def _make_session(self, proto, path, providers, session_options):
        import onnxruntime as ort

        # ONNX Runtime gets the bytes of the model that was checked, not the path to read again;
        # only a model over the protobuf limit (external data) is opened from its file.
        from sglrp_onnx.io import MAX_PROTOBUF_BYTES

        too_big = proto.ByteSize() > MAX_PROTOBUF_BYTES
        source = os.fspath(path) if (path is not None and too_big) else proto.SerializeToString()
        options = session_options
        if options is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
        wanted = self._provider_list(providers)
        self.provider_note = ""

        def make(provider_list):
            try:
                return ort.InferenceSession(source, sess_options=options, providers=provider_list)
            except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
                raise ModelLoadError(f"ONNX Runtime cannot load the model: {error}") from None

        names = [p[0] if isinstance(p, tuple) else p for p in (wanted or [])]
        if CUDA in ort.get_available_providers() and (wanted is None or CUDA in names):
            _preload_cuda_libraries()
        if wanted is None:
            if CUDA in ort.get_available_providers():
                try:
                    session = ort.InferenceSession(source, sess_options=options, providers=[CUDA, CPU])
                    if session.get_providers()[0] == CUDA:
                        return session, CUDA
                    self.provider_note = "onnxruntime-gpu is installed but CUDA is not usable here"
                except Exception as error:  # noqa: BLE001
                    self.provider_note = f"CUDA session failed ({error}); using the CPU"
            session = make([CPU])
            return session, session.get_providers()[0]
        if CUDA in names and CUDA not in ort.get_available_providers():
            raise UsageError(
                "the CUDA provider was asked for but this onnxruntime has none "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu instead of onnxruntime"
            )
        session = make(wanted)
        active = session.get_providers()[0]
        if names and names[0] == CUDA and active != CUDA:
            raise UsageError("the CUDA provider was asked for but could not be used (no GPU or CUDA libraries?)")
        return session, active

    def _cuda_device_id(self) -> int:
        if self.provider != CUDA:
            return 0
        try:
            opts = self.session.get_provider_options().get(CUDA, {})
            return int(opts.get("device_id", 0))
        except Exception:  # noqa: BLE001
            return 0

    # -- properties -----------------------------------------------------------------------

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) of the image input where static, else ``None``."""
        dims = _dims(self.input_shape)
        if len(dims) != 4:
            return None
        h, w = (dims[2], dims[3]) if self.layout == "NCHW" else (dims[1], dims[2])
        return (h, w) if h and w else None

    @property
    def static_batch(self) -> int | None:
        dims = _dims(self.input_shape)
        return dims[0] if dims else None

    def label(self, index: int) -> str:
        return label_of(int(index), self.labels)

    def __repr__(self) -> str:
        return (
            f"Explainer(method={self.method!r}, provider={self.provider!r}, input={self.image_input!r} "
            f"{_shape_text(self.input_shape)}, layout={self.layout!r}, classes={self.num_classes})"
        )

    # -- validation -----------------------------------------------------------------------

    def check_images(self, images) -> np.ndarray:
        """The batch as the model wants it, or an :class:`InputError` saying what is wrong."""
        if not isinstance(images, np.ndarray):
            raise InputError(
                f"images must be a numpy array shaped {_shape_text(self.input_shape)}, got {type(images).__name__}; "
                "use explain_images() for photos, file paths or PIL images"
            )
        if images.dtype != self.input_dtype:
            hint = (
                " (uint8 pixels need preprocessing: use explain_images() or a preset's preprocess())"
                if images.dtype == np.uint8
                else f" (use .astype(np.{self.input_dtype.name}))"
            )
            raise InputError(f"images must have dtype {self.input_dtype.name}, got {images.dtype}{hint}")
        if images.ndim != len(self.input_shape):
            raise InputError(
                f"images must have {len(self.input_shape)} dimensions {_shape_text(self.input_shape)}, "
                f"got shape {list(images.shape)}"
                + (" (add the batch axis: images[None])" if images.ndim == len(self.input_shape) - 1 else "")
            )
        if images.shape[0] == 0:
            raise InputError("the batch is empty")
        for axis, (want, got) in enumerate(zip(_dims(self.input_shape), images.shape)):
            if axis == 0 or want is None:
                continue
            if want != got:
                hint = ""
                if len(images.shape) == 4 and sorted(images.shape[1:]) == sorted(d for d in _dims(self.input_shape)[1:] if d):
                    hint = f" (the model's layout is {self.layout})"
                raise InputError(
                    f"images have shape {list(images.shape)} but the model takes {_shape_text(self.input_shape)}: "
                    f"axis {axis} must be {want}{hint}"
                )
        if not np.isfinite(images).all():
            raise InputError("images contain NaN or infinite values")
        return np.ascontiguousarray(images)

    def check_targets(self, targets, n: int) -> np.ndarray:
        """int64 ``[n]`` targets (-1: predicted) from ``None``, one target, or ``n`` of them."""
        if targets is None:
            return np.full(n, -1, dtype=np.int64)
        if isinstance(targets, (str, int, np.integer)) or (isinstance(targets, np.ndarray) and targets.ndim == 0):
            values = [targets.item() if isinstance(targets, np.ndarray) else targets] * n
        else:
            if isinstance(targets, np.ndarray):
                if targets.ndim != 1:
                    raise InputError(f"targets must be one-dimensional, got shape {list(targets.shape)}")
                if targets.dtype.kind == "f":
                    if not np.all(np.isfinite(targets)) or not np.all(targets == np.round(targets)):
                        raise InputError("targets must be integers (class indices) or class names")
                    targets = targets.astype(np.int64)
                elif targets.dtype.kind not in "iuUO":
                    raise InputError(f"targets must be integers or class names, got dtype {targets.dtype}")
            values = list(targets)
            if len(values) != n:
                raise InputError(f"{len(values)} targets for {n} images: give one target, or one per image")
        resolved = []
        for value in values:
            if isinstance(value, (float, np.floating)):
                if not float(value).is_integer():
                    raise InputError(f"target {value!r} is not an integer class index")
                value = int(value)
            resolved.append(resolve_target(value, self.labels, self.num_classes))
        return np.asarray(resolved, dtype=np.int64)

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
        n = x.shape[0]
        t = self.check_targets(targets, n)
        step = self.static_batch or batch_size or n
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        pieces: list[dict[str, np.ndarray]] = []
        for start in range(0, n, step):
            xs, ts = x[start : start + step], t[start : start + step]
            m = xs.shape[0]
            if self.static_batch and m < self.static_batch:  # pad a fixed-size batch with copies
                pad = self.static_batch - m
                xs = np.concatenate([xs, np.repeat(xs[-1:], pad, axis=0)])
                ts = np.concatenate([ts, np.repeat(ts[-1:], pad)])
            out = self._run(xs, ts)
            pieces.append({k: v[:m] if v.ndim and v.shape[0] == xs.shape[0] else v for k, v in out.items()})
        merged = {k: np.concatenate([p[k] for p in pieces]) if pieces[0][k].ndim else pieces[0][k] for k in pieces[0]}
        logits = merged[self.logits_output].astype(np.float32, copy=False)
        logits = logits.reshape(logits.shape[0], -1)
        explained = merged[self.explained_output].astype(np.int64, copy=False)
        bad = np.flatnonzero((t >= 0) & (explained < 0))
        if bad.size:  # only reachable when the class count was not known in advance
            raise InputError(
                f"target {int(t[bad[0]])} is out of range: the model has {logits.shape[1]} classes "
                f"(0..{logits.shape[1] - 1})"
            )
        return Explanation(
            logits=logits,
            probabilities=softmax(logits),
            explained_class=explained,
            relevance=merged[self.relevance_output],
            targets=t,
            outputs={k: merged[k] for k in self.original_outputs},
            layout=self.layout,
            labels=self.labels,
        )

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
        from sglrp_onnx.presets import _as_list, fit_image

        if self.preset is None:
            raise UsageError(
                "the model records no preprocessing preset: give preset=... (imagenet, caffe, tf, "
                "efficientnet-lite, raw) or preprocess the images yourself and call explain()"
            )
        if len(self.input_shape) != 4:
            raise UsageError("explain_images() needs a model whose image input is 4-D (NCHW or NHWC)")
        hw = self.input_size or (size if size is not None else 224)
        pixels = np.stack([fit_image(img, hw, fit) for img in _as_list(images)])
        x = self.preset.normalize(pixels, self.layout).astype(self.input_dtype, copy=False)
        result = self.explain(x, targets, batch_size=batch_size)
        result.images = pixels
        return result

    def _run(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {self.image_input: x, self.target_input: t}
        if not self._io_binding:
            values = self.session.run(self.output_names, feeds)
            return dict(zip(self.output_names, values))
        import onnxruntime as ort

        binding = self.session.io_binding()
        device = "cuda" if self.provider == CUDA else "cpu"
        for name, value in feeds.items():
            if device == "cuda":
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", self._device_id))
            else:
                binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, values))


def explainers_for_methods(
    model,
    methods: Sequence[str] = ("lrp", "clrp", "sglrp"),
    providers=None,
    common: Mapping[str, Any] | None = None,
    **kwargs,
) -> dict[str, Explainer]:
    """One :class:`Explainer` per method, converted from the same model (for side-by-side views).

    ``contrast`` in ``common`` is not passed to ``lrp``, which has none.
    """
    proto, _ = _load_onnx(model)
    result = {}
    for method in methods:
        options = dict(common or {})
        if method == "lrp":
            options.pop("contrast", None)
        result[method] = Explainer(proto, providers, method=method, **options, **kwargs)
    return result
