"""Composites: which rule each layer gets, plus per-node overrides.

A composite maps a layer's role to a rule, as Zennit's composites do (``zennit/composites.py``):
"first layers" (the linear layers fed by the image without another linear layer in between),
other convolutions, and dense layers. Layers without weights get fixed rules (SPEC section 5):
``norm`` for average pooling and residual sums, ``pass`` for activations and the rest.

Overrides (``rules=`` in the API, ``--rules FILE`` in the CLI) set the rule of single nodes, by
exact node name, by glob on node names, or by op type; precedence is exact > glob > op type >
composite.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from sglrp_onnx.errors import RuleError, UsageError
from sglrp_onnx.graph import LINEAR_OPS, Graph, Node
from sglrp_onnx.rules import LinearRule, SimpleRule, make_rule, norm_rule, zero_rule

#: composite name -> (first conv, first dense, other conv, dense)
COMPOSITES: dict[str, tuple[str, str, str, str]] = {
    "dtd": ("zbox", "zbox", "zplus", "zplus"),
    "epsilon-gamma-box": ("zbox", "zbox", "gamma", "epsilon"),
    "epsilon-plus": ("zplus", "epsilon", "zplus", "epsilon"),
    "epsilon-plus-flat": ("flat", "flat", "zplus", "epsilon"),
    "epsilon-alpha2-beta1": ("alphabeta", "epsilon", "alphabeta", "epsilon"),
    "epsilon-alpha2-beta1-flat": ("flat", "flat", "alphabeta", "epsilon"),
    "epsilon": ("epsilon", "epsilon", "epsilon", "epsilon"),
    # transformers (ViT, DeiT, Swin, ...): LXT's ViT recipe, measured in README "Choosing a composite"
    "transformer": ("epsilon", "epsilon", "gamma", "gamma"),
}

#: gamma of the gamma rule where the user gives none: 0.25 (Zennit's default), 0.05 for the
#: transformer composite (the gamma of LXT's ViT recipe, which measured best on a ViT).
DEFAULT_GAMMA = 0.25
COMPOSITE_GAMMA = {"transformer": 0.05}

#: Composites whose sums (residual adds, position embeddings) take the epsilon rule: a constant
#: summand then absorbs its share, as gradient x input does (LXT; SPEC section 7).
EPSILON_SUMS = ("transformer",)


def default_gamma(composite: str) -> float:
    return COMPOSITE_GAMMA.get(composite, DEFAULT_GAMMA)

#: Weightless ops whose relevance rule is ``norm`` (the others pass relevance through or have
#: their own structural rule, see :mod:`sglrp_onnx.emit`).
NORM_OPS = ("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Resize", "Add", "Sum")

#: Weightless per-channel affine ops (standalone BatchNormalization): the epsilon rule of their
#: affine map with ``stabilizer`` (SPEC section 5), shown as ``zero`` (LRP-0 = epsilon with the
#: stabiliser); overrides may choose ``epsilon`` (its own epsilon), ``norm`` or ``pass``.
AFFINE_OPS = ("BatchNormalization", "Affine")

#: Weightless ops whose rule divides by their output (SPEC section 7): an override may set the
#: stabiliser with ``norm`` / ``epsilon`` / ``zero``, or ``pass`` where the shape allows.
STABILISED_OPS = NORM_OPS + ("Normalization", "MatMul", "Einsum", "Sub")


def first_layers(graph: Graph) -> set[str]:
    """Names of the linear nodes reached from the image without passing another linear node."""
    consumers = graph.consumers()
    found: set[str] = set()
    frontier = [graph.image]
    seen = {graph.image}
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.op_type in LINEAR_OPS:
                found.add(node.name)
                continue
            for out in node.outputs:
                if out and out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return found


def _is_glob(key: str) -> bool:
    return any(ch in key for ch in "*?[")


def assign_rules(
    graph: Graph,
    composite: str,
    defaults: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> dict[str, LinearRule | SimpleRule]:
    """Rule of every node that takes one: linear layers and ``norm`` layers, after overrides.

    Returns ``{node name: rule}``. Nodes not in the result use their op's structural rule.
    """
    if composite not in COMPOSITES:
        raise UsageError(f"unknown composite '{composite}' (known: {', '.join(COMPOSITES)})")
    first_conv, first_dense, conv, dense = COMPOSITES[composite]
    firsts = first_layers(graph)
    rules: dict[str, LinearRule | SimpleRule] = {}
    for node in graph.nodes:
        if node.op_type == "Conv":
            name = first_conv if node.name in firsts else conv
        elif node.op_type == "Dense":
            name = first_dense if node.name in firsts else dense
        elif node.op_type in ("Add", "Sum") and composite in EPSILON_SUMS:
            rules[node.name] = make_rule("epsilon", defaults)
            continue
        elif node.op_type in NORM_OPS:
            rules[node.name] = norm_rule(defaults["stabilizer"])
            continue
        elif node.op_type in AFFINE_OPS or node.op_type == "Normalization":
            # LRP-0 of an affine map (sigma held constant for the normalisations), SPEC 5 and 7
            rules[node.name] = zero_rule(defaults["stabilizer"])
            continue
        else:
            continue
        rules[node.name] = make_rule(name, defaults)
    if overrides:
        _apply_overrides(graph, rules, overrides, defaults, firsts)
    return rules


def _apply_overrides(graph: Graph, rules: dict, overrides: dict[str, Any], defaults: dict[str, Any], firsts: set[str]) -> None:
    if not isinstance(overrides, dict):
        raise RuleError(f"rule overrides must be a mapping of node name / glob / op type to a rule, got {type(overrides).__name__}")
    names = {node.name: node for node in graph.nodes}
    op_types = {node.source_op or node.op_type for node in graph.nodes} | {node.op_type for node in graph.nodes}
    chosen: dict[str, tuple[int, str]] = {}  # node -> (precedence, key); lower precedence number wins
    for key in overrides:
        if not isinstance(key, str) or not key:
            raise RuleError(f"rule override key {key!r} must be a non-empty string")
        if key in names:
            matches, rank = [names[key]], 0
        elif _is_glob(key):
            matches, rank = [n for n in graph.nodes if fnmatch.fnmatchcase(n.name, key)], 1
        elif key in op_types:
            matches, rank = [n for n in graph.nodes if key in (n.op_type, n.source_op)], 2
        else:
            known = ", ".join(sorted(names)[:20])
            raise RuleError(f"rule override '{key}' matches no node name, glob or op type on the explained path (nodes: {known}{', ...' if len(names) > 20 else ''})")
        rule = make_rule(overrides[key], defaults, where=f"rule override '{key}': ")
        if rank > 0:
            # a glob or op type (``MatMul`` names dense layers and attention products alike) takes
            # the nodes its rule applies to; it must apply to one at least
            fitting = [n for n in matches if _applicable(graph, n, rule, firsts) is None]
            if matches and not fitting:
                raise RuleError(f"rule override '{key}': {_applicable(graph, matches[0], rule, firsts)}")
            matches = fitting
        for node in matches:
            if node.name not in chosen or rank < chosen[node.name][0]:
                chosen[node.name] = (rank, key)
    for node_name, (_, key) in chosen.items():
        node = names[node_name]
        rule = make_rule(overrides[key], defaults, where=f"rule override '{key}' for node '{node_name}': ")
        problem = _applicable(graph, node, rule, firsts)
        if problem is not None:
            raise RuleError(f"rule override '{key}': {problem}")
        rules[node_name] = rule


def _applicable(graph: Graph, node: Node, rule, firsts: set[str]) -> str | None:
    """None where ``rule`` can be given to ``node``, else why not."""
    where = node.describe(graph)
    if node.op_type in LINEAR_OPS:
        if rule.name == "pass" and graph.shape(node.inputs[0]) != graph.shape(node.outputs[0]):
            return f"{where}: rule 'pass' needs equal input and output shapes"
        if isinstance(rule, LinearRule) and rule.name == "zbox" and node.name not in firsts and "low" not in rule.params:
            return f"{where} is not a first layer: a zbox override there needs its own low and high"
        return None
    if node.op_type in STABILISED_OPS + AFFINE_OPS and rule.name in ("norm", "epsilon", "zero"):
        return None
    if rule.name == "pass" and graph.shape(node.inputs[0]) == graph.shape(node.outputs[0]) and node.op_type not in NORM_OPS:
        return None
    return f"{where}: rule '{rule.name}' does not apply to this op"
