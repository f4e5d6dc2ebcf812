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
from sglrp_onnx.runtime.result import Explanation, softmax
from sglrp_onnx.runtime.session import CUDA, cuda_device_id, model_source, open_session


class ExplainStep:
    """One session of an augmented model and the step that runs it on a batch.

    Args:
        session: an ``onnxruntime.InferenceSession`` of an augmented model.
        metadata: the model's ``sglrp_onnx.*`` metadata (:func:`metadata_of`).
        provider: the provider that runs the session (default: its first provider).
        labels: class names (a file, a list, or ``None`` for ImageNet names with 1000 classes).
        io_binding: use ONNX Runtime IO binding (default: on CUDA only).

    Attributes:
        io: the model's :class:`~sglrp_onnx.runtime.contract.ModelIO` (names, shapes, layout).
        labels: class names or ``None``.
        provider: the provider that runs the session.
    """

    def __init__(self, session, metadata: dict, provider: str | None = None, labels=None, io_binding: bool | None = None):
        self.session = session
        self.provider = provider or session.get_providers()[0]
        self.io = ModelIO.from_session(session, metadata)
        self.labels = _labels(labels, self.io.num_classes)
        self.io_binding = (self.provider == CUDA) if io_binding is None else bool(io_binding)
        self._device_id = cuda_device_id(session) if self.provider == CUDA else 0

    @classmethod
    def open(cls, model, providers=None, *, labels=None, io_binding: bool | None = None, session_options=None):
        """An explain step on an augmented model (path, ``onnx.ModelProto`` or bytes).

        The model is used as it is (no conversion): convert it first with :func:`sglrp_onnx.convert`
        or :class:`~sglrp_onnx.runtime.Explainer`, whose ``model_path`` names the converted file.
        """
        proto, path = load_onnx(model)
        opened = open_session(model_source(proto, path), providers, session_options)
        step = cls(opened.session, metadata_of(proto), opened.provider, labels=labels, io_binding=io_binding)
        step.provider_note = opened.note
        return step

    provider_note = ""

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
        static = self.io.static_batch
        step = static or batch_size or n
        pieces = []
        for start in range(0, n, step):
            xs, ts = x[start : start + step], t[start : start + step]
            m = xs.shape[0]
            if static and m < static:  # pad a fixed-size batch with copies
                xs = np.concatenate([xs, np.repeat(xs[-1:], static - m, axis=0)])
                ts = np.concatenate([ts, np.repeat(ts[-1:], static - m)])
            out = self.run_batch(xs, ts)
            pieces.append({k: v[:m] if v.ndim and v.shape[0] == xs.shape[0] else v for k, v in out.items()})
        merged = {k: np.concatenate([p[k] for p in pieces]) if pieces[0][k].ndim else pieces[0][k] for k in pieces[0]}
        return self._explanation(merged, t)

    def run_batch(self, x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """One run of the session: every output by name, as numpy arrays in host memory."""
        feeds = {self.io.image_input: x, self.io.target_input: t}
        names = self.io.output_names
        if not self.io_binding:
            return dict(zip(names, self.session.run(names, feeds)))
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feeds.items():
            if self.provider == CUDA:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", self._device_id))
            else:
                binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

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
