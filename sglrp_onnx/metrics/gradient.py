"""The gradient x input baseline, computed exactly with the engine's own LRP-0.

Why LRP-0 is gradient x input: in a network of linear layers (Conv, Gemm, MatMul with constant
weights; biases allowed), positively homogeneous activations (ReLU, LeakyReLU, PReLU: f(x) = x f'(x)),
max pooling and average pooling, the epsilon rule with a vanishing stabiliser, relevance passed
through the activations and the ``zero`` rule on sums gives, layer by layer, ``R_j = a_j * dF/da_j``
(induction from the logit, where ``R = F``; a bias, or a constant added, only absorbs its own
share). Montavon et al. 2019 ("Layer-Wise Relevance Propagation: An Overview", section 10.2) and
Ancona et al. 2018 ("Towards better understanding of gradient-based attribution methods") state
this equivalence.

A clipped activation breaks it: ReLU6 (``Clip(x, 0, 6)``, all of EfficientNet-Lite) outputs the
constant 6 where ``x > 6``, where the gradient is 0 but the pass rule hands on ``6 * dF/dy``.
:func:`gradient_model` therefore rewrites every ``Clip(x, lo, hi)`` into the same function built
from ReLUs, ``lo + Relu(x + (-lo)) - Relu(x + (-hi))``, whose pieces the rules above treat
exactly (the Adds of constants get the ``zero`` rule, so the constants absorb their share; the
difference of the two ReLUs is LRP-0 of a signed sum). For the same reason a ``Sub`` of a
constant (in-graph normalisation ``x - mean``) becomes ``Add(x, -mean)``: the engine passes
relevance through a Sub of a constant unchanged, which is not its gradient. ``c - x`` is refused. The rewritten model computes the same
forward pass (up to float rounding in the subtraction).

Anything else on the float path whose LRP rule is not the gradient -- smooth activations
(Sigmoid, Tanh, GELU, SiLU, HardSwish, ...), a Mul of two computed tensors (gates), normalisation
layers with their sigma held constant, attention -- makes :func:`gradient_model` refuse with an
:class:`UnsupportedModelError` naming the node: the baseline is exact or absent, never approximate.

The explained quantity is the logit of the target class (method ``lrp``, composite ``epsilon``,
``epsilon`` and ``stabilizer`` = :data:`STABILIZER`). Checked against PyTorch autograd on the
same weights in ``tests/test_metrics_gradient.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sglrp_onnx.errors import UnsupportedModelError

STABILIZER = 1e-20
"""Epsilon and stabiliser of the LRP-0 pass: small enough to vanish against any float32 output
that carries relevance, large enough that an output of exactly 0 (which carries none) gives 0/eps = 0."""

# Op types whose LRP rule in the ``epsilon`` composite (with ``zero`` on Add/Sub) is the gradient.
_EXACT = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
    "Relu", "LeakyRelu", "PRelu",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "Resize",
    "Add", "Sum", "Concat", "Split", "Slice", "Gather", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Pad", "Identity", "Dropout", "Cast", "Constant", "ConstantOfShape", "Shape", "Range",
    "Expand", "Clip",
}
# Scaling by a constant is exact (pass rule: R_in = R_out = c x g = x (c g)); by a computed tensor not.
_SCALE_OPS = {"Mul", "Div"}
# A final Softmax / LogSoftmax is where the logits are read; the rules start before it.
_FINAL_OPS = {"Softmax", "LogSoftmax"}
_SHAPE_ONLY = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    for node in graph.node:  # Constant nodes and what is computed from constants only
        if node.op_type == "Constant" or (node.input and all(i in names or not i for i in node.input)):
            names.update(node.output)
    return names


def _check_exact(graph: onnx.GraphProto) -> None:
    constants = _constant_names(graph)
    literals = _constant_values(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def reaches_output(name: str) -> bool:
        if name in outputs:
            return True
        nexts = consumers.get(name, [])
        return bool(nexts) and all(n.op_type in _SHAPE_ONLY and reaches_output(n.output[0]) for n in nexts)

    for node in graph.node:
        where = f"node '{node.name or node.output[0]}' ({node.op_type})"
        if node.op_type in _EXACT:
            continue
        if node.op_type in _SCALE_OPS and sum(i not in constants for i in node.input) <= 1:
            continue
        if node.op_type == "Sub" and (node.input[1] in literals or all(i not in constants for i in node.input)):
            continue  # x - c is rewritten into x + (-c); a - b of two computed tensors: LRP-0 of a signed sum
        if node.op_type in _FINAL_OPS and reaches_output(node.output[0]):
            continue
        if all(o in constants for o in node.output):
            continue
        raise UnsupportedModelError(
            f"gradient x input cannot be computed exactly by LRP-0 for {where}: its LRP rule is not its "
            "gradient (exact: linear layers, ReLU/LeakyReLU/PReLU/Clip, pooling, sums, shape operations)"
        )


def _scalar(graph_constants: dict[str, np.ndarray], name: str) -> float | None:
    if not name:
        return None
    value = graph_constants.get(name)
    if value is None or value.size != 1:
        raise UnsupportedModelError(f"Clip bound '{name}' is not a constant scalar; cannot rewrite it")
    return float(value.reshape(()))


def _clip_bounds(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[float | None, float | None]:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "min" in attributes or "max" in attributes:  # opset < 11
        return attributes.get("min"), attributes.get("max")
    inputs = list(node.input) + ["", ""]
    return _scalar(constants, inputs[1]), _scalar(constants, inputs[2])


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _relu_form(node: onnx.NodeProto, lo: float | None, hi: float | None, dtype) -> tuple[list, list]:
    """Nodes computing ``lo + Relu(x - lo) - Relu(x - hi)`` (pieces dropped where a bound is absent)."""
    x, y, base = node.input[0], node.output[0], node.name or node.output[0]
    nodes, weights = [], []

    def const(value: float, tag: str) -> str:
        name = f"{base}/gradient_{tag}"
        weights.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def relu_above(bound: float, tag: str) -> str:
        shifted, rectified = f"{base}/gradient_{tag}_shifted", f"{base}/gradient_{tag}_relu"
        # Add of -bound, not Sub: the engine's Add takes the ``zero`` rule (the constant absorbs
        # its share), its Sub-by-constant always passes relevance on
        nodes.append(helper.make_node("Add", [x, const(-bound, tag)], [shifted], name=f"{base}/gradient_{tag}_shift"))
        nodes.append(helper.make_node("Relu", [shifted], [rectified], name=f"{base}/gradient_{tag}_relu"))
        return rectified

    if lo is None and hi is None:
        nodes.append(helper.make_node("Identity", [x], [y], name=base))
        return nodes, weights
    lower = relu_above(lo, "lo") if lo is not None else x
    if hi is None:
        top = lower
    else:
        top = f"{base}/gradient_clipped" if lo not in (None, 0.0) else y
        nodes.append(helper.make_node("Sub", [lower, relu_above(hi, "hi")], [top], name=f"{base}/gradient_diff"))
    if lo not in (None, 0.0):
        nodes.append(helper.make_node("Add", [top, const(lo, "lo_back")], [y], name=f"{base}/gradient_add"))
    elif top != y:
        nodes.append(helper.make_node("Identity", [top], [y], name=f"{base}/gradient_out"))
    return nodes, weights


def gradient_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a plain classifier whose LRP-0 relevance is exactly gradient x input.

    Clip nodes are rewritten into ReLUs and ``x - c`` into ``x + (-c)`` (see the module's text);
    any node whose rule would not
    be its gradient raises :class:`UnsupportedModelError`. An augmented model is stripped of its
    relevance part first.
    """
    from sglrp_onnx.convert import strip_relevance
    from sglrp_onnx.runtime import is_augmented

    if is_augmented(model):
        model = strip_relevance(model)
    _check_exact(model.graph)
    constants = _constant_values(model.graph)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    dtype = np.float32
    new_nodes, new_weights = [], []
    computed_constants = _constant_names(model.graph)
    for node in model.graph.node:
        if node.op_type == "Clip":
            lo, hi = _clip_bounds(node, constants)
            nodes, weights = _relu_form(node, lo, hi, dtype)
            new_nodes.extend(nodes)
            new_weights.extend(weights)
        elif node.op_type == "Sub" and node.input[1] in constants and node.input[0] not in computed_constants:
            # in-graph normalisation x - mean: as x + (-mean), so the constant absorbs its share
            negated = f"{node.name or node.output[0]}/gradient_negated"
            new_weights.append(numpy_helper.from_array(-constants[node.input[1]], negated))
            new_nodes.append(helper.make_node("Add", [node.input[0], negated], list(node.output), name=node.name))
        else:
            new_nodes.append(node)
    del result.graph.node[:]
    result.graph.node.extend(new_nodes)
    for index, node in enumerate(result.graph.node):  # named, so that gradient_rules can address each Add
        if not node.name:
            node.name = f"gradient_{node.op_type}_{index}"
    result.graph.initializer.extend(new_weights)
    return result


def gradient_rules(model: onnx.ModelProto) -> dict[str, str]:
    """Rule overrides that make sums LRP-0 (constants absorb their share): ``zero`` on every Add
    node, by exact node name."""
    return {n.name: "zero" for n in model.graph.node if n.op_type == "Add" and n.name}


def gradient_explainer(model, providers=None, **explainer_kwargs):
    """An :class:`sglrp_onnx.runtime.Explainer` whose relevance is gradient x input of the target
    logit. ``model``: a plain or augmented ONNX classifier (path, bytes or ``ModelProto``)."""
    from sglrp_onnx.io import load_model
    from sglrp_onnx.runtime import Explainer

    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    rewritten = gradient_model(proto)
    return Explainer(
        rewritten,
        providers,
        method="lrp",
        composite="epsilon",
        epsilon=STABILIZER,
        stabilizer=STABILIZER,
        rules=gradient_rules(rewritten),
        **explainer_kwargs,
    )
