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
evaluator) on zero inputs at three batch sizes; a tensor folds only where the runs agree.
Parameters of Pad/Slice/Resize/... on the float path that onnxslim leaves computed are proposed
too (:func:`_parameters`) and checked the same way. So a
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

#: Larger results are left computed (shape tensors are tiny; this bounds the copy's size).
MAX_FOLDED_ELEMENTS = 1 << 24

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
    """The tensors of ``wanted`` that onnxslim's constant folding turns into constants, with
    onnxslim's values (only their names and dtypes are used: the values are checked by a run)."""
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
    found = {t.name: numpy_helper.to_array(t) for t in slimmed.graph.initializer
             if t.name in wanted and np.prod(t.dims, dtype=np.float64) <= MAX_FOLDED_ELEMENTS}
    for node in slimmed.graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


#: Batch sizes the model is run at to read the folded values off (several, so that batch-dependent
#: values show up as a disagreement).
CHECK_BATCHES = (2, 3, 5)


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


def _runner(model: onnx.ModelProto):
    """A function ``feeds, names -> values`` that runs ``model`` (one session for every call)."""
    try:
        import onnxruntime as ort
    except ImportError:  # conversion does not need ONNX Runtime; onnx's evaluator is slower
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)
        return lambda feeds, names: list(evaluator.run(names, feeds))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda feeds, names: session.run(names, feeds)


def _probe(model: onnx.ModelProto, dtypes: dict[str, int]) -> onnx.ModelProto:
    """``model`` cut down to the nodes that compute the tensors named in ``dtypes``, which are
    its only outputs (computing shapes rarely needs the whole network, nor all of its weights)."""
    needed = set(dtypes)
    nodes = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
            for attribute in node.attribute:  # names that If/Loop bodies read from this graph
                for body in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                    needed.update(name for inner in body.node for name in inner.input if name)
    graph = helper.make_graph(
        list(reversed(nodes)), model.graph.name or "probe", list(model.graph.input),
        [helper.make_tensor_value_info(name, dtypes[name], None) for name in sorted(dtypes)],
        [t for t in model.graph.initializer if t.name in needed],
    )
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    return probe


def _runs(model: onnx.ModelProto, dtypes: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """The values of the tensors named in ``dtypes``, computed by running ``model`` on zeros at
    each batch size of :data:`CHECK_BATCHES` (once where the batch is static); [] if it cannot run."""
    names = sorted(dtypes)
    probe = _probe(model, dtypes)
    runs, shapes_seen, run = [], set(), None
    for batch in CHECK_BATCHES:
        feeds = _zero_feeds(model, batch)
        if feeds is None:
            return []
        shapes = tuple(sorted((k, v.shape) for k, v in feeds.items()))
        if shapes in shapes_seen:  # a static batch: one run says it all
            continue
        shapes_seen.add(shapes)
        try:
            run = run or _runner(probe)
            runs.append({name: np.asarray(value) for name, value in zip(names, run(feeds, names))})
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


#: Ops whose inputs after the first are parameters (pads, bounds, sizes) the relevance part needs.
PARAMETER_READERS = ("Pad", "Slice", "Resize", "Expand", "Tile", "Split", "ReduceSum", "ReduceMean", "Unsqueeze", "Squeeze")


def _parameters(model: onnx.ModelProto, shape_only: set[str]) -> dict[str, int]:
    """Shape-only tensors that parameterise an op on the float path, with their element types.

    onnxslim's symbolic evaluation leaves some idioms computed (timm's Swin pads its windows
    with ``(w - H % w) % w`` through ``F.pad``: the Mod stops it); these are proposed too, and,
    like onnxslim's proposals, fold only where every run of :data:`CHECK_BATCHES` agrees.
    """
    dependent = runtime_dependent(model)
    names = {name for node in model.graph.node if node.op_type in PARAMETER_READERS and node.input and node.input[0] in dependent
             for name in node.input[1:] if name in shape_only}
    if not names:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # without types the probe cannot name its outputs' types
        return {}
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info if v.type.HasField("tensor_type")}
    return {name: types[name] for name in names if types.get(name)}


def _folded_values(model: onnx.ModelProto, shape_only: set[str]) -> dict[str, np.ndarray]:
    """Constants for the shape-only tensors (see the module docstring)."""
    proposed = _slim_values(model, shape_only)
    targets = _reshape_targets(model, shape_only) - set(proposed)
    parameters = {name: kind for name, kind in _parameters(model, shape_only).items() if name not in proposed and name not in targets}
    if not proposed and not targets and not parameters:
        return {}
    dtypes = {name: helper.np_dtype_to_tensor_dtype(value.dtype) for name, value in proposed.items()}
    dtypes.update({name: onnx.TensorProto.INT64 for name in targets})
    dtypes.update(parameters)
    runs = _runs(model, dtypes)
    if not runs:
        return {}
    batches = list(CHECK_BATCHES) if len(runs) == len(CHECK_BATCHES) else None
    values = {name: runs[0][name] for name in [*proposed, *parameters] if _same_in_every_run(runs, name)}
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
