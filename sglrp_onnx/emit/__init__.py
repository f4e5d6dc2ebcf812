"""Emission of the relevance graph: initial relevance (:mod:`.methods`), the backward walk
(:mod:`.relevance`) and one backward builder per op type (:mod:`.registry`, :mod:`.linear`,
:mod:`.pooling`, :mod:`.structural`)."""
