"""The support analysis (sglrp_onnx/emit/support.py) on the boundaries of its claims.

Its claims are checked numerically by tests/test_reference_rules.py (model ``support`` against
the float64 reference); here each claim is checked by itself, so that a change that makes the
analysis more timid (slower, still correct) shows up too."""

from __future__ import annotations

import sys
from pathlib import Path

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
