"""Evaluate every node computed only from constants (Constant nodes, weight transposes, pads).

Older exporters deliver weights as Constant nodes or small constant subgraphs, and TF-style
"same" padding as a Pad whose pads come from a constant subgraph. This pass works on a copy of
the ModelProto, before shape inference, so that shapes behind such subgraphs become static too:
folded values become initializers of the copy. Nodes that read a runtime tensor stay (shape
subgraphs on dynamic shapes included). The forward model the user gets is not this copy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

#: Ops never folded: their value is not a function of their inputs.
NON_DETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}

#: Folding stops for results larger than this many elements (a safeguard, not a limit on weights).
MAX_FOLDED_ELEMENTS = 1 << 28


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], opsets) -> list[np.ndarray]:
    graph_inputs, feeds = [], {}
    for name in node.input:
        if name and name not in feeds:
            value = values[name]
            feeds[name] = value
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    model = helper.make_model(helper.make_graph([node], "fold", graph_inputs, outputs), opset_imports=list(opsets))
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


#: Ops whose output can be far larger than their inputs: folded only when the size is known.
GENERATORS = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot", "EyeLike"}


def _inferred_sizes(model: onnx.ModelProto) -> dict[str, int | None]:
    """Element counts that shape inference (with data propagation) gives, None where unknown."""
    from sglrp_onnx.skeleton import skeleton  # the weights' values are not needed, only their shapes

    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), data_prop=True)
    except Exception:  # a model that fails inference folds only what is provably small
        return {}
    sizes: dict[str, int | None] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else []
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            sizes[info.name] = int(np.prod([d.dim_value for d in dims], dtype=np.float64))
        else:
            sizes[info.name] = None
    return sizes


def _small_enough(node: onnx.NodeProto, values: dict[str, np.ndarray], sizes: dict[str, int | None]) -> bool:
    """Whether every output of ``node`` is known (or bounded) to stay under the folding limit."""
    if node.op_type == "ConstantOfShape" and node.input and node.input[0] in values:
        return float(np.prod(values[node.input[0]].astype(np.float64))) <= MAX_FOLDED_ELEMENTS
    for output in node.output:
        if not output:
            continue
        size = sizes.get(output)
        if size is None and node.op_type in GENERATORS:
            return False
        if size is not None and size > MAX_FOLDED_ELEMENTS:
            return False
    return True


class _LazyValues(dict):
    """Name -> value of the constants: initializers become numpy arrays when first read."""

    def __init__(self, initializers):
        super().__init__()
        self._tensors = {t.name: t for t in initializers}

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self._tensors

    def __iter__(self):
        yield from self._tensors
        yield from (name for name in dict.keys(self) if name not in self._tensors)

    def __missing__(self, name):
        value = numpy_helper.to_array(self._tensors[name])
        self[name] = value
        return value


def fold_model_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which nodes computed only from constants are initializers."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    values = _LazyValues(graph.initializer)  # arrays made only for the initializers a folded node reads
    runtime_inputs = {i.name for i in graph.input} - set(values)
    kept, new_constants = [], {}
    sizes = _inferred_sizes(folded)
    for node in graph.node:
        present = [name for name in node.input if name]
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in NON_DETERMINISTIC
            and all(name in values and name not in runtime_inputs for name in present)
            and not any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute)
        )
        results = None
        if foldable and not _small_enough(node, values, sizes):
            foldable = False
        if foldable:
            try:
                results = _evaluate(node, values, folded.opset_import)
            except Exception:  # left for the later passes to judge
                results = None
        if results is None or any(r.size > MAX_FOLDED_ELEMENTS for r in results):
            kept.append(node)
            continue
        for name, value in zip([o for o in node.output if o], results):
            values[name] = value
            new_constants[name] = value
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    for name, value in new_constants.items():
        if name in used:
            graph.initializer.append(numpy_helper.from_array(value, name))
    return folded
