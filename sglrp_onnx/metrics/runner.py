"""Run every metric for several map sources (methods, baselines) over a set of annotated cases.

A *case* is one image with one annotated object whose class is explained; a *source* is anything
that turns a batch of model inputs and targets into maps ``[N, H, W]`` (an
:class:`sglrp_onnx.runtime.Explainer`, the random baseline, gradient x input). :func:`evaluate`
returns one record per (source, case) with the scalar metrics and the deletion/insertion curves;
:func:`summarise` gives mean, standard deviation and count per source and metric, and the mean
curves with their spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from sglrp_onnx.errors import UsageError
from sglrp_onnx.metrics import localisation, perturbation
from sglrp_onnx.metrics.maps import channel_sum, random_maps

SCALARS = (
    "relevance_mass",
    "rank_accuracy",
    "pointing_game",
    "discrimination",
    "ablation_drop",
    "aopc",
    "deletion_auc",
    "insertion_auc",
)
"""The scalar metrics of one case, in table order."""

HIGHER_IS_BETTER = {name: name != "deletion_auc" for name in SCALARS}

MapSource = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(inputs in the model's layout [N, ...], targets int64 [N]) -> maps [N, H, W]``."""


@dataclass
class Case:
    """One annotated object to explain on one image.

    Attributes:
        image: index of the image in the batch of inputs.
        name: the image's name (for reports).
        target: the class index to explain.
        label: its name.
        mask: bool ``[H, W]``, the object in the model input's geometry.
        others: bool ``[H, W]``, the union of the image's other annotated objects, or ``None``.
    """

    image: int
    name: str
    target: int
    label: str
    mask: np.ndarray
    others: np.ndarray | None = None


@dataclass
class Settings:
    """How perturbation metrics perturb (see :mod:`sglrp_onnx.metrics.perturbation`); batch sizes
    of the perturbed inputs (``batch_size``) and of the maps (``map_batch_size``)."""

    fill: str = "zero"
    patch: int = 9
    steps: int = 100
    batch_size: int = 32
    map_batch_size: int = 4
    sigma: float = 5.0
    seed: int = 0
    low: list[float] | None = None
    high: list[float] | None = None

    def check(self) -> None:
        if self.fill not in perturbation.FILLS:
            raise UsageError(f"unknown fill {self.fill!r}; valid: {', '.join(perturbation.FILLS)}")
        for name in ("patch", "steps", "batch_size", "map_batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sigma <= 0:
            raise UsageError(f"sigma must be positive, got {self.sigma}")


@dataclass
class Record:
    """The metrics of one source on one case."""

    source: str
    case: Case
    scalars: dict[str, float]
    deletion: np.ndarray
    insertion: np.ndarray
    rmap: np.ndarray = field(repr=False, default=None)


def explainer_source(explainer) -> MapSource:
    """Maps from an :class:`sglrp_onnx.runtime.Explainer` (relevance summed over channels)."""

    def maps(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        result = explainer.explain(inputs, targets)
        return channel_sum(result.relevance, explainer.layout)

    return maps


class LazyExplainerSource:
    """Maps from an Explainer that ``factory`` makes on first use; :meth:`release` drops it.

    :func:`evaluate` releases each source once its cases are done, so that a run over many
    methods holds one augmented model's ONNX Runtime session at a time, not all of them.
    """

    def __init__(self, factory: Callable[[], object]):
        self.factory = factory
        self.explainer = None

    def __call__(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if self.explainer is None:
            self.explainer = self.factory()
        return explainer_source(self.explainer)(inputs, targets)

    def release(self) -> None:
        self.explainer = None


def random_source(layout: str = "NCHW", seed: int = 0) -> MapSource:
    """The random baseline: a fresh uniform map per case (seeded, so runs repeat)."""
    rng = np.random.default_rng(seed)

    def maps(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        height, width = _spatial(inputs.shape, layout)
        return np.stack([random_maps((height, width), int(rng.integers(2**31))) for _ in targets])

    return maps


def _spatial(shape, layout: str) -> tuple[int, int]:
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def _channels_first(inputs: np.ndarray, layout: str) -> np.ndarray:
    return inputs if layout == "NCHW" else inputs.transpose(0, 3, 1, 2)


def case_metrics(
    image: np.ndarray,
    rmap: np.ndarray,
    case: Case,
    score: perturbation.Scorer,
    fill: np.ndarray,
    probability: float,
    settings: Settings,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Scalars, deletion curve and insertion curve of one map on one case.

    ``image`` is ``[C, H, W]``; ``probability`` the target's probability on the intact image.
    """
    scalars = {
        "relevance_mass": localisation.relevance_mass(rmap, case.mask),
        "rank_accuracy": localisation.rank_accuracy(rmap, case.mask),
        "pointing_game": float(localisation.pointing_hit(rmap, case.mask)),
        "discrimination": (
            localisation.discrimination(rmap, case.mask, case.others)
            if case.others is not None and case.others.any()
            else float("nan")
        ),
    }
    ablated = perturbation.ablate_maximum(image, rmap, fill, settings.patch)
    frames = [ablated]
    for kind in ("deletion", "insertion"):
        frames.extend(perturbation.perturbed_images(image, rmap, fill, kind=kind, patch=settings.patch, steps=settings.steps))
    frames = np.stack(frames)
    values = np.concatenate(
        [score(frames[i : i + settings.batch_size])[:, case.target] for i in range(0, len(frames), settings.batch_size)]
    ).astype(np.float64)
    n = settings.steps + 1
    deletion, insertion = values[1 : 1 + n], values[1 + n :]
    scalars["ablation_drop"] = float(probability - values[0])
    scalars["aopc"] = perturbation.aopc(deletion)
    scalars["deletion_auc"] = perturbation.area_under(deletion)
    scalars["insertion_auc"] = perturbation.area_under(insertion)
    return scalars, deletion, insertion


def evaluate(
    inputs: np.ndarray,
    layout: str,
    cases: list[Case],
    sources: Mapping[str, MapSource],
    score: perturbation.Scorer,
    settings: Settings | None = None,
    progress: Callable[[int], None] | None = None,
    keep_maps: int | None = None,
) -> list[Record]:
    """Every metric for every source on every case.

    Args:
        inputs: the preprocessed images in the model's layout ``[N, ...]``.
        layout: ``NCHW`` or ``NHWC``.
        cases: the annotated objects to explain.
        sources: name -> map source.
        score: probabilities ``[B, K]`` of a channels-first batch (e.g.
            :class:`sglrp_onnx.metrics.scorer.ForwardScorer`).
        settings: perturbation settings.
        progress: called with 1 after each (source, case).
        keep_maps: keep the maps of the first ``keep_maps`` cases in their records (for heatmap
            grids); ``None``: all of them (memory: one ``[H, W]`` float64 map per source and case).
    """
    settings = settings or Settings()
    settings.check()
    images = _channels_first(inputs, layout)
    fills = {
        i: perturbation.fill_image(
            images[i], settings.fill, low=settings.low, high=settings.high, sigma=settings.sigma, seed=settings.seed + i
        )
        for i in sorted({c.image for c in cases})
    }
    used = sorted(fills)
    originals = np.concatenate([score(images[used[i : i + settings.batch_size]]) for i in range(0, len(used), settings.batch_size)])
    probability = {i: originals[row] for row, i in enumerate(used)}
    records: list[Record] = []
    for name, source in sources.items():
        # maps in small batches: the relevance part needs several times the forward's memory
        for start in range(0, len(cases), settings.map_batch_size):
            chunk = cases[start : start + settings.map_batch_size]
            batch = inputs[[c.image for c in chunk]]
            targets = np.asarray([c.target for c in chunk], dtype=np.int64)
            maps = np.asarray(source(batch, targets), dtype=np.float64)
            for offset, (case, rmap) in enumerate(zip(chunk, maps)):
                scalars, deletion, insertion = case_metrics(
                    images[case.image], rmap, case, score, fills[case.image], float(probability[case.image][case.target]), settings
                )
                kept = keep_maps is None or start + offset < keep_maps
                records.append(Record(name, case, scalars, deletion, insertion, rmap if kept else None))
                if progress:
                    progress(1)
        release = getattr(source, "release", None)
        if release is not None:
            release()
    return records


def summarise(records: Iterable[Record]) -> dict[str, dict]:
    """Per source: ``{metric: {"mean", "std", "n"}}`` for the scalars (NaN entries left out) and
    ``deletion`` / ``insertion``: ``{"mean": [...], "std": [...]}`` over the cases."""
    by_source: dict[str, list[Record]] = {}
    for record in records:
        by_source.setdefault(record.source, []).append(record)
    summary = {}
    for name, group in by_source.items():
        entry: dict = {}
        for metric in SCALARS:
            values = np.array([r.scalars[metric] for r in group], dtype=np.float64)
            values = values[np.isfinite(values)]
            entry[metric] = {
                "mean": float(values.mean()) if values.size else None,
                "std": float(values.std()) if values.size else None,
                "n": int(values.size),
            }
        for kind in ("deletion", "insertion"):
            curves = np.stack([getattr(r, kind) for r in group])
            entry[kind] = {"mean": curves.mean(axis=0).tolist(), "std": curves.std(axis=0).tolist()}
        summary[name] = entry
    return summary
