"""Relevance kept as ``factor * chain`` between builders (sglrp_onnx/emit/builder.py, ``Factored``).

The form changes where the divisions sit, not the relevance: both forms agree to float32
rounding on models with residual sums, ReLU6, Tanh, gates and strided layers, under each
composite and method (the scaled contrast's two halves too); and the rule that divides a
factored relevance by its own factor's stabiliser uses ``|y| / (|y| + eps)``. Each rule's
numbers against the float64 reference are in tests/test_reference_rules.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reference import onnx_builder  # noqa: E402
from test_reference_rules import get_model, m_support  # noqa: E402
from test_relevance_support import _gated_model  # noqa: E402

import sglrp_onnx  # noqa: E402
from sglrp_onnx.emit import builder, relevance  # noqa: E402

MODELS = {
    "support": (lambda: onnx_builder.build_model(m_support(0)), (4, 3, 10, 10)),
    "gated": (_gated_model, (4, 3, 8, 8)),
    "layers": (lambda: get_model("layers"), None),
    "pools": (lambda: get_model("pools"), None),
    "conv2d": (lambda: get_model("conv2d"), None),
}


def _relevance(model, x, **options):
    converted = sglrp_onnx.convert(model, low=-1.0, high=1.0, **options)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x, "target": np.full(x.shape[0], -1, np.int64)}
    return session.run(["relevance"], feeds)[0], converted


def _input(model, shape):
    if shape is None:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        shape = (3, *[d.dim_value for d in dims[1:]])
    return np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("composite", ["epsilon", "dtd", "epsilon-gamma-box"])
@pytest.mark.parametrize("method, contrast", [("lrp", None), ("sglrp", "signed"), ("sglrp", "scaled")])
def test_factored_equals_materialised(monkeypatch, name, composite, method, contrast):
    build, shape = MODELS[name]
    model = build()
    x = _input(model, shape)
    options = dict(composite=composite, method=method, contrast=contrast)
    factored, _ = _relevance(model, x, **options)
    monkeypatch.setattr(relevance, "FACTORED", False)
    plain, _ = _relevance(model, x, **options)
    assert np.abs(plain).max() > 0
    # the contrasts subtract two propagations of about LRP's size: rounding is relative to that
    scale = max(np.abs(plain).max(), np.abs(_relevance(model, x, composite=composite, method="lrp")[0]).max())
    np.testing.assert_allclose(factored, plain, rtol=0, atol=2e-5 * scale)


def test_own_factor_divides_by_its_magnitude(monkeypatch):
    """In m_support, c2 and c4 feed residual sums; their outputs have both signs and their
    relevance (their share of the sum, ``c * s``) needs Zennit's signed stabiliser. Kept factored,
    ``c * s / stab(c) = s * |c| / (|c| + eps)``: one Abs each, and no step function there."""
    model = onnx_builder.build_model(m_support(0))

    def ops(factored: bool) -> list[str]:
        monkeypatch.setattr(relevance, "FACTORED", factored)
        converted = sglrp_onnx.convert(model, composite="epsilon", low=-1.0, high=1.0)
        return [n.op_type for n in converted.graph.node if n.name.startswith(builder.PREFIX)]

    factored, plain = ops(True), ops(False)
    assert factored.count("Abs") == 2 and plain.count("Abs") == 0
    assert factored.count("HardSigmoid") == plain.count("HardSigmoid") - 2
    assert factored.count("Mul") < plain.count("Mul")
