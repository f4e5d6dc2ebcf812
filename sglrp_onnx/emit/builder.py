"""Helpers to emit ONNX nodes for the relevance part: unique names, constants, shape tensors.

Every node, tensor and initializer the engine adds carries the prefix :data:`PREFIX`, so that a
converted model can be converted again (the old relevance part is recognised and dropped).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sglrp_onnx.graph import Graph

from .support import RelevanceSupport, computed_inputs

PREFIX = "sglrp/"

#: ``value`` attribute of a ConstantOfShape that fills with float32 ones.
ONE = numpy_helper.from_array(np.ones(1, np.float32))


class Emitter:
    """Collects the nodes and initializers of the relevance part, with collision-free names."""

    def __init__(self, taken: set[str], prefix: str = PREFIX, shared: set[str] | None = None, materialise: bool = False):
        self.prefix = prefix
        #: constant tensors of the converted model that weight recipes may read by name
        #: (:func:`sglrp_onnx.recipes.source`); any other source is stored as a copy
        self.shared = shared if shared is not None else set()
        #: store every weight recipe's value as an initializer (TensorRT needs Conv weights as
        #: initializers, SPEC section 8) instead of computing it in the graph from the shared ones
        self.materialise = materialise
        self._recipes: dict[tuple, tuple] = {}
        self.taken = taken
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = itertools.count()
        self._constants: dict[tuple, str] = {}
        self._by_identity: dict[int, tuple[Any, str]] = {}

    def fresh(self, hint: str) -> str:
        while True:
            name = f"{self.prefix}{hint}_{next(self._counter)}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def const(self, value: Any, hint: str = "const", dtype: Any = None) -> str:
        """A constant initializer; float data becomes float32, integer data int64 (deduplicated)."""
        known = self._by_identity.get(id(value))
        if known is not None and known[0] is value and dtype is None:
            return known[1]  # the same (large) weight array used twice: one initializer
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind in "iub":
            array = array.astype(np.int64) if array.dtype.kind != "b" else array
        key = None
        if array.size <= 4096:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._constants:
                return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array.copy(order="C"), name))
        if key is not None:
            self._constants[key] = name
        elif isinstance(value, np.ndarray) and dtype is None:
            self._by_identity[id(value)] = (value, name)  # keeps the array alive, so ids stay unique
        return name

    def weight(self, recipe, hint: str = "w") -> str:
        """A weight given as a :class:`sglrp_onnx.recipes.Recipe`, emitted once per recipe key.

        By default as the recipe's few ONNX nodes over the model's own constants (ONNX Runtime
        folds them when the session is created, so the file stores no second copy); with
        ``materialise``, as one initializer holding its value."""
        known = self._recipes.get(recipe.key)
        if known is not None:
            return known[1]
        if self.materialise:
            name = self.fresh(hint)  # no identity entry: nothing keeps the value alive after writing
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(recipe.value(), np.float32), name))
        else:
            name = recipe.emit(self, [self.weight(parent, hint) for parent in recipe.parents])
        self._recipes[recipe.key] = (recipe, name)  # the recipe kept alive: keys may hold an id()
        return name

    def op(self, op_type: str, inputs: Iterable[str], hint: str | None = None, outputs: int = 1, **attrs) -> Any:
        """Add one node; returns its output name (or the list of names when ``outputs > 1``)."""
        names = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.fresh(f"{op_type}"), **attrs))
        return names[0] if outputs == 1 else names


@dataclass(frozen=True)
class Factored:
    """Relevance kept as the elementwise product ``factor * chain``: ``factor`` a forward tensor
    (its canonical name; :meth:`Context.fwd` gives what the relevance part reads), ``chain`` a
    relevance-side tensor (broadcastable to it).

    Linear rules end in ``R_in = a * c`` and the residual sum rule in ``R_i = a_i * s``; the next
    rule divides that by a stabilised forward tensor. Kept apart, the division needs no
    relevance: ``R / stab(z) = c * (a / stab(z))``, where ``a / stab(z)`` is computed from the
    forward alone, the product ``a * c`` is never made, and the relevance chain keeps to
    convolutions, products and sums, which ONNX Runtime runs in its blocked (NCHWc) layout.
    Builders that do not take this form get the product (:meth:`Context.materialize`).
    """

    factor: str
    chain: str


#: Slope of the step function in :meth:`Context.stabilize`, near float32's largest value (3.4e38):
#: ``alpha * z + 1 <= 0`` for every ``z <= -3.4e-39``.
STEP_SLOPE = 3.0e38


class Context:
    """What the backward builders share: the emitter, the canonical graph, rules, bounds.

    ``passes`` is 2 for the ``scaled`` contrast: relevance tensors then hold the target and the
    dual half in one batch of 2N, and :meth:`fwd` tiles the forward tensors they meet.
    """

    def __init__(self, emitter: Emitter, graph: Graph, rules: dict, bounds: dict, passes: int, nonnegative: set[str],
                 widen: bool = False, stabilizer: float = 1e-6, attention: str = "cp", target_runtime: str = "onnxruntime"):
        self.em = emitter
        #: the conversion's ``stabilizer``, for the weightless rules of SPEC section 7 that take no override
        self.stabilizer = stabilizer
        #: attention rule (SPEC section 7): "cp" (CP-LRP, attention weights as constants) or "attnlrp"
        self.attention = attention
        #: "onnxruntime" or "tensorrt" (SPEC section 8): which forms the backward builders may use
        self.target_runtime = target_runtime
        #: float16 models: forward tensors are cast to float32 where the relevance part reads them
        self.widen = widen
        self.graph = graph
        self.rules = rules
        self.bounds = bounds
        self.passes = passes
        self.nonnegative = nonnegative
        self._tiled: dict[str, str] = {}
        self._shapes: dict = {}
        self._products: dict[Factored, str] = {}

    # ------------------------------------------------------------------ forward tensors

    @functools.cached_property
    def producers(self) -> dict:
        """Producer node of each canonical tensor (the graph does not change while emitting)."""
        return self.graph.producers()

    def computed_inputs(self, node) -> list[int]:
        """Indices of the inputs of ``node`` computed from the image (:func:`.support.computed_inputs`)."""
        return computed_inputs(self.graph, self.producers, node)

    def fwd(self, tensor: str) -> str:
        """The forward tensor as the relevance part sees it: float32 (float16 models are cast at
        the boundary) and tiled twice for 2 passes."""
        if tensor in self._tiled:
            return self._tiled[tensor]
        value = tensor
        if self.widen and self.graph.dtypes.get(tensor, onnx.TensorProto.FLOAT16) != onnx.TensorProto.FLOAT:
            value = self.em.op("Cast", [value], "float32", to=onnx.TensorProto.FLOAT)
        if self.passes > 1:
            value = self.em.op("Concat", [value] * self.passes, "tiled", axis=0)
        self._tiled[tensor] = value
        return value

    def rank(self, tensor: str) -> int:
        shape = self.graph.shape(tensor)
        if shape is None:
            raise KeyError(tensor)
        return len(shape)

    def shape_tensor(self, tensor: str) -> str:
        """Runtime shape of the (tiled) forward tensor."""
        key = self.fwd(tensor)
        if key not in self._shapes:
            self._shapes[key] = self.em.op("Shape", [key], "shape")
        return self._shapes[key]

    def _dims_from(self, tensor: str, start: int) -> str:
        """Runtime ``shape[start:]`` of the (tiled) forward tensor (cached)."""
        key = (self.fwd(tensor), start)
        if key not in self._shapes:
            self._shapes[key] = self.em.op("Slice", [self.shape_tensor(tensor), self.em.const([start]), self.em.const([2**62])], "dims")
        return self._shapes[key]

    def spatial_size(self, tensor: str) -> str:
        """Runtime spatial size (``shape[2:]``) of ``tensor``."""
        return self._dims_from(tensor, 2)

    def _shape_with_batch(self, tensor: str, batch: int) -> str:
        shape = self.graph.shape(tensor)
        if shape is not None and all(d is not None for d in shape[1:]):
            return self.em.const(np.array([batch, *shape[1:]], dtype=np.int64), "shape")
        return self.em.op("Concat", [self.em.const([batch]), self._dims_from(tensor, 1)], "shape", axis=0)

    def batch_shape(self, tensor: str) -> str:
        """A shape for Reshape: ``[-1, *dims[1:]]`` of ``tensor`` (static where known)."""
        return self._shape_with_batch(tensor, -1)

    def reshape_batched(self, relevance: str, like: str, source: str) -> str:
        """Reshape ``relevance`` (shaped like the forward tensor ``source``) to the shape of ``like``.

        Where both tensors have the dynamic batch on axis 0 and the same number of elements per
        sample, the target shape copies axis 0 (``0``) instead of inferring it (``-1``): shape
        inference then keeps the batch dimension's name, which ONNX Runtime needs to prove two
        relevance tensors equal in shape and keep them in its blocked (NCHWc) layout."""
        shape, source_shape = self.graph.shape(like), self.graph.shape(source)
        if (shape is not None and source_shape is not None and shape and source_shape
                and shape[0] is None and source_shape[0] is None
                and all(d is not None for d in list(shape[1:]) + list(source_shape[1:]))
                and int(np.prod(shape[1:])) == int(np.prod(source_shape[1:]))):
            target = self.em.const(np.array([0, *shape[1:]], dtype=np.int64), "shape")
        else:
            target = self.batch_shape(like)
        return self.em.op("Reshape", [relevance, target], "r")

    def sample_shape(self, tensor: str) -> str:
        """``[1, *dims[1:]]`` of ``tensor``: the shape of one sample."""
        return self._shape_with_batch(tensor, 1)

    def ones_sample(self, tensor: str) -> str:
        """An all-ones tensor shaped like one sample of ``tensor`` (batch 1)."""
        shape = self.graph.shape(tensor)
        if shape is not None and all(d is not None for d in shape[1:]):
            return self.em.const(np.ones((1, *shape[1:]), dtype=np.float32), "ones")
        return self.em.op("ConstantOfShape", [self.sample_shape(tensor)], "ones", value=ONE)

    # ------------------------------------------------------------------ arithmetic

    @functools.cached_property
    def support(self) -> RelevanceSupport:
        """Where relevance provably vanishes (:mod:`.support`): lets stabilisers skip the sign test."""
        return RelevanceSupport(self.graph, self.rules, self.nonnegative)

    def stabilize_forward(self, tensor: str, eps: float) -> str:
        """``stab(t)`` of the forward tensor ``t`` as a relevance quotient's denominator.

        Where ``t >= 0`` always, that is ``t + eps``. Where the relevance divided by it vanishes
        wherever ``t <= 0``, ``max(t, 0) + eps`` gives the same quotient (:mod:`.support`); the
        forward's own ReLU of ``t`` is that maximum when there is one. Otherwise Zennit's
        signed stabiliser (:meth:`stabilize`)."""
        if tensor in self.nonnegative:
            return self.em.op("Add", [self.fwd(tensor), self.em.const(np.float32(eps))], "stab")
        if self.support.vanishes_at_nonpositive(tensor):
            relu = self.support.relu_consumer(tensor)
            positive = self.fwd(relu) if relu is not None else self.em.op("Relu", [self.fwd(tensor)], "zpos")
            return self.em.op("Add", [positive, self.em.const(np.float32(eps))], "stab")
        return self.stabilize(self.fwd(tensor), eps)

    def stabilize(self, z: str, eps: float) -> str:
        """Zennit's stabiliser: ``z + eps`` where ``z >= 0``, ``z - eps`` where ``z < 0``.

        Written ``z + 2 eps step(z) - eps`` with ``step(z) = HardSigmoid(z; alpha=3e38, beta=1)``,
        which is 1 for ``z >= 0`` and 0 for ``z <= -3.4e-39``: on ONNX Runtime's CPU provider
        these four elementwise ops take 7.4 ms where the comparison + ``Where`` form takes 19.5 ms
        and a comparison cast to float 11.7 ms (one 8x256x56x56 tensor, with the division). Only
        negative denormal ``z`` (|z| < 3.4e-39) get a step between 0 and 1."""
        em = self.em
        step = em.op("HardSigmoid", [z], "step", alpha=STEP_SLOPE, beta=1.0)
        shifted = em.op("Add", [z, em.op("Mul", [step, em.const(np.float32(2 * eps))], "shift")], "zshift")
        return em.op("Sub", [shifted, em.const(np.float32(eps))], "stab")

    def reduce_mean(self, x: str, axes: list[int], hint: str = "mean") -> str:
        """``ReduceMean`` over ``axes`` (kept), in the form of the model's opset (axes an input from 18)."""
        if self.graph.opset >= 18:
            return self.em.op("ReduceMean", [x, self.em.const(np.array(axes, np.int64))], hint, keepdims=1)
        return self.em.op("ReduceMean", [x], hint, axes=list(axes), keepdims=1)

    def reduce_sum(self, x: str, axes: list[int], hint: str = "sum") -> str:
        """``ReduceSum`` over ``axes`` (kept); axes are an input since opset 13."""
        return self.em.op("ReduceSum", [x, self.em.const(np.array(axes, np.int64))], hint, keepdims=1)

    def node_stabilizer(self, node) -> float:
        """The stabiliser of ``node``'s rule (an override may set it), else the conversion's."""
        rule = self.rules.get(node.name)
        return float(getattr(rule, "stabilizer", self.stabilizer)) if rule is not None else self.stabilizer

    def quotient(self, relevance, node, eps: float | None = None) -> str:
        """``R / stab(y)`` for the output ``y`` of ``node``, with the node's stabiliser (or ``eps``).

        For a :class:`Factored` relevance ``a * c``: ``c * (a / stab(y))``, and where ``a`` is
        ``y`` itself and the sign test is needed, ``a / stab(a) = |a| / (|a| + eps)``."""
        eps = self.node_stabilizer(node) if eps is None else eps
        y = node.outputs[0]
        if isinstance(relevance, Factored) and relevance.factor == y and self._needs_sign_test(y):
            magnitude = self.em.op("Abs", [self.fwd(y)], "absz")
            total = self.em.op("Add", [magnitude, self.em.const(np.float32(eps))], "stab")
            return self.em.op("Mul", [relevance.chain, self.em.op("Div", [magnitude, total], "gain")], "s")
        return self.divide(relevance, self.stabilize_forward(y, eps))

    def _needs_sign_test(self, tensor: str) -> bool:
        """Whether :meth:`stabilize_forward` of ``tensor`` is Zennit's signed stabiliser."""
        return tensor not in self.nonnegative and not self.support.vanishes_at_nonpositive(tensor)

    def divide(self, relevance, denominator: str) -> str:
        """``R / denominator`` for a denominator computed from the forward alone: for a
        :class:`Factored` relevance ``c * (a / denominator)``."""
        if isinstance(relevance, Factored):
            gain = self.em.op("Div", [self.fwd(relevance.factor), denominator], "gain")
            return self.em.op("Mul", [relevance.chain, gain], "s")
        return self.em.op("Div", [relevance, denominator], "s")

    def materialize(self, relevance):
        """The relevance as one tensor (the product of a :class:`Factored` one, made once)."""
        if not isinstance(relevance, Factored):
            return relevance
        if relevance not in self._products:
            self._products[relevance] = self.em.op("Mul", [self.fwd(relevance.factor), relevance.chain], "r")
        return self._products[relevance]

    def merge(self, parts: list):
        """The sum of the relevance arriving at one tensor: :class:`Factored` parts with one
        factor add their chains (``a * c1 + a * c2 = a * (c1 + c2)``), others are summed whole."""
        if len(parts) == 1:
            return parts[0]
        if all(isinstance(p, Factored) for p in parts) and len({p.factor for p in parts}) == 1:
            return Factored(parts[0].factor, self.add_all([p.chain for p in parts], "chain"))
        return self.add_all([self.materialize(p) for p in parts], "r")

    def add_all(self, terms: list[str], hint: str = "sum") -> str:
        if len(terms) == 1:
            return terms[0]
        if len(terms) == 2:
            return self.em.op("Add", terms, hint)
        return self.em.op("Sum", terms, hint)

    def mul(self, a: str, b: str, hint: str = "mul") -> str:
        return self.em.op("Mul", [a, b], hint)

    def scale(self, a: str, factor: float, hint: str = "scaled") -> str:
        if factor == 1.0:
            return a
        return self.em.op("Mul", [a, self.em.const(np.float32(factor))], hint)
