"""The support analysis (sglrp_onnx/emit/support.py) on the boundaries of its claims.

Its claims are checked numerically by tests/test_reference_rules.py (model ``support`` against
the float64 reference); here each claim is checked by itself, so that a change that makes the
analysis more timid (slower, still correct) shows up too."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reference import onnx_builder  # noqa: E402
from test_reference_rules import m_support  # noqa: E402

from sglrp_onnx.composites import assign_rules, default_gamma  # noqa: E402
from sglrp_onnx.convert import canonical_graph  # noqa: E402
from sglrp_onnx.emit.relevance import nonnegative_tensors  # noqa: E402
from sglrp_onnx.emit.support import RelevanceSupport  # noqa: E402


def _support(composite: str, overrides=None) -> tuple[RelevanceSupport, dict]:
    graph = canonical_graph(onnx_builder.build_model(m_support(0)))
    rules = assign_rules(graph, composite, {"stabilizer": 1e-6, "gamma": default_gamma(composite), "epsilon": 1e-6}, overrides)
    outputs = {node.name: node.outputs[0] for node in graph.nodes}
    return RelevanceSupport(graph, rules, nonnegative_tensors(graph)), outputs


@pytest.mark.parametrize("composite", ["epsilon", "dtd"])
def test_claims_at_each_boundary(composite):
    support, out = _support(composite)
    assert support.vanishes_at_nonpositive(out["add_relu"])      # read by a ReLU only
    assert support.relu_consumer(out["add_relu"]) is not None
    assert support.vanishes_at_nonpositive(out["c3"])            # read by ReLU6 (Clip from 0)
    assert support.relu_consumer(out["c3"]) is None              # ... whose output is not max(z, 0)
    assert not support.vanishes_at_nonpositive(out["add_sigmoid"])  # Sigmoid(0) = 0.5
    assert not support.vanishes_at_nonpositive(out["c5"])        # Tanh keeps negative inputs' relevance
    assert support.vanishes_at_zero(out["c5"])                   # ... but Tanh(0) = 0
    assert not support.vanishes_at_nonpositive(out["head"])      # the logits: start relevance


def test_a_rule_without_the_input_factor_breaks_the_claim():
    """``flat`` spreads relevance over c2's inputs whatever their values: the ReLU output of c1
    that c2 reads no longer gets zero relevance where it is zero, so c1's output loses its claim."""
    support, out = _support("epsilon", {"c2": "flat"})
    assert not support.vanishes_at_nonpositive(out["c1"])
    support, out = _support("epsilon")
    assert support.vanishes_at_nonpositive(out["c1"])


def test_emitted_stabilisers_follow_the_claims():
    """Under dtd, only the two denominators whose sign nothing settles get Zennit's full
    stabiliser (a HardSigmoid step): the residual sum read by the Sigmoid and zbox's group on the
    first layer. z+ groups fold eps into a bias, the ReLU-read sum divides by the ReLU's output +
    eps, and no sign test by comparison is left (the two Wheres left resolve the int64 targets)."""
    import sglrp_onnx

    model = sglrp_onnx.convert(onnx_builder.build_model(m_support(0)), composite="dtd", low=-1.0, high=1.0)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("HardSigmoid") == 2
    assert "GreaterOrEqual" not in ops and ops.count("Where") == 2


def _gated_model():
    """x -> conv -> ReLU -> conv (z) -> ReLU (y); m = y * ReLU(conv(y)) (a gate computed from y);
    Sigmoid(m) -> pool -> dense. The gate passes m's relevance to y unchanged, and Sigmoid's is
    not 0 where m is, so y's relevance does not vanish where y is 0, nor z's where z <= 0."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = {"w0": rng.normal(size=(4, 3, 3, 3)), "w1": rng.normal(size=(4, 4, 3, 3)), "w2": rng.normal(size=(4, 4, 1, 1)),
               "b1": rng.normal(size=4) - 1.0, "wd": rng.normal(size=(4, 5))}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["z"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["z"], ["y"]),
        helper.make_node("Conv", ["y", "w2"], ["c2"]), helper.make_node("Relu", ["c2"], ["gate"]),
        helper.make_node("Mul", ["y", "gate"], ["m"]), helper.make_node("Sigmoid", ["m"], ["sig"]),
        helper.make_node("GlobalAveragePool", ["sig"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "wd"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "gated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_gate_passes_relevance_whatever_the_value():
    model = _gated_model()
    graph = canonical_graph(model)
    support = RelevanceSupport(graph, assign_rules(graph, "epsilon", {"stabilizer": 1e-6, "gamma": 0.25, "epsilon": 1e-6}),
                               nonnegative_tensors(graph))
    z = next(n.outputs[0] for n in graph.nodes if n.op_type == "Conv" and n.inputs[0] == "r0")
    assert not support.vanishes_at_nonpositive(z)


@pytest.mark.parametrize("composite", ["epsilon", "dtd", "epsilon-gamma-box"])
@pytest.mark.parametrize("build", ["support", "gated"])
def test_shortcut_equals_the_full_stabiliser(monkeypatch, composite, build):
    """Relevance with the analysis' shortcuts equals relevance with Zennit's full stabiliser on
    every denominator of a forward tensor (the analysis switched off)."""
    import onnxruntime as ort

    import sglrp_onnx

    model = onnx_builder.build_model(m_support(0)) if build == "support" else _gated_model()
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 10, 10) if build == "support" else (4, 3, 8, 8)).astype(np.float32)

    def relevance():
        converted = sglrp_onnx.convert(model, composite=composite, method="lrp", low=-1.0, high=1.0)
        session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(["relevance"], {session.get_inputs()[0].name: x, "target": np.full(4, -1, np.int64)})[0]

    fast = relevance()
    monkeypatch.setattr(RelevanceSupport, "vanishes_at_nonpositive", lambda self, tensor: False)
    full = relevance()
    assert np.abs(full).max() > 0
    np.testing.assert_allclose(fast, full, rtol=0, atol=1e-5 * np.abs(full).max())
