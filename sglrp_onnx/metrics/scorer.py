"""Class probabilities of perturbed inputs: the forward part of an augmented model, nothing else.

Perturbation metrics run the model hundreds of times per image; the relevance part would triple
the cost for nothing. :class:`ForwardScorer` cuts an augmented model (made by
:func:`sglrp_onnx.convert`) down to the nodes its ``logits`` output needs -- the original forward
pass -- and runs that with ONNX Runtime on the Explainer's provider.
"""

from __future__ import annotations

import numpy as np
import onnx

from sglrp_onnx.runtime import CPU, Explainer, softmax


def forward_only(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """A copy of ``model`` that computes only ``output``: unused nodes, inputs and weights dropped."""
    graph = model.graph
    needed = {output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            for attribute in node.attribute:  # names read inside sub-graphs (If/Loop bodies)
                for sub in list(attribute.g.node if attribute.HasField("g") else []) + [n for g in attribute.graphs for n in g.node]:
                    needed.update(name for name in sub.input if name)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(reversed(kept))
    outputs = [o for o in graph.output if o.name == output]
    del result.graph.output[:]
    result.graph.output.extend(outputs)
    inputs = [i for i in graph.input if i.name in needed]
    del result.graph.input[:]
    result.graph.input.extend(inputs)
    weights = [t for t in graph.initializer if t.name in needed]
    del result.graph.initializer[:]
    result.graph.initializer.extend(weights)
    return result


class ForwardScorer:
    """Softmax probabilities ``[B, K]`` for a batch in the model's own layout and dtype.

    Args:
        explainer: any :class:`Explainer` of the model; its forward pass is the one scored.
        layout: the layout of the batches given to :meth:`__call__` (``NCHW``: metrics work
            channels first; they are transposed to the model's layout here).
    """

    def __init__(self, explainer: Explainer, layout: str = "NCHW"):
        import onnxruntime as ort

        model = forward_only(explainer.model, explainer.logits_output)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        providers = explainer.session.get_providers() or [CPU]
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers)
        self.input_name = explainer.image_input
        self.output_name = explainer.logits_output
        self.dtype = explainer.input_dtype
        self.static_batch = explainer.static_batch
        self.transpose = explainer.layout != layout
        self.calls = 0

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[B, K]`` logits of a batch ``[B, C, H, W]``."""
        x = np.asarray(batch)
        if self.transpose:
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        step = self.static_batch or len(x)
        pieces = []
        for start in range(0, len(x), step):
            piece = x[start : start + step]
            count = len(piece)
            if self.static_batch and count < self.static_batch:
                piece = np.concatenate([piece, np.repeat(piece[-1:], self.static_batch - count, axis=0)])
            (out,) = self.session.run([self.output_name], {self.input_name: piece})
            pieces.append(out.reshape(len(piece), -1)[:count])
            self.calls += 1
        return np.concatenate(pieces).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.logits(batch))
