"""sglrp-onnx: class-discriminative relevance maps (SGLRP, LRP, CLRP) as an ONNX graph.

Pipeline: :mod:`sglrp_onnx.io` (load) -> :mod:`sglrp_onnx.canonicalize` -> :mod:`sglrp_onnx.composites`
(assign rules, :mod:`sglrp_onnx.rules`) -> :mod:`sglrp_onnx.emit` (relevance graph) -> check and save.
Entry points: :func:`convert`, :func:`save`, :class:`Explainer` (run a converted model).
"""

from sglrp_onnx.version import __version__
from sglrp_onnx.convert import convert, load_rule_file, save
from sglrp_onnx.errors import SglrpError

__all__ = ["__version__", "convert", "save", "load_rule_file", "SglrpError", "Explainer"]


def __getattr__(name):
    if name == "Explainer":  # imported lazily: the runtime needs onnxruntime, conversion does not
        from sglrp_onnx.runtime import Explainer

        return Explainer
    raise AttributeError(name)
