"""SPEC section 7 (transformers, modern blocks): the float64 reference ``tests/reference/modern64``
checked on its own, then the engine checked against it.

Part A needs no engine: every test model's reference forward against ONNX Runtime, each rule
against a second, more literal computation (an explicit matrix, a numerical Jacobian), and
conservation where it holds.

Part B converts each tiny model (``tests/reference/modern_models.py``) with ``sglrp_onnx.convert``,
runs it on ONNX Runtime (CPU, float32) for every class of a few inputs and compares with the
reference: elementwise, max|ours - ref| <= 1e-4 * max|ref| per image, for the conditioned models
(each test first asserts the conditioning that the reference measured), and relative L2 <= 1e-3
for the ViT block and the literal PoolFormer mixer (random weights; SPEC section 6).

What is implemented for the attention options (SPEC section 7; write-up of the two papers):
- CP-LRP (Ali et al. 2022, "XAI for Transformers: Better Explanations through Conservative
  Propagation", ICML): the attention matrix A = Softmax(q k^T * scale) is a constant, so
  out = A V is linear in V and gets LRP-0: R_V = V * A^T (R / stab(A V)); nothing reaches Q, K or
  the Softmax. The default.
- AttnLRP (Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
  Transformers", ICML), option ``attention="attnlrp"``: both matmuls q k^T and A V get the uniform
  rule of their Eq. 7 (each factor of a product of two inputs gets half of the LRP-0 share:
  R_A = 1/2 A * ((R / stab(C)) B^T), R_B = 1/2 B * (A^T (R / stab(C)))), the constant scale passes
  relevance unchanged, and the Softmax gets their Proposition 3.1 (first-order Taylor decomposition
  at the input with the bias absorbed): R_in = x * (R - y * sum(R)), x the Softmax input, y its
  output, the sum over the Softmax axis. Relevance then reaches x through Wq and Wk as well as Wv.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ort.set_default_logger_severity(3)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import modern64 as m64  # noqa: E402
from reference import modern_models as mm  # noqa: E402

RTOL = 1e-4  # elementwise, relative to max|ref| per image
L2_TOL = 1e-3  # relative L2 (SPEC section 6)
KAPPA_MAX = 300.0  # largest amplification of rounding by a denominator for elementwise checks
METHODS = ["lrp", "sglrp"]

CASES = {
    "layernorm": lambda: mm.layer_norm_case(0),
    "layernorm-decomposed": lambda: mm.layer_norm_case(0, decomposed=True),
    "layernorm-decomposed-opset18": lambda: mm.layer_norm_case(0, decomposed=True, opset=18),
    "layernorm-opset18": lambda: mm.layer_norm_case(1, opset=18),
    "rmsnorm-div": lambda: mm.rms_norm_case(0, "div"),
    "rmsnorm-rsqrt": lambda: mm.rms_norm_case(1, "rsqrt"),
    "instancenorm": lambda: mm.instance_norm_case(0),
    "groupnorm-decomposed": lambda: mm.group_norm_case(0, "decomposed"),
    "groupnorm1-decomposed": lambda: mm.group_norm_case(1, "decomposed", groups=1),
    "layernorm2d": lambda: mm.channel_layer_norm_case(0),
    "groupnorm-op21": lambda: mm.group_norm_case(0, "op21"),
    "groupnorm-op21-annotated": lambda: mm.group_norm_case(0, "op21", annotate=True),
    "attention": lambda: mm.attention_case(0),
    "attention-shape-scale": lambda: mm.attention_case(1, scale_from_shape=True),
    "attention-einsum": lambda: mm.attention_case(3, einsum=True),
    "attention-split-scale": lambda: mm.attention_case(4, split_scale=True),
    "gated-mul": lambda: mm.gated_case(0, "mul"),
    "gated-matmul": lambda: mm.gated_case(0, "matmul"),
    "softmax-gate": lambda: mm.softmax_gate_case(0),
    "poolformer": lambda: mm.poolformer_case(0),
    "poolformer-literal": lambda: mm.poolformer_case(0, literal=True),
    "position": lambda: mm.position_case(0),
    "gelu": lambda: mm.gelu_case(0),
    "classtoken": lambda: mm.class_token_case(0),
    "vit": lambda: mm.vit_case(0),
    "vit-shape-scale": lambda: mm.vit_case(1, attention_from_shape=True),
    "vit-slice": lambda: mm.vit_case(2, take="slice"),
    "layernorm-biasfree": lambda: mm.layer_norm_case(2, bias_free=True),
    "attention-biasfree": lambda: mm.attention_case(2, bias_free=True),
}
CONDITIONED = [k for k in CASES if not k.startswith(("vit", "poolformer-literal"))
               and "biasfree" not in k]


@functools.lru_cache(maxsize=None)
def case(key) -> mm.Case:
    return CASES[key]()


def batch(key, copies=2):
    """``copies`` inputs, each repeated once per class, and the targets 0..K-1."""
    c = case(key)
    x = np.repeat(c.inputs(copies), mm.NUM_CLASSES, axis=0)
    return x, np.tile(np.arange(mm.NUM_CLASSES), copies)


def reference(key, x, targets, method, contrast=None, **cfg) -> m64.Result:
    return m64.explain(case(key).build, x.astype(np.float64), targets, method, m64.Config(**cfg),
                       contrast=contrast)


# =============================================================================================
# Part A: the reference on its own


@pytest.mark.parametrize("key", sorted(CASES))
def test_reference_forward_matches_onnxruntime(key):
    c = case(key)
    x = c.inputs(3)
    sess = ort.InferenceSession(c.model.SerializeToString(), providers=["CPUExecutionProvider"])
    z = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = reference(key, x, [0, 1, 2], "lrp", low=0.0, high=1.0).logits
    assert np.abs(z - ref).max() <= 1e-5 * np.abs(ref).max()


def lrp0_affine(M, c, x, R, eps):
    """LRP-0 of y = M x + c, written term by term: R_j = sum_i x_j M_ij R_i / stab(y_i)."""
    y = M @ x + c
    s = R / m64.stab(y, eps)
    return np.array([sum(x[j] * M[i, j] * s[i] for i in range(len(y))) for j in range(len(x))])


def _run_rule(op, value, R, **cfg):
    """Apply one reference op to a single tensor and return the relevance of its input."""
    t = m64.Tape(m64.Config(**cfg))
    x = t.node(value)
    out = op(t, x)
    return t.backward(out, R)[x.id]


def test_layernorm_rule_is_lrp0_of_frozen_sigma_affine_map():
    """R_x = x * (u - mean(u)) equals LRP-0 of the explicit matrix diag(gamma/sigma)(I - 11^T/n)
    plus beta; checked on a hand-sized 2-element case and a random 5-element one."""
    rng = np.random.default_rng(0)
    for n in (2, 5):
        x = rng.normal(size=n)
        gamma, beta, R = rng.uniform(0.5, 2, n), rng.normal(size=n), rng.normal(size=n)
        got = _run_rule(lambda t, v: m64.layer_norm(t, v, gamma, beta, 1e-3), x[None], R[None])
        sigma = math.sqrt(x.var() + 1e-3)
        M = np.diag(gamma / sigma) @ (np.eye(n) - np.ones((n, n)) / n)
        want = lrp0_affine(M, beta, x, R, 1e-6)
        assert np.allclose(got[0], want, rtol=1e-10, atol=1e-12)
    # 2 elements by hand: x = (1, 3): mean 2, sigma 1 (eps 0), x_hat = (-1, 1); gamma 1, beta 2
    # -> y = (1, 3); R = (1, 1): s = (1, 1/3), u = s, mean(u) = 2/3, R_x = (1/3, -1)
    got = _run_rule(lambda t, v: m64.layer_norm(t, v, [1.0, 1.0], [2.0, 2.0], 0.0),
                    np.array([[1.0, 3.0]]), np.array([[1.0, 1.0]]), stabilizer=0.0)
    assert np.allclose(got, [[1 / 3, -1.0]])


def test_groupnorm_rule_is_lrp0_of_block_affine_map():
    """GroupNorm over [1, C, 2, 2] with G groups: block-diagonal explicit matrix per group."""
    rng = np.random.default_rng(1)
    Cc, G, n = 4, 2, 4
    x = rng.normal(size=(1, Cc, 2, 2))
    gamma, beta = rng.uniform(0.5, 2, Cc), rng.normal(size=Cc)
    R = rng.normal(size=x.shape)
    got = _run_rule(lambda t, v: m64.group_norm(t, v, G, gamma, beta, 1e-3), x, R)
    xf, Rf = x.reshape(-1), R.reshape(-1)
    M, c = np.zeros((xf.size, xf.size)), np.repeat(beta, n)
    per = Cc // G * n
    for gi in range(G):
        blk = slice(gi * per, (gi + 1) * per)
        sigma = math.sqrt(xf[blk].var() + 1e-3)
        g = np.repeat(gamma, n)[blk]
        M[blk, blk] = np.diag(g / sigma) @ (np.eye(per) - np.ones((per, per)) / per)
    assert np.allclose(got.reshape(-1), lrp0_affine(M, c, xf, Rf, 1e-6), rtol=1e-10, atol=1e-12)


def test_cp_attention_rule_is_lrp0_of_v_to_av():
    rng = np.random.default_rng(2)
    A = m64.softmax64(rng.normal(size=(3, 3)))
    V = rng.normal(size=(3, 2))
    R = rng.normal(size=(3, 2))
    got = _run_rule(lambda t, v: m64.attention_values(t, A, v), V, R)
    # out[:, d] = A @ V[:, d]: one linear map per column d
    want = np.stack([lrp0_affine(A, 0.0, V[:, d], R[:, d], 1e-6) for d in range(2)], axis=1)
    assert np.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_attnlrp_softmax_rule_is_input_times_jacobian_transpose_over_output():
    """x * (R - y * sum(R)) = x * J^T (R / y), J the softmax Jacobian (by central differences)."""
    rng = np.random.default_rng(3)
    x, R = rng.normal(size=4), rng.normal(size=4)
    y = m64.softmax64(x)
    h = 1e-6
    J = np.stack([(m64.softmax64(x + h * e) - m64.softmax64(x - h * e)) / (2 * h)
                  for e in np.eye(4)], axis=1)  # J[i, j] = dy_i / dx_j
    got = _run_rule(m64.softmax_attnlrp, x[None], R[None])[0]
    assert np.allclose(got, x * (J.T @ (R / y)), rtol=1e-6, atol=1e-9)


def test_uniform_rule_halves_and_conserves():
    """Uniform rule on C = A B: each factor gets half of gradient-times-input of sum(s * C),
    s = R / C (by central differences), and R_A + R_B sums to R."""
    rng = np.random.default_rng(4)
    A, B, R = rng.uniform(0.5, 1, (2, 3)), rng.uniform(0.5, 1, (3, 2)), rng.normal(size=(2, 2))
    t = m64.Tape(m64.Config(stabilizer=0.0))
    a, b = t.node(A), t.node(B)
    out = m64.matmul_uniform(t, a, b)
    rel = t.backward(out, R)
    s = R / (A @ B)
    h = 1e-6
    gA = np.zeros_like(A)
    for idx in np.ndindex(A.shape):
        e = np.zeros_like(A)
        e[idx] = h
        gA[idx] = (np.sum(s * ((A + e) @ B)) - np.sum(s * ((A - e) @ B))) / (2 * h)
    assert np.allclose(rel[a.id], 0.5 * A * gA, rtol=1e-6)
    assert np.isclose(rel[a.id].sum() + rel[b.id].sum(), R.sum(), rtol=1e-10)
    # elementwise product: half each
    t = m64.Tape(m64.Config(stabilizer=0.0))
    a, b = t.node(A), t.node(2 * A)
    rel = t.backward(m64.mul_uniform(t, a, b), R[:, :1] * np.ones_like(A))
    assert np.allclose(rel[a.id], 0.5 * R[:, :1]) and np.allclose(rel[b.id], 0.5 * R[:, :1])


def test_signed_sum_and_constant_add_rules_by_hand():
    # a - b with a = 3, b = 1, R = 1: R_a = 3/2, R_b = -1/2 (sums to R)
    t = m64.Tape(m64.Config(stabilizer=0.0))
    a, b = t.node([[3.0]]), t.node([[1.0]])
    rel = t.backward(m64.sub(t, a, b), [[1.0]])
    assert np.allclose([rel[a.id], rel[b.id]], [[[1.5]], [[-0.5]]])
    # x + c with x = 1, c = 3, R = 1: pass -> 1, epsilon override -> 1/4 (+ epsilon)
    x = np.array([[1.0]])
    assert _run_rule(lambda t, v: m64.add_const(t, v, 3.0), x, [[1.0]]) == 1.0
    got = _run_rule(lambda t, v: m64.add_const(t, v, 3.0), x, [[1.0]], add_rule="epsilon",
                    epsilon=1.0)
    assert np.isclose(got, 1.0 / 5.0)


@pytest.mark.parametrize("key", ["layernorm-biasfree", "attention-biasfree"])
def test_reference_conservation_bias_free(key):
    """Bias-free (beta = 0) LRP-0 chains: sum of relevance = initial relevance summed (SPEC 6);
    for SGLRP that is 0."""
    x, t = batch(key)
    for method in METHODS:
        ref = reference(key, x, t, method, epsilon=1e-9, stabilizer=1e-9)
        got = ref.relevance.reshape(len(x), -1).sum(1)
        want = ref.initial.sum(1)
        mass = np.abs(ref.relevance).reshape(len(x), -1).sum(1)
        assert np.all(np.abs(got - want) <= 1e-6 * mass), (method, got, want)


# =============================================================================================
# Part B: the engine against the reference


class Engine:
    """A converted model on ONNX Runtime CPU, outputs by contract name (from its metadata)."""

    def __init__(self, model: onnx.ModelProto):
        self.meta = {p.key: p.value for p in model.metadata_props}
        self.image = self.meta.get("sglrp_onnx.image_input", model.graph.input[0].name)
        self.target = self.meta.get("sglrp_onnx.target_input", "target")
        self.relevance = self.meta.get("sglrp_onnx.relevance_output", "relevance")
        self.logits = self.meta.get("sglrp_onnx.logits_output", "logits")
        self.sess = ort.InferenceSession(model.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, x, targets):
        out = self.sess.run(None, {self.image: np.asarray(x, np.float32),
                                   self.target: np.asarray(targets, np.int64)})
        return dict(zip(self.names, out))


class _Frozen(tuple):
    """A dict's items as a hashable tuple (to cache conversions by their keyword arguments)."""


def _freeze(kw):
    return _Frozen(sorted((k, _freeze(v) if isinstance(v, dict) else v) for k, v in kw.items()))


def _thaw(frozen):
    return {k: _thaw(v) if isinstance(v, _Frozen) else v for k, v in frozen}


@functools.lru_cache(maxsize=None)
def _engine(key, frozen):
    import sglrp_onnx

    return Engine(sglrp_onnx.convert(case(key).model, **_thaw(frozen)))


def engine(key, **kw) -> Engine:
    return _engine(key, _freeze(kw))


def check_elementwise(ours, ref: m64.Result, label):
    assert np.isfinite(ours).all(), f"{label}: NaN/Inf in the engine's relevance"
    assert ref.max_kappa <= KAPPA_MAX, (
        f"{label}: test input not well conditioned (kappa {ref.max_kappa:.3g}); fix the model")
    for i, R in enumerate(ref.relevance):
        err = np.abs(ours[i] - R)
        scale = np.abs(R).max()
        at = np.unravel_index(np.argmax(err), err.shape)
        assert err.max() <= RTOL * scale, (
            f"{label}[row {i}]: max|ours-ref| = {err.max() / scale:.3g} * max|ref| at {at} "
            f"(ours {ours[i][at]:.6g}, ref {R[at]:.6g}); rel L2 "
            f"{np.linalg.norm(ours[i] - R) / np.linalg.norm(R):.3g}")


def check_l2(ours, ref: m64.Result, label, tol=L2_TOL):
    assert np.isfinite(ours).all(), f"{label}: NaN/Inf in the engine's relevance"
    for i, R in enumerate(ref.relevance):
        d, n = np.linalg.norm(ours[i] - R), np.linalg.norm(R)
        assert n > 0 and d <= tol * n, f"{label}[row {i}]: relative L2 {d / max(n, 1e-300):.3g}"


def compare(key, method, check=check_elementwise, copies=2, **kw):
    """Convert ``key`` with ``method`` and ``kw`` (engine names), compare with the reference."""
    conv = dict(method=method, composite=kw.pop("composite", "epsilon"), **kw)
    eng = engine(key, **conv)
    x, t = batch(key, copies)
    out = eng.run(x, t)
    cfg = {k: v for k, v in conv.items() if k in ("composite", "epsilon", "stabilizer", "low",
                                                    "high", "attention")}
    if conv.get("rules"):
        cfg["add_rule"] = conv["rules"]["Add"]
    ref = reference(key, x, t, method, conv.get("contrast"), **cfg)
    label = f"{key} {conv}"
    assert np.abs(out[eng.logits] - ref.logits).max() <= 1e-5 * np.abs(ref.logits).max()
    check(out[eng.relevance], ref, label)
    return out[eng.relevance], ref


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", CONDITIONED)
def test_engine_matches_reference(key, method):
    """Every conditioned block under the `epsilon` composite at its defaults (CP-LRP)."""
    compare(key, method)


PARAMS = [dict(epsilon=0.25), dict(stabilizer=0.05)]


@pytest.mark.parametrize("params", PARAMS, ids=["epsilon0.25", "stabilizer0.05"])
@pytest.mark.parametrize("key", ["layernorm", "groupnorm-decomposed", "attention", "gated-mul",
                                 "poolformer", "gelu", "classtoken"])
def test_rules_use_stabilizer_not_epsilon(key, params):
    """Section 7's rules use `stabilizer`; the epsilon rule (the dense layers) uses `epsilon`."""
    compare(key, "lrp", **params)


def test_layernorm_decomposed_equals_layernorm_op():
    """Older exporters' ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add pattern must give the
    LayerNormalization op's relevance (same weights)."""
    x, t = batch("layernorm")
    eng_a = engine("layernorm", method="sglrp", composite="epsilon")
    eng_b = engine("layernorm-decomposed", method="sglrp", composite="epsilon")
    a, b = eng_a.run(x, t)[eng_a.relevance], eng_b.run(x, t)[eng_b.relevance]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", ["attention", "attention-shape-scale", "attention-einsum",
                                 "attention-split-scale"])
def test_attnlrp_option(key, method):
    compare(key, method, attention="attnlrp")
    ref = reference(key, *batch(key), method, attention="attnlrp")
    cp = reference(key, *batch(key), method)
    assert np.linalg.norm(ref.relevance - cp.relevance) > 1e-2 * np.linalg.norm(cp.relevance), \
        "AttnLRP and CP-LRP must differ on this model (else the test shows nothing)"
    meta = engine(key, method=method, composite="epsilon", attention="attnlrp").meta
    assert any("attnlrp" in v for v in meta.values()), f"attention option not in metadata {meta}"


@pytest.mark.parametrize("params", [dict(), dict(epsilon=0.25)], ids=["eps-default", "eps0.25"])
@pytest.mark.parametrize("method", METHODS)
def test_position_embedding_add_override(method, params):
    """`pass` by default; with rules={"Add": "epsilon"} the constant absorbs its share."""
    compare("position", method, rules={"Add": "epsilon"}, **params)
    a = reference("position", *batch("position"), method, add_rule="pass", **params).relevance
    b = reference("position", *batch("position"), method, add_rule="epsilon", **params).relevance
    assert np.linalg.norm(a - b) > 1e-2 * np.linalg.norm(a), "override must matter here"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", ["poolformer-literal"])
def test_poolformer_literal_l2(key, method):
    """pool(h) - h itself: near-zero differences, so relative L2 (SPEC section 6)."""
    compare(key, method, check=check_l2)


CONTRASTS = [("clrp", "scaled"), ("clrp", "signed"), ("sglrp", "scaled")]


@pytest.mark.parametrize("method,contrast", CONTRASTS)
@pytest.mark.parametrize("key", ["attention", "layernorm", "gated-matmul", "classtoken"])
def test_contrasts(key, method, contrast):
    """CLRP and the scaled contrast (target and dual propagated apart) through attention's
    batch-moving reshapes and transposes."""
    compare(key, method, contrast=contrast)


@pytest.mark.parametrize("method,contrast", CONTRASTS)
def test_contrasts_vit(method, contrast):
    compare("vit-slice", method, check=check_l2, contrast=contrast, composite="epsilon",
            rules={"Add": "epsilon"})


VIT_SETUPS = {
    "epsilon": dict(composite="epsilon"),
    "epsilon+Add:epsilon": dict(composite="epsilon", rules={"Add": "epsilon"}),
    "epsilon+Add:epsilon+attnlrp": dict(composite="epsilon", rules={"Add": "epsilon"},
                                        attention="attnlrp"),
    "dtd": dict(composite="dtd", low=0.0, high=1.0),
    "dtd-per-channel": dict(composite="dtd", low=(-2.1, -2.0, -1.8), high=(2.2, 2.4, 2.6)),
}


@pytest.mark.parametrize("setup", sorted(VIT_SETUPS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", ["vit", "vit-shape-scale", "vit-slice"])
def test_vit_block(key, method, setup):
    """A whole tiny ViT block (random weights): relative L2 <= 1e-3, signed contrast."""
    kw = dict(VIT_SETUPS[setup])
    if kw.get("rules"):
        kw["rules"] = dict(kw["rules"])
    ours, ref = compare(key, method, check=check_l2, **kw)
    if method == "sglrp" and kw.get("rules"):
        # SGLRP's initial relevance sums to 0 per image; the relevance that the biases and
        # constants absorb keeps the map's sum from being exactly 0, but the reference and the
        # engine must agree on it
        s_ours = ours.reshape(len(ref.relevance), -1).sum(1)
        s_ref = ref.relevance.reshape(len(ref.relevance), -1).sum(1)
        assert np.allclose(s_ours, s_ref, atol=1e-3 * np.abs(ref.relevance).sum(axis=(1, 2, 3))
                           .max())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", ["layernorm-biasfree", "attention-biasfree"])
def test_engine_conservation_bias_free(key, method):
    """Bias-free LRP-0 chains conserve: sum(relevance) = z_t for lrp, 0 for sglrp."""
    eng = engine(key, method=method, composite="epsilon")
    x, t = batch(key)
    out = eng.run(x, t)
    z = out[eng.logits]
    want = z[np.arange(len(t)), t] if method == "lrp" else np.zeros(len(t))
    got = out[eng.relevance].reshape(len(t), -1).sum(1)
    scale = np.abs(out[eng.relevance]).reshape(len(t), -1).sum(1)
    # float32 sums of terms that cancel (SGLRP): 1e-3 of the relevance mass
    assert np.all(np.abs(got - want) <= 1e-3 * np.maximum(scale, np.abs(want))), (got, want)


def test_vit_predicted_and_out_of_range_targets():
    """Target -1 explains the predicted class; a target >= K gives class -1 and zero relevance
    (SPEC section 2), through the whole ViT block."""
    eng = engine("vit-slice", method="sglrp", composite="epsilon")
    x = case("vit-slice").inputs(3, seed=7)
    targets = [-1, 2, mm.NUM_CLASSES + 3]
    out = eng.run(x, targets)
    ref = reference("vit-slice", x, targets, "sglrp")
    explained = out[eng.meta.get("sglrp_onnx.explained_class_output", "explained_class")]
    assert np.array_equal(explained, ref.explained_class)
    assert ref.explained_class[0] == np.argmax(ref.logits[0]) and ref.explained_class[2] == -1
    assert np.all(out[eng.relevance][2] == 0)
    check_l2(out[eng.relevance][:2], dataclasses.replace(ref, relevance=ref.relevance[:2]),
             "vit-slice targets")
