"""The backward-builder registry: one builder per op type, as in ONNX Runtime's gradient builders.

A builder has the signature ``builder(ctx, node, relevance_out) -> relevance_in``:
``relevance_out`` holds one entry per node output (a tensor name, or None where no relevance
arrives), and the result one entry per node input (None for inputs that get no relevance).
Adding an op means adding one builder (``@register("OpType")``) and its test.

A builder registered with ``factored=True`` also takes relevance in the
:class:`~sglrp_onnx.emit.builder.Factored` form; the others get plain tensors.
"""

from __future__ import annotations

from typing import Callable

BACKWARD: dict[str, Callable] = {}
#: op types whose builder takes ``Factored`` relevance
TAKES_FACTORED: set[str] = set()


def register(*op_types: str, factored: bool = False):
    def decorate(builder: Callable) -> Callable:
        for op_type in op_types:
            BACKWARD[op_type] = builder
            if factored:
                TAKES_FACTORED.add(op_type)
        return builder

    return decorate
