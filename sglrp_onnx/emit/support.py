"""Where relevance is known to vanish: a static analysis that lets stabilisers drop their sign test.

Zennit's stabiliser ``stab(z) = z + eps * (1 if z >= 0 else -1)`` costs a comparison and a
``Where`` over the whole tensor. Where the relevance divided by ``stab(z)`` is zero at every
position with ``z <= 0``, the quotient does not depend on the denominator there (as long as it is
finite and non-zero), so ``max(z, 0) + eps`` gives the same quotient everywhere, bit for bit: it
equals ``stab(z)`` wherever ``z >= 0``. In a ReLU network ``max(z, 0)`` is the forward's own ReLU
output, so the stabiliser becomes one ``Add`` of a tensor the forward already computed.

The analysis walks the canonical graph backwards and proves, per tensor ``t``:

- *vanishes at zero*: the relevance of ``t`` is 0 wherever ``t == 0``; true when every consumer
  that gives ``t`` relevance gives it in the form ``t * (finite)`` (linear rules whose reducer
  multiplies by the layer input or its positive / negative part, ``norm`` sums and pools,
  products of two independent factors), or moves ``t``'s values and relevance together (shape
  operations, winner-take-all MaxPool, activations with ``f(0) = 0``, multiplication by a
  constant or by a gate computed from ``t``) to a tensor that vanishes at zero itself;
- *vanishes at non-positive*: the relevance of ``t`` is 0 wherever ``t <= 0``; true when every
  such consumer is a ReLU (or a Clip from 0, ReLU6) whose output vanishes at zero, or when ``t``
  is non-negative and vanishes at zero.

The start relevance at the logits vanishes nowhere. Anything the analysis does not know is
assumed not to vanish, which only keeps the full stabiliser.
"""

from __future__ import annotations

from sglrp_onnx.graph import Graph, Node
from sglrp_onnx.rules import LinearRule, SimpleRule

#: Ops whose backward gives each input ``input * (something finite)``.
PROPORTIONAL = ("AveragePool", "GlobalAveragePool", "MatMul", "Einsum")
#: Ops that move values and their relevance together: relevance at a position comes from the
#: output positions that hold the same value.
MOVES_VALUES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Concat", "Split", "Slice", "Pad",
                "MaxPool")
#: Activations with ``f(0) == 0`` whose relevance passes unchanged.
ZERO_AT_ZERO = ("Relu", "LeakyRelu", "PRelu", "Neg", "Abs", "Tanh")
#: Term inputs that are zero where the layer input is zero.
ZERO_WITH_INPUT = ("x", "pos", "neg")


def computed_inputs(graph: Graph, producers: dict, node: Node) -> list[int]:
    """Indices of the inputs of ``node`` that are computed from the image (on the float path).

    Constants and tensors computed only from shapes (an attention scale ``1/sqrt(d)`` taken from
    ``Shape``, which the canonical graph keeps no producer for) carry no relevance: for the rules
    they are constants."""
    return [i for i, name in enumerate(node.inputs)
            if name and not graph.is_const(name) and (name in producers or name == graph.image)]


def computed_from(producers: dict, tensor: str, source: str) -> bool:
    """Whether ``tensor`` is computed from ``source`` (``producers``: tensor -> producing node)."""
    stack, seen = [tensor], set()
    while stack:
        name = stack.pop()
        if name == source:
            return True
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is not None:
            stack.extend(n for n in node.inputs if n)
    return False


def gated_factor(producers: dict, node: Node) -> int | None:
    """Index of the factor an elementwise gate multiplies (the other is computed from it), or None."""
    a, b = node.inputs[0], node.inputs[1]
    if computed_from(producers, b, a):
        return 0
    if computed_from(producers, a, b):
        return 1
    return None


class RelevanceSupport:
    """Answers :meth:`vanishes_at_nonpositive` for tensors of the canonical graph (one backward
    sweep when made, no recursion)."""

    def __init__(self, graph: Graph, rules: dict, nonnegative: set[str]):
        self.graph, self.rules, self.nonnegative = graph, rules, nonnegative
        self._producers = graph.producers()
        self._consumers: dict[str, list[Node]] = {}
        for node in graph.nodes:
            for name in node.inputs:
                if name:
                    self._consumers.setdefault(name, []).append(node)
        # one backward sweep: a node's readers come after it in the (topologically ordered) graph,
        # so their outputs are settled when its own are
        self._at_zero: dict[str, bool] = {}
        for node in reversed(graph.nodes):
            for out in node.outputs:
                if out:
                    self._at_zero[out] = out != graph.logits and all(
                        self._consumer_vanishes_at_zero(reader, out) for reader in self._consumers.get(out, []))

    def relu_consumer(self, tensor: str) -> str | None:
        """Output of a ReLU that reads ``tensor`` (that is ``max(tensor, 0)``), if there is one."""
        for node in self._consumers.get(tensor, []):
            if node.op_type == "Relu" and node.inputs[0] == tensor:
                return node.outputs[0]
        return None

    def vanishes_at_nonpositive(self, tensor: str) -> bool:
        """Whether the relevance of ``tensor`` is 0 wherever ``tensor <= 0``."""
        if tensor == self.graph.logits:
            return False
        if tensor in self.nonnegative and self.vanishes_at_zero(tensor):
            return True
        return all(self._reads_relevance(node, tensor) is False
                   or (self._zero_below_zero(node) and node.inputs[0] == tensor and self.vanishes_at_zero(node.outputs[0]))
                   for node in self._consumers.get(tensor, []))

    def _clip_bounds(self, node: Node) -> tuple:
        """``(min, max)`` of a Clip (attributes before opset 11, constant inputs after; None: unknown)."""
        bounds = [node.attrs.get("min", float("-inf")), node.attrs.get("max", float("inf"))]
        for index in (1, 2):
            if len(node.inputs) > index and node.inputs[index]:
                name = node.inputs[index]
                bounds[index - 1] = float(self.graph.constants[name].reshape(-1)[0]) if self.graph.is_const(name) else None
        return tuple(bounds)

    def _zero_below_zero(self, node: Node) -> bool:
        """Whether ``node`` is an activation whose output is 0 wherever its input is <= 0 (ReLU,
        ReLU6 and other Clips from 0)."""
        if node.op_type == "Relu":
            return True
        if node.op_type == "Clip":
            low, high = self._clip_bounds(node)
            return low == 0 and high is not None and high > 0
        return False

    def vanishes_at_zero(self, tensor: str) -> bool:
        """Whether the relevance of ``tensor`` is 0 wherever ``tensor == 0`` (False for tensors no
        node produces: the image and constants)."""
        return self._at_zero.get(tensor, False)

    def _computed_inputs(self, node: Node) -> list[int]:
        return computed_inputs(self.graph, self._producers, node)

    def _reads_relevance(self, node: Node, tensor: str) -> bool:
        """False where ``node`` gives ``tensor`` no relevance (a shape input, a gate)."""
        index = node.inputs.index(tensor)
        return index in self._computed_inputs(node)

    def _outputs_vanish(self, node: Node) -> bool:
        return all(self.vanishes_at_zero(out) for out in node.outputs if out)

    def _consumer_vanishes_at_zero(self, node: Node, tensor: str) -> bool:
        if not self._reads_relevance(node, tensor):
            return True
        op = node.op_type
        computed = self._computed_inputs(node)
        if op in ("Conv", "Dense"):
            return self._linear_proportional(node)
        if op in ("Add", "Sum"):
            rule = self.rules.get(node.name)
            return len(computed) > 1 or (rule is not None and rule.name in ("epsilon", "zero"))
        if op == "Sub":
            return len(computed) > 1
        if op == "Div":
            return computed == [0] and self._outputs_vanish(node)  # by a constant: out == 0 where tensor == 0
        if op == "Mul":
            if len(computed) == 1 or node.inputs[0] == node.inputs[1]:
                return self._outputs_vanish(node)  # by a constant, or x * x: relevance passes
            gated = gated_factor(self._producers, node)
            if gated is None:
                return True  # two independent factors: each gets itself times a finite tensor
            # a gate counts as a constant: relevance passes to the factor it multiplies, none to it
            return node.inputs[gated] != tensor or self._outputs_vanish(node)
        if op in PROPORTIONAL:
            return True
        if op in ("ReduceMean", "ReduceSum"):  # norm over the reduced elements, or a no-op that passes
            return self._outputs_vanish(node) or not node.attrs.get("noop_with_empty_axes", 0)
        if op in MOVES_VALUES or op in ZERO_AT_ZERO:
            return self._outputs_vanish(node)
        if op == "Clip":  # f(0) == 0 where 0 lies within the bounds
            low, high = self._clip_bounds(node)
            return low is not None and high is not None and low <= 0 <= high and self._outputs_vanish(node)
        return False

    def _linear_proportional(self, node: Node) -> bool:
        rule = self.rules.get(node.name)
        if isinstance(rule, SimpleRule):
            return rule.name == "norm"  # "pass" hands the output's relevance on whatever the input
        return (isinstance(rule, LinearRule) and rule.reducer == "input"
                and all(term.input in ZERO_WITH_INPUT for term in rule.terms))
