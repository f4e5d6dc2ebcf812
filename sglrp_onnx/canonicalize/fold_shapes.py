"""Fold shape computations whose values are fixed once the non-batch dimensions are known.

Exporters write padding, reshape targets and slice bounds as small integer subgraphs that read
the runtime shape of a tensor: TF-style "same" padding (Shape, Gather, Sub, Div, Max -> Pad),
PyTorch's ``F.pad`` idiom (ConstantOfShape, Concat, Reshape, Slice with step -1, Transpose ->
Pad), ``view(x.size(0), -1)`` (Shape, Gather, Unsqueeze, Concat -> Reshape). Where only the
batch dimension is dynamic most of them do not depend on it, and SPEC section 5 wants their
values as constants in the canonical copy, so that the Pad/Reshape/Slice backward sees them.

Which tensors fold is decided by onnxslim (its symbolic shape inference plus constant folding:
a maintained library that handles these idioms, where onnx's own inference and
onnx-graphsurgeon's ``fold_constants`` leave them): it keeps the batch as a symbol, so what it
turns into a constant does not depend on the batch. It runs on a throw-away copy with every
graph rewrite but constant folding switched off, and only tensors that depend on no runtime
value (only on shapes and constants) are looked up in its result, by name.

The values are not taken from onnxslim: onnxslim 0.1.98 folds PyTorch's ``F.pad`` idiom to a
wrong value (``[0,0,1,1,0,0,0,0]`` for ``[0,0,0,0,0,0,1,1]``: its symbolic evaluation of the
step -1 Slice). They come from running the model itself (ONNX Runtime, else onnx's reference
evaluator) on zero inputs at two batch sizes; a tensor folds only where both runs agree. So a
folded value is what the forward computes, and a wrong verdict from onnxslim on batch
independence is caught too. Models with a dynamic non-batch input dimension are not folded (no
size to run them at).

The values are written into the canonical copy as initializers under their original names. Float
tensors on the path from the image are never replaced, so every tensor the relevance part reads
by name still is the forward's own (SPEC section 1). The model the user gets keeps its shape
subgraphs; batch-dependent values (a Reshape target holding the batch size) stay computed.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Ops whose outputs describe the shape of their input, not its values.
SHAPE_READERS = ("Shape", "Size")

#: onnxslim passes that rewrite the graph; only its constant folding is wanted here.
REWRITES = ("graph_fusion", "dead_node_elimination", "subexpression_elimination", "weight_tying")


def runtime_dependent(model: onnx.ModelProto) -> set[str]:
    """Tensors whose values depend on a runtime input's values (not only on its shape)."""
    constants = {t.name for t in model.graph.initializer}
    dependent = {i.name for i in model.graph.input if i.name not in constants}
    for node in model.graph.node:
        if node.op_type in SHAPE_READERS:
            continue
        if any(name in dependent for name in node.input if name):
            dependent.update(o for o in node.output if o)
    return dependent


def _shape_only_tensors(model: onnx.ModelProto) -> set[str]:
    """Computed tensors that depend only on shapes and constants (candidates for folding)."""
    dependent = runtime_dependent(model)
    computed = {o for node in model.graph.node for o in node.output if o}
    return {name for name in computed if name not in dependent}


def _slim_values(model: onnx.ModelProto, wanted: set[str]) -> dict[str, np.ndarray]:
    """Values onnxslim's constant folding finds for the tensors named in ``wanted``."""
    try:
        import onnxslim
    except ImportError:  # a core dependency; without it shape subgraphs simply stay computed
        return {}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    level = logging.getLogger("onnxslim").level
    try:
        slimmed = onnxslim.slim(copy, skip_optimizations=list(REWRITES), model_check=False)
    except Exception:  # onnxslim fails on some graphs: then nothing is folded here
        return {}
    finally:
        logging.getLogger("onnxslim").setLevel(level)
    if not isinstance(slimmed, onnx.ModelProto):
        return {}
    found = {t.name: numpy_helper.to_array(t) for t in slimmed.graph.initializer if t.name in wanted}
    for node in slimmed.graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


#: Batch sizes the model is run at to read the folded values off (two, so that batch-dependent
#: values show up as a disagreement).
CHECK_BATCHES = (2, 3)


def _zero_feeds(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray] | None:
    """Zero inputs with the given batch size, or None where another dimension is not static."""
    constants = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in constants:
            continue
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            return None
        dims = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif axis == 0:
                dims.append(batch)
            else:
                return None
        feeds[value.name] = np.zeros(dims, helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return feeds


def _run(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:  # conversion does not need ONNX Runtime; onnx's evaluator is slower
        from onnx.reference import ReferenceEvaluator

        return list(ReferenceEvaluator(model).run(names, feeds))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def _runs(model: onnx.ModelProto, dtypes: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """The values of the tensors named in ``dtypes``, computed by running ``model`` on zeros at
    each batch size of :data:`CHECK_BATCHES` (once where the batch is static); [] if it cannot run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted(dtypes)
    outputs = {o.name for o in probe.graph.output}
    for name in names:
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, dtypes[name], None))
    runs, shapes_seen = [], set()
    for batch in CHECK_BATCHES:
        feeds = _zero_feeds(model, batch)
        if feeds is None:
            return []
        shapes = tuple(sorted((k, v.shape) for k, v in feeds.items()))
        if shapes in shapes_seen:  # a static batch: one run says it all
            continue
        shapes_seen.add(shapes)
        try:
            runs.append({name: np.asarray(value) for name, value in zip(names, _run(probe, names, feeds))})
        except Exception:  # a model that does not run on zeros: nothing is folded
            return []
    return runs


def _same_in_every_run(runs: list[dict[str, np.ndarray]], name: str) -> bool:
    first = runs[0][name]
    return all(run[name].shape == first.shape and np.array_equal(run[name], first) for run in runs[1:])


def _batch_copying_target(runs: list[dict[str, np.ndarray]], name: str, batches: list[int]) -> np.ndarray | None:
    """``[0, d1, ...]`` where a Reshape target is ``[batch, d1, ...]`` in every run: Reshape's 0
    copies the input's dimension 0 (the batch), so this constant means the same at any batch."""
    first = runs[0][name]
    if first.ndim != 1 or first.size == 0:
        return None
    for run, batch in zip(runs, batches):
        value = run[name]
        if value.shape != first.shape or int(value[0]) != batch or not np.array_equal(value[1:], first[1:]):
            return None
    return np.concatenate([[0], first[1:]]).astype(first.dtype)


def _reshape_targets(model: onnx.ModelProto, shape_only: set[str]) -> set[str]:
    """Shape-only tensors read only as the target of Reshape nodes that keep zeros meaning "copy"."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    found = set()
    for name in shape_only:
        uses = readers.get(name, [])
        if uses and all(
            node.op_type == "Reshape" and index == 1 and not any(a.name == "allowzero" and a.i for a in node.attribute)
            for node, index in uses
        ):
            found.add(name)
    return found


def _folded_values(model: onnx.ModelProto, shape_only: set[str]) -> dict[str, np.ndarray]:
    """Constants for the shape-only tensors (see the module docstring)."""
    proposed = _slim_values(model, shape_only)
    targets = _reshape_targets(model, shape_only) - set(proposed)
    if not proposed and not targets:
        return {}
    dtypes = {name: helper.np_dtype_to_tensor_dtype(value.dtype) for name, value in proposed.items()}
    dtypes.update({name: onnx.TensorProto.INT64 for name in targets})
    runs = _runs(model, dtypes)
    if not runs:
        return {}
    batches = list(CHECK_BATCHES) if len(runs) == len(CHECK_BATCHES) else None
    values = {name: runs[0][name] for name in proposed if _same_in_every_run(runs, name)}
    if batches is not None:  # a dynamic batch: targets that hold it become "copy dimension 0"
        for name in targets:
            target = _batch_copying_target(runs, name, batches)
            if target is not None:
                values[name] = target
    return values


def fold_shape_computations(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every shape-only tensor that can be folded as an initializer.

    Returns ``model`` itself when it reads no shapes or nothing folds; otherwise a copy in which
    the nodes whose outputs all became constants are gone.
    """
    if not any(node.op_type in SHAPE_READERS for node in model.graph.node):
        return model
    wanted = _shape_only_tensors(model)
    if not wanted:
        return model
    values = _folded_values(model, wanted)
    if not values:
        return model
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    kept = [node for node in graph.node if not all(o in values for o in node.output if o)]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    present = {t.name for t in graph.initializer}
    for name, value in values.items():
        if name in used and name not in present:
            graph.initializer.append(numpy_helper.from_array(value, name))
    # value_info of now-constant tensors would contradict nothing, but stale dynamic shapes would
    # keep shape inference from using the new constants' shapes
    stale = [v for v in graph.value_info if v.name in values]
    for info in stale:
        graph.value_info.remove(info)
    return folded
