"""Find the image input, the logits tensor, and the nodes on the float path between them."""

from __future__ import annotations

from sglrp_onnx.errors import UnsupportedModelError, UsageError
from sglrp_onnx.graph import FLOAT_TYPES, SHAPE_SOURCES, Graph

FINAL_NORMALISERS = ("Softmax", "LogSoftmax")
#: Ops that may sit between the logits and the output without changing the values' meaning.
PASS_THROUGH = ("Identity", "Dropout")
#: Ops that only reshape: a final Softmax behind them is still the final Softmax.
SHAPE_ONLY = PASS_THROUGH + ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def find_image_input(graph: Graph, requested: str | None) -> str:
    float_inputs = [name for name in graph.inputs if graph.dtypes.get(name) in FLOAT_TYPES]
    if requested:
        if requested not in graph.inputs:
            raise UsageError(f"image input '{requested}' is not an input of the model (inputs: {', '.join(graph.inputs)})")
        return requested
    if len(float_inputs) == 1:
        return float_inputs[0]
    if not float_inputs:
        raise UnsupportedModelError(
            f"the model has no float input to explain (inputs: {', '.join(graph.inputs) or 'none'})"
        )
    raise UsageError(
        f"the model has several float inputs ({', '.join(float_inputs)}); name the image input "
        "(--input NAME, or image_input= in the API)"
    )


def _is_class_scores(shape) -> bool:
    if shape is None:
        return False
    if len(shape) == 2:
        return shape[1] is not None
    if len(shape) == 4:
        return shape[1] is not None and shape[2] == 1 and shape[3] == 1
    return False


def _back_through(graph: Graph, tensor: str, producers: dict, ops: tuple) -> tuple[str, object]:
    """Walk from ``tensor`` back through producers of the given op types; (tensor, its producer)."""
    node = producers.get(tensor)
    while node is not None and node.op_type in ops:
        tensor = node.inputs[0]
        node = producers.get(tensor)
    return tensor, node


def _normalises_classes(graph: Graph, node) -> bool:
    """Whether a Softmax/LogSoftmax normalises over one class axis: every other non-batch axis of
    its input has size 1 (or the shape is unknown)."""
    shape = graph.shape(node.inputs[0])
    if shape is None or len(shape) < 2:
        return shape is None
    default = -1 if graph.opset >= 13 else 1
    axis = int(node.attrs.get("axis", default)) % len(shape)
    if graph.opset < 13:  # older opsets normalise over all axes from ``axis`` on, flattened
        return axis == 1
    return axis != 0 and all(d == 1 for i, d in enumerate(shape) if i not in (0, axis))


def _scores_before(graph: Graph, tensor: str, producers: dict) -> str:
    """The earliest class-score tensor that reaches ``tensor`` through shape-only ops (the
    version converter's Flatten in front of a 4D Softmax): its name is the original model's."""
    node = producers.get(tensor)
    while node is not None and node.op_type in SHAPE_ONLY and _is_class_scores(graph.shape(node.inputs[0])):
        shape, earlier = graph.shape(tensor), graph.shape(node.inputs[0])
        if shape is None or earlier is None or shape[1] != earlier[1]:
            break
        tensor = node.inputs[0]
        node = producers.get(tensor)
    return tensor


def find_logits(graph: Graph) -> str:
    """The pre-softmax class scores: the input of a final Softmax/LogSoftmax, else the output.

    The final Softmax may sit behind shape-only ops (SPEC section 5): Paddle's trailing
    Identity, the Flatten -> Softmax -> Reshape that onnx's version converter writes for a 4D
    Softmax of an old opset, a Squeeze of ``[N, K, 1, 1]`` scores.
    """
    producers = graph.producers()
    for output in graph.outputs:
        if graph.dtypes.get(output) not in FLOAT_TYPES:
            continue
        behind, node = _back_through(graph, output, producers, SHAPE_ONLY)
        if node is not None and node.op_type in FINAL_NORMALISERS and _normalises_classes(graph, node):
            tensor = _scores_before(graph, node.inputs[0], producers)
        else:
            tensor, _ = _back_through(graph, output, producers, PASS_THROUGH)
        if _is_class_scores(graph.shape(tensor)):
            return tensor
    shapes = ", ".join(f"{o}{graph.shape_str(o)}" for o in graph.outputs)
    raise UnsupportedModelError(
        f"no classifier output found: the engine needs class scores shaped [N, K] or [N, K, 1, 1] "
        f"with a known K (outputs: {shapes})"
    )


def float_path(graph: Graph) -> set[str]:
    """Tensors whose values are computed from the image (shape computations excluded)."""
    reached = {graph.image}
    for node in graph.nodes:
        if node.op_type in SHAPE_SOURCES:
            continue
        if any(name in reached for name in node.inputs):
            for out in node.outputs:
                if out and graph.dtypes.get(out, graph.dtypes.get(graph.image)) in FLOAT_TYPES:
                    reached.add(out)
    return reached


def ancestors(graph: Graph, tensor: str) -> set[str]:
    needed = {tensor}
    for node in reversed(graph.nodes):
        if any(out in needed for out in node.outputs):
            needed.update(name for name in node.inputs if name)
    return needed
