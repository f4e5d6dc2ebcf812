"""A model's skeleton: the graph with its large initializers declared as typed inputs, no data.

ONNX's shape inference and checker serialise the whole model (weights included) and build a new
one: for VGG-16 that is 1 GB more per call. Neither needs the weights' values, only their types
and shapes (data propagation reads small shape tensors, which stay). Running them on the
skeleton gives the same shapes and the same verdict on the graph with a fraction of the memory;
the weights themselves are checked one at a time when the model is loaded
(:func:`sglrp_onnx.io.load_model`, ``onnx.checker.check_tensor``) or written by ``numpy_helper``
from arrays of the declared shape.
"""

from __future__ import annotations

import onnx
from onnx import helper

from sglrp_onnx.graph import infer_shapes

#: Initializers with more elements than this are left out of the skeleton (shape tensors, axes,
#: pads and other values that data propagation reads are far smaller).
LARGE_ELEMENTS = 4096


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


def is_large(tensor: onnx.TensorProto, limit: int = LARGE_ELEMENTS) -> bool:
    """Whether the skeleton leaves ``tensor`` out."""
    return _elements(tensor) > limit


def large_initializers(model: onnx.ModelProto, limit: int = LARGE_ELEMENTS) -> list[onnx.TensorProto]:
    """The main graph's initializers that :func:`skeleton` leaves out."""
    return [tensor for tensor in model.graph.initializer if _elements(tensor) > limit]


def skeleton(model: onnx.ModelProto, limit: int = LARGE_ELEMENTS) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above ``limit`` elements are graph inputs of the
    same type and shape (their data is not copied)."""
    light = onnx.ModelProto()
    graph = model.graph
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.graph.name = graph.name
    light.graph.node.extend(graph.node)
    light.graph.input.extend(graph.input)
    light.graph.output.extend(graph.output)
    light.graph.value_info.extend(graph.value_info)
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if _elements(tensor) <= limit:
            light.graph.initializer.append(tensor)
        elif tensor.name not in declared:
            light.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return light


def infer_shapes_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference (:func:`sglrp_onnx.graph.infer_shapes`) run on the skeleton; the inferred
    ``value_info`` is written into ``model`` (which must be the caller's own copy) and returned."""
    inferred = infer_shapes(skeleton(model))
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    known = {o.name for o in model.graph.output}
    outputs = {o.name: o for o in inferred.graph.output if o.name in known}
    for index, output in enumerate(model.graph.output):
        model.graph.output[index].CopyFrom(outputs.get(output.name, output))
    return model
