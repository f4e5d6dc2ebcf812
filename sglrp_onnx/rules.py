"""Propagation rules of Layer-wise Relevance Propagation, defined as data.

A rule for a linear layer ``z = f(a; W, b)`` is a list of :class:`Term` s. Each term names a
modified input ``a_k``, modified parameters ``W_k, b_k``, the denominator group it belongs to and
its coefficient; the emitter (:mod:`sglrp_onnx.emit.linear`) turns it into ONNX operators::

    z_k  = f(a_k; W_k, b_k)
    s_g  = R_out * mask_g / stab(sum_{k in g} sign_k * z_k)
    c_k  = f^T(s_g; W_k)
    R_in = sum_k coef_k * a_k * c_k         (or sum_k coef_k * c_k for "plain" reducers)

The definitions and defaults follow Zennit (Anders et al., "Software for Dataset-wide XAI:
From Local Explanations to Global Insights with Zennit, CoRelAy, and ViRelAy", 2021;
``zennit/rules.py``), so that Zennit serves as an independent oracle in the tests. The
stabiliser is Zennit's: ``z + eps`` where ``z >= 0`` and ``z - eps`` where ``z < 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from onnx import numpy_helper

from sglrp_onnx.errors import RuleError

# ---------------------------------------------------------------------------- parameter modifiers


@dataclass(frozen=True, eq=False)
class Modifier:
    """A parameter modifier in two forms: ``numpy(p, gamma)`` (biases, materialised weights) and
    ``onnx(emitter, tensor, gamma, shape)``, the same function as ONNX operators on a weight
    tensor (:mod:`sglrp_onnx.recipes`), which ONNX Runtime folds once at session load."""

    name: str
    numpy: Callable[[np.ndarray, float], np.ndarray]
    onnx: Callable[..., str]
    uses_gamma: bool = False

    def __call__(self, p: np.ndarray, gamma: float = 0.0) -> np.ndarray:
        return self.numpy(p, gamma)

    def emit(self, emitter, tensor: str, gamma: float, shape) -> str:
        """The modified ``tensor`` (float32, of ``shape``) as ONNX operators; returns its name."""
        return self.onnx(emitter, tensor, gamma, shape)


def _relu(em, t: str) -> str:
    return em.op("Relu", [t], "wpos")


def _min0(em, t: str) -> str:
    return em.op("Min", [t, em.const(np.float32(0))], "wneg")


def _filled(em, shape, value: float) -> str:
    return em.op("ConstantOfShape", [em.const(np.array(shape, np.int64))], "wfill",
                 value=numpy_helper.from_array(np.array([value], np.float32)))


def _plus_gamma(em, t: str, part: str, gamma: float) -> str:
    return em.op("Add", [t, em.op("Mul", [part, em.const(np.float32(gamma))], "wg")], "wgamma")


keep = Modifier("keep", lambda p, g=0.0: p, lambda em, t, g, shape: t)
positive = Modifier("positive", lambda p, g=0.0: np.maximum(p, 0.0), lambda em, t, g, shape: _relu(em, t))
negative = Modifier("negative", lambda p, g=0.0: np.minimum(p, 0.0), lambda em, t, g, shape: _min0(em, t))
zero = Modifier("zero", lambda p, g=0.0: np.zeros_like(p), lambda em, t, g, shape: _filled(em, shape, 0.0))
ones = Modifier("ones", lambda p, g=0.0: np.ones_like(p), lambda em, t, g, shape: _filled(em, shape, 1.0))
square = Modifier("square", lambda p, g=0.0: p * p, lambda em, t, g, shape: em.op("Mul", [t, t], "wsq"))
#: ``p + gamma * p+`` (Montavon et al. 2019, section 10.2.3).
gamma_positive = Modifier("gamma_positive", lambda p, g=0.0: p + g * np.maximum(p, 0.0),
                          lambda em, t, g, shape: _plus_gamma(em, t, _relu(em, t), g), uses_gamma=True)
#: ``p + gamma * p-``, the mirror of :data:`gamma_positive` for negative outputs.
gamma_negative = Modifier("gamma_negative", lambda p, g=0.0: p + g * np.minimum(p, 0.0),
                          lambda em, t, g, shape: _plus_gamma(em, t, _min0(em, t), g), uses_gamma=True)


@dataclass(frozen=True)
class Term:
    """One modified forward pass of a rule.

    ``input`` is one of ``x`` (the layer input), ``pos`` (x+), ``neg`` (x-), ``low``, ``high``
    (zbox bounds) or ``ones``; ``weight`` and ``bias`` are parameter modifiers; ``group`` selects the
    shared denominator, ``sign`` the term's sign inside it, ``coef`` its weight in the reducer.
    """

    input: str
    weight: Any
    bias: Any
    group: int = 0
    sign: float = 1.0
    coef: float = 1.0


@dataclass(frozen=True)
class LinearRule:
    """A rule for a linear layer: terms, group masks (``all``, ``z>0``, ``z<0``), reducer, params."""

    name: str
    terms: tuple[Term, ...]
    stabilizer: float
    masks: tuple[str, ...] = ("all",)
    reducer: str = "input"  # "input": sum coef*a_k*c_k; "plain": sum coef*c_k
    params: dict[str, Any] = field(default_factory=dict)
    gamma: float = 0.0

    @property
    def needs_bounds(self) -> bool:
        return any(t.input in ("low", "high") for t in self.terms)


@dataclass(frozen=True)
class SimpleRule:
    """A rule for a layer without weights: ``pass`` (relevance unchanged) or ``norm``."""

    name: str
    stabilizer: float = 1e-6
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- rule constructors


def epsilon_rule(epsilon: float = 1e-6) -> LinearRule:
    """LRP-epsilon (Bach et al. 2015, "On pixel-wise explanations ...", PLOS ONE): one term (a, W, b)."""
    return LinearRule("epsilon", (Term("x", keep, keep),), epsilon, params={"epsilon": epsilon})


def zero_rule(stabilizer: float = 1e-6) -> LinearRule:
    """LRP-0 (Bach et al. 2015): the epsilon rule with only the stabiliser."""
    return LinearRule("zero", (Term("x", keep, keep),), stabilizer, params={"stabilizer": stabilizer})


def zplus_rule(stabilizer: float = 1e-6) -> LinearRule:
    """LRP-z+ (Montavon et al. 2017, deep Taylor decomposition): (a+, W+, b+) and (a-, W-, 0)."""
    return LinearRule(
        "zplus",
        (Term("pos", positive, positive), Term("neg", negative, zero)),
        stabilizer,
        params={"stabilizer": stabilizer},
    )


def alphabeta_rule(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> LinearRule:
    """LRP-alpha-beta (Bach et al. 2015): alpha * positive part - beta * negative part."""
    if abs((alpha - beta) - 1.0) > 1e-9:
        raise RuleError(f"alphabeta needs alpha - beta = 1 (got alpha={alpha}, beta={beta})")
    terms = (
        Term("pos", positive, positive, group=0, coef=alpha),
        Term("neg", negative, zero, group=0, coef=alpha),
        Term("pos", negative, negative, group=1, coef=-beta),
        Term("neg", positive, zero, group=1, coef=-beta),
    )
    return LinearRule("alphabeta", terms, stabilizer, masks=("all", "all"), params={"alpha": alpha, "beta": beta, "stabilizer": stabilizer})


def gamma_rule(gamma: float = 0.25, stabilizer: float = 1e-6) -> LinearRule:
    """LRP-gamma (Montavon et al. 2019, "Layer-wise relevance propagation: an overview").

    Outputs z > 0 use (a+, W+gW+, b+gb+) and (a-, W+gW-, 0); outputs z < 0 use (a+, W+gW-, b+gb-)
    and (a-, W+gW+, 0); relevance at z == 0 is dropped.
    """
    terms = (
        Term("pos", gamma_positive, gamma_positive, group=0),
        Term("neg", gamma_negative, zero, group=0),
        Term("pos", gamma_negative, gamma_negative, group=1),
        Term("neg", gamma_positive, zero, group=1),
    )
    return LinearRule("gamma", terms, stabilizer, masks=("z>0", "z<0"), params={"gamma": gamma, "stabilizer": stabilizer}, gamma=gamma)


def zbox_rule(low: Any = None, high: Any = None, stabilizer: float = 1e-6) -> LinearRule:
    """LRP-z^B (Montavon et al. 2017): (x, W, b) - (low, W+, b+) - (high, W-, b-) over their signed sum.

    ``low`` / ``high`` are the input bounds; None means "carried from the model input's bounds".
    """
    terms = (
        Term("x", keep, keep),
        Term("low", positive, positive, sign=-1.0, coef=-1.0),
        Term("high", negative, negative, sign=-1.0, coef=-1.0),
    )
    params = {"stabilizer": stabilizer}
    if low is not None:
        params["low"] = low
    if high is not None:
        params["high"] = high
    return LinearRule("zbox", terms, stabilizer, params=params)


def wsquare_rule(stabilizer: float = 1e-6) -> LinearRule:
    """LRP-w^2 (Montavon et al. 2017): input all ones, squared parameters; R_in = f^T(s)."""
    return LinearRule("wsquare", (Term("ones", square, square),), stabilizer, reducer="plain", params={"stabilizer": stabilizer})


def flat_rule(stabilizer: float = 1e-6) -> LinearRule:
    """LRP-flat (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors"): all weights 1, bias 0."""
    return LinearRule("flat", (Term("ones", ones, zero),), stabilizer, reducer="plain", params={"stabilizer": stabilizer})


def norm_rule(stabilizer: float = 1e-6) -> SimpleRule:
    """Zennit's Norm rule: the layer itself as the linear map, R_in = a * f^T(R / stab(f(a)))."""
    return SimpleRule("norm", stabilizer, {"stabilizer": stabilizer})


def pass_rule() -> SimpleRule:
    """Zennit's Pass rule: relevance passes through unchanged (activations, standalone BatchNorm)."""
    return SimpleRule("pass")


#: Rule names accepted by the CLI, the API and rule files, with the parameters each takes.
RULE_PARAMETERS = {
    "epsilon": ("epsilon",),
    "zero": ("stabilizer",),
    "zplus": ("stabilizer",),
    "alphabeta": ("alpha", "beta", "stabilizer"),
    "gamma": ("gamma", "stabilizer"),
    "zbox": ("low", "high", "stabilizer"),
    "wsquare": ("stabilizer",),
    "flat": ("stabilizer",),
    "pass": (),
    "norm": ("stabilizer",),
}


def make_rule(spec: Any, defaults: dict[str, Any], where: str = "") -> LinearRule | SimpleRule:
    """Build a rule from ``"zplus"`` or ``{"rule": "gamma", "gamma": 0.5}``.

    ``defaults`` holds the conversion-wide ``epsilon``, ``stabilizer`` and ``gamma``.
    """
    if isinstance(spec, (LinearRule, SimpleRule)):
        return spec
    if isinstance(spec, str):
        spec = {"rule": spec}
    if not isinstance(spec, dict) or "rule" not in spec:
        raise RuleError(f"{where}rule must be a rule name or an object with a 'rule' key, got {spec!r}")
    name = spec["rule"]
    if name not in RULE_PARAMETERS:
        raise RuleError(f"{where}unknown rule '{name}' (known: {', '.join(RULE_PARAMETERS)})")
    extra = set(spec) - {"rule"} - set(RULE_PARAMETERS[name])
    if extra:
        raise RuleError(f"{where}rule '{name}' takes no parameter {', '.join(sorted(extra))} (takes: {', '.join(RULE_PARAMETERS[name]) or 'none'})")
    values = {**{k: v for k, v in defaults.items() if k in RULE_PARAMETERS[name]}, **{k: v for k, v in spec.items() if k != "rule"}}
    for key, value in values.items():
        if key in ("low", "high"):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise RuleError(f"{where}rule '{name}': parameter {key} must be a finite number, got {value!r}")
        if key in ("epsilon", "stabilizer") and value <= 0:
            raise RuleError(f"{where}rule '{name}': {key} must be > 0, got {value}")
    stab = float(values.get("stabilizer", 1e-6))
    if name == "epsilon":
        return epsilon_rule(float(values.get("epsilon", 1e-6)))
    if name == "zero":
        return zero_rule(stab)
    if name == "zplus":
        return zplus_rule(stab)
    if name == "alphabeta":
        return alphabeta_rule(float(values.get("alpha", 2.0)), float(values.get("beta", 1.0)), stab)
    if name == "gamma":
        return gamma_rule(float(values.get("gamma", 0.25)), stab)
    if name == "zbox":
        if ("low" in spec) != ("high" in spec):
            raise RuleError(f"{where}rule 'zbox' needs both low and high, or neither")
        return zbox_rule(spec.get("low"), spec.get("high"), stab)
    if name == "wsquare":
        return wsquare_rule(stab)
    if name == "flat":
        return flat_rule(stab)
    if name == "norm":
        return norm_rule(stab)
    return pass_rule()
