"""Remove nodes that leave values unchanged: Dropout (inference), Identity, float-to-float Cast.

Their consumers read the node's input instead; the forward keeps them (the canonical graph is a
copy), so nothing the user sees changes.
"""

from __future__ import annotations

from sglrp_onnx.graph import FLOAT_TYPES, Graph


def _is_noop(graph: Graph, node) -> bool:
    if node.op_type in ("Identity", "Dropout"):  # Dropout's optional mask is boolean: off the float path
        return True
    if node.op_type == "Cast":
        source = graph.dtypes.get(node.inputs[0])
        return source in FLOAT_TYPES and node.attrs.get("to") == source
    return False


def remove_noops(graph: Graph) -> Graph:
    kept = []
    for node in graph.nodes:
        if _is_noop(graph, node) and not graph.is_const(node.inputs[0]):
            graph.rename_tensor(node.outputs[0], node.inputs[0])
        else:
            kept.append(node)
    graph.nodes = kept
    return graph
