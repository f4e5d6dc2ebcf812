"""Fold a zero Pad into the Conv that reads it (TF-style "same" padding exported as Pad + Conv).

Pattern: ``Pad(x)`` in constant mode with value 0 and non-negative pads on the spatial axes only,
whose output feeds nothing but the data input of one canonical Conv, and whose Conv's rule
qualifies (``keeps_meaning``). Rewrite: the Conv reads ``x`` and pads it itself. The forward
values are the same. The relevance is the same for rules whose terms read the layer input itself
(x, x+, x-: the padded border is 0 either way) and for zbox with bounds carried from the image
(carried through a zero Pad, the border's bounds are 0, as the Conv's own padding). It is not the
same for flat / wsquare (an all-ones input would cover the border) or zbox with a layer's own
bounds, so those keep the explicit Pad. Pays off twice: the relevance part needs no Pad of its
own, and ONNX Runtime can fuse the forward's Pad into its Conv.
"""

from __future__ import annotations

import numpy as np

from sglrp_onnx.graph import Graph, Node


def _constant_pads(graph: Graph, pad: Node, rank: int) -> list[int] | None:
    mode = pad.attrs.get("mode", "constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return None
    value = pad.attrs.get("value", 0.0)
    if len(pad.inputs) > 2 and pad.inputs[2]:
        if not graph.is_const(pad.inputs[2]):
            return None
        value = float(graph.constants[pad.inputs[2]].reshape(-1)[0]) if graph.constants[pad.inputs[2]].size else 0.0
    if value != 0.0:
        return None
    pads = pad.attrs.get("pads")
    if pads is None:
        if len(pad.inputs) < 2 or not graph.is_const(pad.inputs[1]):
            return None
        pads = graph.constants[pad.inputs[1]].reshape(-1).astype(np.int64).tolist()
    axes = list(range(rank))
    if len(pad.inputs) > 3 and pad.inputs[3]:
        if not graph.is_const(pad.inputs[3]):
            return None
        axes = [int(a) % rank for a in graph.constants[pad.inputs[3]].reshape(-1)]
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = int(pads[i]), int(pads[len(axes) + i])
    if any(p < 0 for p in full) or any(full[a] or full[rank + a] for a in (0, 1)):
        return None
    return full


def fold_pad_into_conv(graph: Graph, keeps_meaning=lambda conv: True) -> Graph:
    consumers = graph.consumers()
    producers = graph.producers()
    for conv in list(graph.nodes):
        if conv.op_type != "Conv" or conv.attrs.get("pads") is None or not keeps_meaning(conv):
            continue
        pad = producers.get(conv.inputs[0])
        if pad is None or pad.op_type != "Pad" or len(consumers.get(pad.outputs[0], [])) != 1:
            continue
        if pad.outputs[0] == graph.logits or pad.outputs[0] in graph.outputs:
            continue
        shape = graph.shape(pad.inputs[0])
        if shape is None:
            continue
        rank = len(shape)
        full = _constant_pads(graph, pad, rank)
        if full is None:
            continue
        spatial = rank - 2
        own = conv.attrs["pads"]
        conv.attrs["pads"] = [own[i] + full[2 + i] for i in range(spatial)] + [own[spatial + i] + full[rank + 2 + i] for i in range(spatial)]
        conv.inputs = [pad.inputs[0]] + conv.inputs[1:]
        graph.nodes.remove(pad)
    return graph
