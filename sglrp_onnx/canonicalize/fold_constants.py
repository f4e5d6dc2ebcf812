"""Evaluate every node computed only from constants (Constant nodes, weight transposes, ...).

Older exporters deliver weights as Constant nodes or small constant subgraphs; after this pass
they are plain numpy constants in :attr:`Graph.constants`, like initializers. Nodes that read a
runtime tensor stay as they are (shape subgraphs on dynamic shapes included).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from sglrp_onnx.graph import Graph

#: Ops never folded: their value is not a function of their inputs.
NON_DETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}

#: Folding stops for results larger than this many elements (a safeguard, not a limit on weights).
MAX_FOLDED_ELEMENTS = 1 << 28


def _evaluate(node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    feeds = {}
    graph_inputs = []
    for name, value in zip(node.inputs, inputs):
        if name and name not in feeds:
            feeds[name] = value
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    proto = helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name, **node.attrs)
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.outputs if o]
    model = helper.make_model(
        helper.make_graph([proto], "fold", graph_inputs, outputs), opset_imports=[helper.make_opsetid("", opset)]
    )
    results = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(r) for r in results]


def fold_constants(graph: Graph) -> Graph:
    """Replace nodes whose inputs are all constants by their values (in topological order)."""
    kept = []
    for node in graph.nodes:
        present = [name for name in node.inputs if name]
        foldable = node.op_type not in NON_DETERMINISTIC and all(graph.is_const(name) for name in present)
        if node.op_type == "Constant":
            foldable = True
        if foldable:
            try:
                values = _evaluate(node, [graph.constants.get(name) if name else None for name in node.inputs], graph.opset)
            except Exception:  # the node is left for the later passes to judge
                values = None
            if values is not None and all(v.size <= MAX_FOLDED_ELEMENTS for v in values):
                for name, value in zip([o for o in node.outputs if o], values):
                    graph.constants[name] = value
                    graph.shapes[name] = tuple(value.shape)
                continue
        kept.append(node)
    graph.nodes = kept
    return graph
