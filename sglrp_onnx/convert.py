"""The conversion pipeline: load -> canonicalise -> assign rules -> emit relevance -> check.

:func:`convert` returns a new ModelProto whose forward part is the original model's nodes,
untouched, and whose relevance part (SPEC sections 2-5) reads the forward's tensors by name.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import checker, helper, version_converter

from sglrp_onnx import metadata
from sglrp_onnx.bounds import bounds_at_input, bounds_for_tensor, carry_bounds
from sglrp_onnx.canonicalize import canonicalize, fold_model_constants, fold_pad_into_conv, fold_shape_computations
from sglrp_onnx.skeleton import infer_shapes_in_place, skeleton
from sglrp_onnx.composites import assign_rules, default_gamma
from sglrp_onnx.emit.builder import PREFIX, Context, Emitter
from sglrp_onnx.emit.methods import CONTRASTS, DEFAULT_CONTRAST, METHODS, combine_scaled, initial_relevance
from sglrp_onnx.emit.relevance import blocking_nodes, emit_relevance, moves_batch_axis, nonnegative_tensors
from sglrp_onnx.errors import InternalError, RuleError, SglrpError, UnsupportedModelError, UsageError
from sglrp_onnx.graph import Graph, from_onnx, main_opset
from sglrp_onnx.io import load_model, save_model
from sglrp_onnx.presets import get_preset
from sglrp_onnx.rules import LinearRule
from sglrp_onnx.version import __version__

#: The emitter writes operators in their opset-13 form; ScatterElements(reduction="add") needs 16.
MIN_OPSET = 13
SCATTER_OPSET = 16
OLDEST_OPSET = 7
QUANTISED_OPS = ("QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
#: Runtimes the relevance part can be shaped for (SPEC section 8). "onnxruntime": the forms fastest
#: on ONNX Runtime's CPU and CUDA providers; "tensorrt": only ops and attributes TensorRT 10 parses
#: (MaxPool backward by first-maximum masks, no scatter reductions), also bit-reproducible on CUDA.
TARGET_RUNTIMES = ("onnxruntime", "tensorrt")
#: Rules for attention weights (SPEC section 7): CP-LRP holds them constant; AttnLRP propagates
#: through them (uniform rule on the products, its own Softmax rule).
ATTENTION_RULES = ("cp", "attnlrp")
LAYOUTS = {4: ("NCHW", "NHWC"), 3: ("NCW", "NWC"), 5: ("NCDHW", "NDHWC"), 2: ("NC", "NC")}


def _check_options(method: str, contrast: str | None, numbers: dict[str, float]) -> str | None:
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
    if method == "lrp" and contrast is not None:
        raise UsageError("--contrast applies to clrp and sglrp only, not to lrp")
    if contrast is not None and contrast not in CONTRASTS:
        raise UsageError(f"unknown contrast '{contrast}' (known: {', '.join(CONTRASTS)})")
    for name, value in numbers.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")
        if name in ("epsilon", "stabilizer") and value == 0:
            # a zero stabiliser divides 0 by 0 wherever a layer's output is 0 (an all-zero image)
            raise UsageError(f"{name} must be > 0 (got 0): LRP divides by layer outputs, which can be exactly 0")
    return contrast if contrast is not None else DEFAULT_CONTRAST[method]


def load_rule_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read per-node rule overrides from a JSON or YAML file (a mapping key -> rule), or from
    inline JSON (a string that starts with ``{``, e.g. ``'{"Add": "epsilon"}'``)."""
    if isinstance(path, str) and path.lstrip().startswith("{"):
        try:
            data = json.loads(path)
        except ValueError as error:
            raise RuleError(f"--rules: not valid inline JSON: {error}") from None
        if not isinstance(data, dict):
            raise RuleError("--rules: inline JSON must be an object of node name / glob / op type -> rule")
        return data
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise RuleError(f"{path}: cannot read rule file: {error.strerror}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # json and yaml raise their own types
        raise RuleError(f"{path}: not a valid {path.suffix.lstrip('.') or 'JSON'} rule file: {error}") from None
    if isinstance(data, dict) and "rules" in data and isinstance(data["rules"], dict):
        data = data["rules"]
    if not isinstance(data, dict):
        raise RuleError(f"{path}: a rule file holds a mapping of node name / glob / op type to a rule")
    return data


def strip_relevance(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the relevance part of a model this engine converted, giving back the forward model."""
    meta = metadata.read(model)
    prefix = meta.get(metadata.NODE_PREFIX, "")
    try:
        original_outputs = json.loads(meta.get(metadata.ORIGINAL_OUTPUTS, ""))
    except ValueError:
        original_outputs = None
    graph = model.graph
    outputs = {o.name for o in graph.output}
    if (not prefix.startswith(PREFIX.rstrip("/")) or not isinstance(original_outputs, list) or not original_outputs
            or not all(isinstance(o, str) and o in outputs for o in original_outputs)):
        raise UnsupportedModelError(
            "the model carries sglrp_onnx.* metadata that does not describe a model this engine converted "
            f"(node_prefix {prefix!r}, original_outputs {meta.get(metadata.ORIGINAL_OUTPUTS)!r}); remove that metadata "
            "to convert it as a plain model"
        )
    kept_nodes = [n for n in graph.node if not n.name.startswith(prefix)]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept_init = [t for t in graph.initializer if not t.name.startswith(prefix)]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)
    target = meta.get(metadata.TARGET_INPUT)
    kept_inputs = [i for i in graph.input if i.name != target]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    kept_outputs = [o for o in graph.output if o.name in original_outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    kept_info = [v for v in graph.value_info if not v.name.startswith(prefix)]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    metadata.write(model, {})
    return model


def _precheck(model: onnx.ModelProto) -> None:
    """Refusals that need no shape information (the ONNX checker already ran in load_model)."""
    opset = main_opset(model)
    if opset < OLDEST_OPSET:
        raise UnsupportedModelError(f"the model uses ONNX opset {opset}; the engine supports opset {OLDEST_OPSET} and newer")
    quantised = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type in QUANTISED_OPS]
    if quantised:
        index, node = quantised[0]
        kinds = sorted({n.op_type for _, n in quantised})
        raise UnsupportedModelError(
            f"quantised models are not supported: node '{node.name or f'{node.op_type}_{index}'}' (op {node.op_type}); "
            f"{len(quantised)} quantised node(s) of types {', '.join(kinds)}; convert the float model instead"
        )


def _raise_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    opset = main_opset(model)
    needed = MIN_OPSET
    if any(n.op_type == "MaxPool" for n in model.graph.node):
        needed = SCATTER_OPSET
    if opset >= needed:
        return model, opset
    try:
        converted = version_converter.convert_version(model, needed)
    except Exception as error:  # the converter raises RuntimeError / ConvertError
        raise UnsupportedModelError(
            f"the model uses opset {opset}; the relevance operators need opset {needed}, and ONNX's version "
            f"converter failed on it: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    return converted, needed


#: Ops that preprocessing may put between the image and the Transpose to NCHW (Keras Rescaling
#: and Normalization layers, casts, padding): they keep the layout.
PREPROCESSING = ("Add", "Sub", "Mul", "Div", "Cast", "Identity", "Dropout", "Pad", "Clip", "Sqrt", "Neg")
#: Ops whose channel axis is axis 1 (ONNX's layout): a sign that the tensor they read is NCHW.
READS_NCHW = ("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
              "GlobalAveragePool", "GlobalMaxPool", "LRN")


def _per_channel_axis(graph: Graph, node, rank: int) -> int | None:
    """The one axis along which a constant operand of ``node`` varies (normalisation by channel
    mean and std), counted in the computed operand's rank; None if none or several."""
    for name in node.inputs[:2]:
        if not name or not graph.is_const(name):
            continue
        shape = (1,) * (rank - graph.constants[name].ndim) + tuple(graph.constants[name].shape)
        varying = [axis for axis, size in enumerate(shape) if size > 1]
        if len(varying) == 1:
            return varying[0]
    return None


def _layout_in_graph(graph: Graph, rank: int) -> bool | None:
    """True for NHWC, False for NCHW, None if the graph does not say: follows the image through
    preprocessing to the first node that tells (a Transpose to channels-first, an op that reads
    channels on axis 1, a per-channel constant)."""
    consumers = graph.consumers()
    to_channels_first = [0, rank - 1, *range(1, rank - 1)]
    frontier, seen = [graph.image], {graph.image}
    while frontier:
        tensor = frontier.pop(0)
        for node in consumers.get(tensor, []):
            if node.op_type == "Transpose":
                if list(node.attrs.get("perm", [])) == to_channels_first:
                    return True
                continue
            if node.op_type in READS_NCHW and node.inputs[0] == tensor:
                return False
            if node.op_type not in PREPROCESSING:
                continue
            axis = _per_channel_axis(graph, node, rank) if node.op_type in ("Add", "Sub", "Mul", "Div") else None
            if axis in (1, rank - 1) and rank > 2:
                return axis == rank - 1
            for out in node.outputs:
                if out and out not in seen and not graph.is_const(out):
                    seen.add(out)
                    frontier.append(out)
    return None


def _layout(graph: Graph, requested: str | None) -> tuple[str, int]:
    """The image's layout: as requested, else as the graph says (SPEC section 5), else NHWC for
    an image whose last axis is 1 or 3 while axis 1 is neither, else NCHW."""
    shape = graph.shape(graph.image)
    rank = len(shape) if shape is not None else 4
    first, last = LAYOUTS.get(rank, ("NC" + "X" * (rank - 2), "N" + "X" * (rank - 2) + "C"))
    if requested:
        if requested not in (first, last):
            raise UsageError(f"layout '{requested}' does not fit the image input of rank {rank} (use {first} or {last})")
        return requested, 1 if requested == first else rank - 1
    channels_last = _layout_in_graph(graph, rank) if rank > 2 else False
    if channels_last is None:
        channels_last = shape is not None and rank > 2 and shape[-1] in (1, 3) and shape[1] not in (1, 3)
    return (last, rank - 1) if channels_last else (first, 1)


def _own_bounds(graph: Graph, node, rule: LinearRule):
    """Bounds given in a zbox override, per channel on the layer input's channel axis."""
    shape = graph.shape(node.inputs[0])
    axis = 1 if node.op_type == "Conv" else (len(shape) if shape is not None else 2) - 1
    return bounds_for_tensor(graph, node.inputs[0], rule.params["low"], rule.params["high"], axis)


def _zbox_bounds(graph: Graph, rules: dict, low: Any, high: Any, channel_axis: int) -> dict:
    needing = {name: rule for name, rule in rules.items() if isinstance(rule, LinearRule) and rule.needs_bounds}
    nodes = {n.name: n for n in graph.nodes}
    result = {}
    carried_for = {}
    for name, rule in needing.items():
        if "low" in rule.params:
            result[name] = _own_bounds(graph, nodes[name], rule)
        else:
            carried_for[name] = nodes[name].inputs[0]
    if carried_for:
        if low is None or high is None:
            raise RuleError(
                f"rule zbox (layers {', '.join(sorted(carried_for))}) needs the input bounds: give --low and --high "
                "(one number or one per channel), or a --preset that sets them"
            )
        carried = carry_bounds(graph, bounds_at_input(graph, low, high, channel_axis), set(carried_for.values()))
        for name, tensor in carried_for.items():
            result[name] = carried[tensor]
    return result


def _raise_if_blocked(graph: Graph, rules: dict) -> None:
    """Raise for the first node whose relevance cannot be emitted (naming how many more there are)."""
    blocked = blocking_nodes(graph, rules)
    if blocked:
        more = f" (and {len(blocked) - 1} more blocking node(s): 'sglrp-onnx inspect' lists them all)" if len(blocked) > 1 else ""
        raise UnsupportedModelError(blocked[0][1] + more)


def canonical_graph(model: onnx.ModelProto, image_input: str | None = None) -> Graph:
    """The canonical graph of ``model`` (constants and shape computations folded on a copy, shapes
    inferred, rewritten)."""
    # fold_model_constants returns a copy of its own, which shape inference may annotate in place
    graph = from_onnx(infer_shapes_in_place(fold_shape_computations(fold_model_constants(model))))
    return canonicalize(graph, image_input)


def _reads_own_input(rule) -> bool:
    """Whether a Conv's rule sees a zero-padded border the same as its own zero padding."""
    if not isinstance(rule, LinearRule):
        return rule is not None and rule.name == "norm"
    if rule.name == "zbox":
        return "low" not in rule.params  # carried bounds are 0 on a zero Pad's border
    return all(term.input in ("x", "pos", "neg") for term in rule.terms)


def _unique(taken: set[str], wanted: str) -> str:
    name = wanted
    index = 1
    while name in taken:
        name = f"sglrp_{wanted}" if index == 1 else f"sglrp_{wanted}_{index}"
        index += 1
    taken.add(name)
    return name


def _all_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {n.name for n in graph.node}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    names.update(t.name for t in graph.initializer)
    names.update(v.name for v in graph.input)
    names.update(v.name for v in graph.output)
    names.update(v.name for v in graph.value_info)
    names.discard("")
    return names


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors of ``model`` that hold constants the relevance part may read by name (weight recipes,
    :mod:`sglrp_onnx.recipes`): initializers that are not graph inputs (an input with an initializer
    can be fed another value), and node outputs (constant ones come from Constant nodes or constant
    subgraphs, which ONNX Runtime folds as it folds the recipes)."""
    inputs = {i.name for i in model.graph.input}
    names = {t.name for t in model.graph.initializer if t.name not in inputs}
    names.update(out for node in model.graph.node for out in node.output)
    return names


def _describe_rule(rule) -> dict[str, Any]:
    params = {}
    for key, value in rule.params.items():
        params[key] = np.asarray(value).tolist() if key in ("low", "high") else value
    return {"rule": rule.name, **params}


def convert(
    model_or_path: Any,
    *args: Any,
    **kwargs: Any,
) -> onnx.ModelProto:
    """Turn an ONNX classifier into a model that also outputs a relevance map (SPEC section 2).

    Parameters follow SPEC sections 3-4: ``method`` (lrp, clrp, sglrp), ``contrast`` (signed,
    scaled; None = the method's default), ``positive`` (clamp at 0), ``composite``, zbox bounds
    ``low``/``high`` (one number or one per channel of the image input), ``epsilon`` (the epsilon
    rule's), ``stabilizer`` (every other rule's), ``gamma`` (None: 0.25, or 0.05 for the
    ``transformer`` composite), ``rules`` (per-node overrides: a
    mapping, or the path of a JSON/YAML rule file), ``image_input`` (with several float inputs),
    ``preset`` (preprocessing preset; sets the bounds unless given), ``layout`` (NCHW/NHWC; detected
    when None), ``attention`` (``cp``: CP-LRP, attention weights as constants; ``attnlrp``:
    AttnLRP's rules through them; SPEC section 7), ``target_runtime`` (``onnxruntime``, the default,
    or ``tensorrt``: no MaxPool ``Indices`` and no scatter reductions, which TensorRT refuses and
    which CUDA computes with atomics; SPEC section 8). Raises a :class:`sglrp_onnx.errors.SglrpError` subclass on bad input; errors about
    a model read from a file name that file.
    """
    try:
        return _convert(model_or_path, *args, **kwargs)
    except SglrpError as error:
        if isinstance(model_or_path, (str, os.PathLike)) and str(model_or_path) not in str(error):
            raise type(error)(f"{model_or_path}: {error}") from None
        raise


def _convert(
    model_or_path: Any,
    method: str = "sglrp",
    contrast: str | None = None,
    composite: str = "dtd",
    low: Any = None,
    high: Any = None,
    epsilon: float = 1e-6,
    gamma: float | None = None,
    rules: dict[str, Any] | str | os.PathLike | None = None,
    stabilizer: float = 1e-6,
    positive: bool = False,
    image_input: str | None = None,
    preset: str | None = None,
    layout: str | None = None,
    attention: str = "cp",
    target_runtime: str = "onnxruntime",
) -> onnx.ModelProto:
    if attention not in ATTENTION_RULES:
        raise UsageError(f"unknown attention rule '{attention}' (known: {', '.join(ATTENTION_RULES)})")
    if target_runtime not in TARGET_RUNTIMES:
        raise UsageError(f"unknown target runtime '{target_runtime}' (known: {', '.join(TARGET_RUNTIMES)})")
    if gamma is None:
        gamma = default_gamma(composite)
    contrast = _check_options(method, contrast, {"epsilon": epsilon, "stabilizer": stabilizer, "gamma": gamma})
    if preset is not None:
        get_preset(preset)  # an unknown name fails before any work
    if isinstance(rules, (str, os.PathLike)):
        rules = load_rule_file(rules)
    model = load_model(model_or_path)
    if metadata.is_augmented(model):
        # Converting again: bounds, preset and layout the model was made with still describe its input.
        recorded = metadata.read(model)
        if low is None and high is None and preset is None:
            preset = recorded.get(metadata.PRESET) or None
            if preset is None:
                low = json.loads(recorded.get(metadata.KEY_PREFIX + "low", "null"))
                high = json.loads(recorded.get(metadata.KEY_PREFIX + "high", "null"))
        layout = layout or recorded.get(metadata.LAYOUT) or None
        model = strip_relevance(model)
    if preset is not None:
        chosen = get_preset(preset)
        low = chosen.low if low is None else low
        high = chosen.high if high is None else high
    _precheck(model)
    original_opset = main_opset(model)
    model, opset = _raise_opset(model)
    graph = canonical_graph(model, image_input)
    image_type = graph.dtypes.get(graph.image)
    if image_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        kind = onnx.TensorProto.DataType.Name(image_type or 0)
        advice = {
            onnx.TensorProto.DOUBLE: "ONNX Runtime's CPU build has no float64 Conv; cast the model's weights and input to float32",
        }.get(image_type, "the engine explains float32 and float16 images")
        raise UnsupportedModelError(f"the image input '{graph.image}' is {kind}; only float32 and float16 models are supported ({advice})")
    widen = image_type == onnx.TensorProto.FLOAT16
    layout_name, channel_axis = _layout(graph, layout)
    defaults = {"epsilon": epsilon, "stabilizer": stabilizer, "gamma": gamma}
    assigned = assign_rules(graph, composite, defaults, rules)
    fold_pad_into_conv(graph, lambda conv: _reads_own_input(assigned.get(conv.name)))
    try:
        bounds = _zbox_bounds(graph, assigned, low, high, channel_axis)
    except RuleError:
        _raise_if_blocked(graph, assigned)  # the real cause first: an op the engine cannot explain
        raise

    logits_shape = graph.shape(graph.logits)
    classes = int(logits_shape[1])
    if method == "clrp" and classes < 2:
        raise UnsupportedModelError(f"clrp needs at least 2 classes; the logits '{graph.logits}' have {classes}")

    original_outputs = [o.name for o in model.graph.output]
    result = model  # load_model gave this function its own copy: the forward part is built on it, not copied again
    taken = _all_names(result)
    names = {
        "target": _unique(taken, "target"),
        "explained_class": _unique(taken, "explained_class"),
        "relevance": _unique(taken, "relevance"),
    }
    reuse_logits = graph.logits == "logits" and "logits" in graph.outputs and len(logits_shape) == 2
    names["logits"] = "logits" if reuse_logits else _unique(taken, "logits")
    emitter = Emitter(taken, shared=_constant_tensors(result), materialise=target_runtime == "tensorrt")
    logits_2d = graph.logits
    if widen:  # float16 model: the relevance part works in float32, the contract outputs are float32
        logits_2d = emitter.op("Cast", [logits_2d], "logits32", to=onnx.TensorProto.FLOAT)
        reuse_logits = False
        if names["logits"] == "logits" and "logits" in graph.outputs:
            names["logits"] = _unique(taken, "logits")
    if len(logits_shape) == 4:
        logits_2d = emitter.op("Flatten", [logits_2d], "logits2d", axis=1)
    start = initial_relevance(emitter, logits_2d, names["target"], classes, method, contrast)
    passes = 2 if contrast == "scaled" else 1
    nonnegative = nonnegative_tensors(graph)

    def propagate(initial: str, batch_passes: int) -> str:
        context = Context(emitter, graph, assigned, bounds, batch_passes, nonnegative, widen=widen,
                          stabilizer=stabilizer, attention=attention, target_runtime=target_runtime)
        if len(logits_shape) == 4:
            initial = emitter.op("Reshape", [initial, emitter.const([-1, classes, 1, 1])], "initial4d")
        try:
            return emit_relevance(context, initial)
        except UnsupportedModelError:
            _raise_if_blocked(graph, assigned)  # the same first node, and how many more there are
            raise

    if passes == 2 and moves_batch_axis(graph):
        # the forward cannot be tiled on axis 0: propagate the two halves one after the other
        halves = [propagate(part, 1) for part in start.halves]
        relevance = emitter.op("Concat", halves, "halves", axis=0)
    else:
        relevance = propagate(start.relevance, passes)
    context = Context(emitter, graph, assigned, bounds, passes, nonnegative, widen=widen)
    if passes == 2:
        relevance = combine_scaled(context, relevance, graph.image)
    if positive:
        relevance = emitter.op("Relu", [relevance], "positive")

    _add_output(emitter, relevance, names["relevance"])
    _add_output(emitter, start.explained_class, names["explained_class"])
    if not reuse_logits:
        _add_output(emitter, logits_2d, names["logits"])
    _assemble(result, emitter, graph, names, classes, reuse_logits)
    metadata.write(result, {
        "version": __version__,
        "method": method,
        "contrast": contrast or "none",
        "positive": str(bool(positive)).lower(),
        "composite": composite,
        "epsilon": repr(float(epsilon)),
        "stabilizer": repr(float(stabilizer)),
        "gamma": repr(float(gamma)),
        "attention": attention,
        "target_runtime": target_runtime,
        "rules": rules or {},
        "low": np.asarray(low).tolist() if low is not None else None,
        "high": np.asarray(high).tolist() if high is not None else None,
        "preset": preset or "",
        "layout": layout_name,
        "image_input": graph.image,
        "logits_tensor": graph.logits,
        "target_input": names["target"],
        "logits_output": names["logits"],
        "explained_class_output": names["explained_class"],
        "relevance_output": names["relevance"],
        "original_outputs": original_outputs,
        "node_prefix": PREFIX,
        "original_opset": str(original_opset),
        "opset": str(opset),
        "layer_rules": {name: _describe_rule(rule) for name, rule in assigned.items()},
    })
    _finish(result)
    return result


def _add_output(emitter: Emitter, source: str, name: str) -> None:
    emitter.nodes.append(helper.make_node("Identity", [source], [name], name=emitter.fresh("output")))


def _assemble(model: onnx.ModelProto, emitter: Emitter, graph: Graph, names: dict, classes: int, reuse_logits: bool) -> None:
    g = model.graph
    image_info = next(i for i in g.input if i.name == graph.image)
    batch = copy.deepcopy(image_info.type.tensor_type.shape.dim[0]) if image_info.type.tensor_type.shape.dim else None

    def info(name: str, elem_type: int, dims: list) -> onnx.ValueInfoProto:
        value = helper.make_tensor_value_info(name, elem_type, None)
        shape = value.type.tensor_type.shape
        for dim in dims:
            entry = shape.dim.add()
            if dim == "batch":
                if batch is not None:
                    entry.CopyFrom(batch)
            else:
                entry.dim_value = dim
        return value

    g.input.append(info(names["target"], onnx.TensorProto.INT64, ["batch"]))
    g.node.extend(emitter.nodes)
    g.initializer.extend(emitter.initializers)
    if not reuse_logits:
        g.output.append(info(names["logits"], onnx.TensorProto.FLOAT, ["batch", classes]))
    g.output.append(info(names["explained_class"], onnx.TensorProto.INT64, ["batch"]))
    relevance_info = copy.deepcopy(image_info)
    relevance_info.name = names["relevance"]
    relevance_info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT  # float32 also for float16 models
    g.output.append(relevance_info)


def _finish(model: onnx.ModelProto) -> None:
    """Set the lowest IR version the opsets need and run the full ONNX check."""
    del model.graph.value_info[:]
    model.ir_version = max(helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True), 4)
    try:
        checker.check_model(skeleton(model), full_check=True)  # the graph, without a second copy of the weights
    except Exception as error:
        raise InternalError(f"internal error: the converted model fails the ONNX checker ({error}); please report this") from None


def save(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a converted model atomically; an existing file needs ``force=True``."""
    return save_model(model, path, force=force)
