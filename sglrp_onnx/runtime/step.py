"""The explain step: one ONNX Runtime session that maps a preprocessed batch and targets to an
:class:`~sglrp_onnx.runtime.Explanation`.

:class:`ExplainStep` is all a worker process needs to hold (a Ray actor, a serving process): open
it on an already converted model (:meth:`ExplainStep.open`), feed it batches prepared by
:class:`~sglrp_onnx.runtime.Preprocessing`. Conversion, caching and photo handling live elsewhere
(:class:`~sglrp_onnx.runtime.Explainer` composes them).
"""

from __future__ import annotations

import os

import numpy as np

from sglrp_onnx.errors import InputError, UsageError
from sglrp_onnx.labels import label_of, labels_for
from sglrp_onnx.runtime.contract import ModelIO, load_onnx, metadata_of
from sglrp_onnx.runtime.inputs import check_images, check_targets
from sglrp_onnx.runtime.binding import BoundBuffers
from sglrp_onnx.runtime.placement import PlacementReport, enforce, finish_profile, profile_for
from sglrp_onnx.runtime.providers import GPU_PROVIDERS
from sglrp_onnx.runtime.result import Explanation, softmax
from sglrp_onnx.runtime.session import cuda_device_id, model_source, open_session, runtime_options


class ExplainStep:
    """One session of an augmented model and the step that runs it on a batch.

    Args:
        session: an ``onnxruntime.InferenceSession`` of an augmented model.
        metadata: the model's ``sglrp_onnx.*`` metadata (:func:`metadata_of`).
        labels: class names (a file, a list, or ``None`` for ImageNet names with 1000 classes).
        io_binding: use ONNX Runtime IO binding with reused buffers (default: on GPU providers).
        fixed_batch: run every batch at one size (the first one run), padding smaller ones with
            copies; CUDA graphs need it.

    Attributes:
        io: the model's :class:`~sglrp_onnx.runtime.contract.ModelIO` (names, shapes, layout).
        labels: class names or ``None``.
        provider: the provider that runs the session (as the session reports it).
        provider_note: why that is not the provider asked for ("" when it is).
        placement: where each node ran, after a profiled run (:meth:`verify_placement`).
        messages: what ONNX Runtime logged while the session was made.
    """

    def __init__(self, session, metadata: dict, labels=None, io_binding: bool | None = None, fixed_batch: bool = False):
        self.session = session
        self.io = ModelIO.from_session(session, metadata)
        self.labels = _labels(labels, self.io.num_classes)
        on_gpu = self.provider in GPU_PROVIDERS
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        if fixed_batch and not self.io_binding:
            raise UsageError("a fixed batch size for CUDA graphs needs IO binding")
        self.buffers = BoundBuffers(session, "cuda" if on_gpu else "cpu", cuda_device_id(session) if on_gpu else 0)
        #: run every batch at one size (the first one run, or the model's static size); CUDA graphs need it
        self.fixed_batch = fixed_batch
        self._batch_size: int | None = self.io.static_batch
        self.placement: PlacementReport | None = None
        self._profile_next = False
        self.provider_note = ""
        self.requested_provider = self.provider
        self.placement_policy = "auto"
        self.messages: list[str] = []

    @property
    def provider(self) -> str:
        """The provider that runs the session, as the session reports it."""
        return self.session.get_providers()[0]

    @classmethod
    def open(cls, model, providers=None, *, labels=None, io_binding: bool | None = None, session_options=None,
             placement: str = "auto"):
        """An explain step on an augmented model (path, ``onnx.ModelProto`` or bytes).

        The model is used as it is (no conversion): convert it first with :func:`sglrp_onnx.convert`
        or :class:`~sglrp_onnx.runtime.Explainer`, whose ``model_path`` names the converted file.
        ``providers``, ``placement`` are as for :class:`~sglrp_onnx.runtime.Explainer`.
        """
        proto, path = load_onnx(model)
        return cls.from_proto(proto, path, providers, labels=labels, io_binding=io_binding,
                              session_options=session_options, placement=placement)

    @classmethod
    def from_proto(cls, proto, path=None, providers=None, *, labels=None, io_binding=None, session_options=None,
                   placement: str = "auto"):
        """An explain step on a loaded augmented model (``path``: its file, for external data)."""
        request = runtime_options(providers)
        opened = open_session(model_source(proto, path), request, session_options, profile=profile_for(placement),
                              shape_profile=tensorrt_shape_profile(proto, metadata_of(proto)),
                              model_versions=model_versions(proto))
        cuda_graph = getattr(request, "cuda_graph", False)
        step = cls(opened.session, metadata_of(proto), labels=labels,
                   io_binding=True if cuda_graph else io_binding, fixed_batch=cuda_graph)
        step.provider_note = opened.note
        step.messages = opened.messages
        step.requested_provider = opened.requested
        opened.report()
        if opened.profiling:
            enforce(step.verify_placement(), placement)
        step.placement_policy = placement
        return step

    def verify_placement(self) -> PlacementReport | None:
        """Read where each node ran, from one profiled run (the session must be opened with profiling).

        Runs one batch of zeros now and returns the :class:`PlacementReport` (also kept in
        ``placement``); profiling ends with it. With a fixed batch (CUDA graphs, whose shapes must
        not change) the first real batch is profiled instead, and ``None`` is returned until then.
        """
        if not self.session.get_session_options().enable_profiling:
            raise UsageError("the session was opened without profiling: open it with placement='check'")
        if self.fixed_batch and self._batch_size is None:
            self._profile_next = True
            return None
        x = np.zeros([self._batch_size or 1, *self.probe_shape()[1:]], dtype=self.io.input_dtype)
        self.run_batch(x, np.full(x.shape[0], -1, np.int64))
        self.placement = finish_profile(self.session, self.provider)
        return self.placement

    def probe_shape(self) -> list[int]:
        """A concrete input shape for a trial run: the model's, with 224 for dynamic image sides."""
        shape = [d if isinstance(d, int) and d > 0 else 224 for d in self.io.input_shape]
        if shape and not (isinstance(self.io.input_shape[0], int) and self.io.input_shape[0] > 0):
            shape[0] = 1
        if len(shape) == 4:  # a dynamic channel axis is not an image side: 3 channels
            axis = 1 if self.io.layout == "NCHW" else 3
            if not (isinstance(self.io.input_shape[axis], int) and self.io.input_shape[axis] > 0):
                shape[axis] = 3
        return shape

    def label(self, index: int) -> str:
        """The name of class ``index``."""
        return label_of(int(index), self.labels)

    def explain(self, images: np.ndarray, targets=None, batch_size: int | None = None) -> Explanation:
        """Check the batch and the targets, run the model, and return an :class:`Explanation`.

        See :meth:`sglrp_onnx.runtime.Explainer.explain` for the arguments and errors.
        """
        x = check_images(images, self.io)
        t = check_targets(targets, x.shape[0], self.labels, self.io.num_classes)
        return self.run(x, t, batch_size)

    def run(self, x: np.ndarray, t: np.ndarray, batch_size: int | None = None) -> Explanation:
        """An :class:`Explanation` for a checked batch ``x`` and int64 targets ``t``, run in pieces of
        ``batch_size`` (or of the model's fixed batch size, the last piece padded with copies)."""
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        n = x.shape[0]
        if self.fixed_batch and self._batch_size is None:
            self._batch_size = min(batch_size or n, n)
        fixed = self._batch_size
        step = fixed or batch_size or n
        pieces = []
        for start in range(0, n, step):
            xs, ts = x[start : start + step], t[start : start + step]
            m = xs.shape[0]
            if fixed and m < fixed:  # pad a fixed-size batch with copies
                xs = np.concatenate([xs, np.repeat(xs[-1:], fixed - m, axis=0)])
                ts = np.concatenate([ts, np.repeat(ts[-1:], fixed - m)])
            out = self.run_batch(xs, ts)
            pieces.append({k: v[:m] if v.ndim and v.shape[0] == xs.shape[0] else v for k, v in out.items()})
        merged = {k: np.concatenate([p[k] for p in pieces]) if pieces[0][k].ndim else pieces[0][k] for k in pieces[0]}
        return self._explanation(merged, t)

    def run_batch(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """One run of the session: every output by name, as numpy arrays in host memory.

        With IO binding the inputs and outputs live in device buffers reused across batches of the
        same shape (:class:`~sglrp_onnx.runtime.binding.BoundBuffers`).
        """
        feeds = {self.io.image_input: x, self.io.target_input: t}
        names = self.io.output_names
        if not self.io_binding:
            outputs = dict(zip(names, self.session.run(names, feeds)))
        else:
            outputs = self.buffers.run(feeds, names)
        if self._profile_next:
            self._profile_next = False
            self.placement = finish_profile(self.session, self.provider)
            enforce(self.placement, self.placement_policy)
        return outputs

    def _explanation(self, outputs: dict[str, np.ndarray], t: np.ndarray) -> Explanation:
        io = self.io
        logits = outputs[io.logits_output].astype(np.float32, copy=False)
        logits = logits.reshape(logits.shape[0], -1)
        explained = outputs[io.explained_output].astype(np.int64, copy=False)
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
            relevance=outputs[io.relevance_output],
            targets=t,
            outputs={k: outputs[k] for k in io.original_outputs},
            layout=io.layout,
            labels=self.labels,
        )


def _labels(labels, num_classes: int | None) -> list[str] | None:
    if isinstance(labels, (str, os.PathLike)) or labels is None:
        return labels_for(num_classes, labels)
    names = list(labels)
    if num_classes is not None and len(names) != num_classes:
        raise UsageError(f"{len(names)} labels given but the model has {num_classes} classes")
    return names


def model_versions(proto) -> tuple[int, int]:
    """(default-domain opset, IR version) of a model."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return int(opset), int(proto.ir_version)


def tensorrt_shape_profile(proto, metadata: dict) -> dict[str, list[int]] | None:
    """TensorRT's shape profile at batch 1 (image and target inputs), where the image's other
    dimensions are static; else ``None`` (ONNX Runtime then builds engines per shape it meets)."""
    from sglrp_onnx.runtime.contract import KEY_IMAGE, KEY_TARGET

    inputs = {i.name: i for i in proto.graph.input}
    image = inputs.get(metadata.get(KEY_IMAGE, ""))
    target = metadata.get(KEY_TARGET, "target")
    if image is None or target not in inputs:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in image.type.tensor_type.shape.dim]
    if len(dims) < 2 or any(d <= 0 for d in dims[1:]):
        return None
    return {image.name: [1, *dims[1:]], target: [1]}
