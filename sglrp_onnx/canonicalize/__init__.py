"""Canonicalisation: rewrite a copy of the model's graph into the form the rules are defined on.

Pipeline (each step one module, each leaves the forward's values unchanged):

1. :func:`fold_model_constants` (on a copy of the ModelProto, before shape inference) - weights
   from Constant nodes and constant subgraphs become constants;
   :func:`fold_shape_computations` - shape subgraphs whose values are fixed once the non-batch
   dimensions are known (computed padding, Reshape targets, Slice bounds) become constants;
2. :func:`remove_noops` - Dropout, Identity and float-to-float Cast disappear;
3. image input and logits found (:mod:`.find_io`);
4. :func:`canonicalize_linear_layers` - Conv / Gemm / MatMul become canonical ``Conv`` / ``Dense``;
5. :func:`fold_into_linear` - BatchNormalization and per-channel affine constants fold into them;
6. :func:`fuse_normalization` - LayerNorm / InstanceNorm / GroupNorm (ops and exporters'
   decompositions) become one canonical ``Normalization`` with their trailing affine folded in;
7. :func:`fuse_affine` - a standalone BatchNorm exported as Mul + Add becomes one ``Affine``;
8. nodes off the float path from the image to the logits are dropped.
"""

from __future__ import annotations

from sglrp_onnx.graph import Graph

from .find_io import ancestors, find_image_input, find_logits, float_path
from .fold_constants import fold_model_constants
from .fold_into_linear import fold_into_linear
from .fold_pad import fold_pad_into_conv
from .fold_shapes import fold_shape_computations
from .fuse_affine import fuse_affine
from .fuse_normalization import fuse_normalization
from .linear_layers import canonicalize_linear_layers, resolve_conv_pads
from .remove_noops import remove_noops

__all__ = ["canonicalize", "fold_model_constants", "fold_shape_computations", "fold_pad_into_conv", "resolve_conv_pads", "float_path", "ancestors"]


def canonicalize(graph: Graph, image_input: str | None = None) -> Graph:
    """Run the whole pipeline; ``graph.image`` and ``graph.logits`` are set on return."""
    graph.image = find_image_input(graph, image_input)
    graph.logits = find_logits(graph)
    remove_noops(graph)
    canonicalize_linear_layers(graph, float_path(graph))
    fold_into_linear(graph)
    fuse_normalization(graph)
    fuse_affine(graph)
    on_path = float_path(graph)
    needed = ancestors(graph, graph.logits)
    graph.nodes = [
        node for node in graph.nodes
        if any(name in on_path for name in node.inputs) and any(out in needed and out in on_path for out in node.outputs)
    ]
    return graph

# fold_pad_into_conv runs after the rules are assigned (convert.py): it is exact only for rules
# whose terms read the layer input itself, see its docstring.
