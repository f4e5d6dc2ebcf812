"""What an explain step returns: :class:`Explanation`, and the softmax of its logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from sglrp_onnx.labels import label_of


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, K]`` logits, computed in float64 (no overflow for large logits)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


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
        """The name of class ``index`` (``"class 7"`` where no names are known)."""
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
