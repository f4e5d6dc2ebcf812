"""Write evaluation results: a markdown table, JSON, and PNG plots (curves, heatmap grid).

Plots need matplotlib (``pip install 'sglrp-onnx[eval]'``); without it the table and JSON are
still written and :func:`write_plots` says what is missing. Every file is written atomically
(a temporary file in the same folder, then a rename), so an interrupted run leaves no half file.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from sglrp_onnx.errors import UsageError
from sglrp_onnx.io import atomic_write_bytes
from sglrp_onnx.metrics.runner import HIGHER_IS_BETTER, SCALARS, Record

TITLES = {
    "relevance_mass": "mass in box",
    "rank_accuracy": "rank acc.",
    "pointing_game": "pointing",
    "discrimination": "discrim.",
    "ablation_drop": "max-patch drop",
    "aopc": "AOPC",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
}


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def markdown_table(summary: dict[str, dict]) -> str:
    """One row per source, one column per metric: mean ± standard deviation over the cases;
    the best mean of each column in bold, every source that reaches it at the printed precision
    (arrows say which way is better)."""
    names = list(summary)
    best = {}  # metric -> the best mean (every source that reaches it is bold)
    for metric in SCALARS:
        means = [summary[n][metric]["mean"] for n in names if summary[n][metric]["mean"] is not None]
        if means:
            best[metric] = max(means) if HIGHER_IS_BETTER[metric] else min(means)
    header = "| source | " + " | ".join(f"{TITLES[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in SCALARS) + " |"
    lines = [header, "|" + "---|" * (len(SCALARS) + 1)]
    for name in names:
        cells = []
        for metric in SCALARS:
            stats = summary[name][metric]
            text = _cell(stats)
            top = stats["mean"] is not None and f"{stats['mean']:.3f}" == f"{best[metric]:.3f}"
            cells.append(f"**{text}**" if top else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = {summary[n][m]["n"] for n in names for m in SCALARS if m != "discrimination"}
    lines.append("")
    lines.append(f"mean ± standard deviation over {', '.join(map(str, sorted(counts)))} case(s) per source")
    return "\n".join(lines) + "\n"


def results_json(records: Sequence[Record], summary: dict, settings: dict) -> dict:
    """Everything as plain JSON: the settings, the summary, and each case's scalars and curves."""
    return {
        "settings": settings,
        "summary": summary,
        "cases": [
            {
                "source": r.source,
                "image": r.case.name,
                "class": r.case.target,
                "label": r.case.label,
                **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.scalars.items()},
                "deletion": r.deletion.tolist(),
                "insertion": r.insertion.tolist(),
            }
            for r in records
        ],
    }


def write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode(), force=True)


def write_json(path: Path, data: dict) -> Path:
    return write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'sglrp-onnx[eval]' (or give --no-plots)") from None
    return plt


def _save_figure(figure, path: Path, dpi: int = 110) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue(), force=True)


def plot_curves(summary: dict[str, dict], path: Path, sources: Sequence[str] | None = None, dpi: int = 110) -> Path:
    """Deletion and insertion curves: mean over the cases with a band of ± one standard deviation."""
    plt = _pyplot()
    names = list(sources or summary)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = plt.get_cmap("tab20")
    for kind, axis in zip(("deletion", "insertion"), axes):
        for i, name in enumerate(names):
            mean = np.asarray(summary[name][kind]["mean"])
            std = np.asarray(summary[name][kind]["std"])
            fraction = np.linspace(0, 1, len(mean))
            style = "--" if name in ("random", "gradient x input") else "-"
            axis.plot(fraction, mean, style, color=colours(i % 20), label=name, linewidth=1.4)
            axis.fill_between(fraction, mean - std, mean + std, color=colours(i % 20), alpha=0.08)
        axis.set_title(f"{kind} (patches {'removed' if kind == 'deletion' else 'inserted'}, most relevant first)")
        axis.set_xlabel("fraction of patches")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the explained class")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    path = _save_figure(figure, path, dpi=dpi)
    plt.close(figure)
    return path


def plot_bars(summary: dict[str, dict], metrics: Sequence[str], path: Path, dpi: int = 110) -> Path:
    """Grouped bars (mean ± standard deviation) of a few scalar metrics for every source."""
    plt = _pyplot()
    names = list(summary)
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.32 * len(names) + 1.6), sharey=True)
    axes = np.atleast_1d(axes)
    for metric, axis in zip(metrics, axes):
        means = [summary[n][metric]["mean"] or 0.0 for n in names]
        stds = [summary[n][metric]["std"] or 0.0 for n in names]
        axis.barh(range(len(names)), means, xerr=stds, color="#4a7bb7", alpha=0.85, error_kw={"elinewidth": 0.8})
        axis.set_title(f"{TITLES[metric]} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}")
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    figure.tight_layout()
    path = _save_figure(figure, path, dpi=dpi)
    plt.close(figure)
    return path


def plot_heatmaps(records: Sequence[Record], photos: dict[int, np.ndarray], path: Path, cases: int = 4, dpi: int = 80) -> Path:
    """A grid of maps: one row per case (the first ``cases``), one column per source; each map on a
    symmetric colour scale (red positive, blue negative), the object's box outlined."""
    plt = _pyplot()
    records = [r for r in records if r.rmap is not None]
    if not records:
        raise UsageError("no maps were kept for the heatmap grid")
    sources = list(dict.fromkeys(r.source for r in records))
    keys = list(dict.fromkeys((r.case.image, r.case.target) for r in records))[:cases]
    by_key = {}
    for r in records:  # the first record of each (source, image, class)
        by_key.setdefault((r.source, r.case.image, r.case.target), r)
    figure, axes = plt.subplots(len(keys), len(sources) + 1, figsize=(1.7 * (len(sources) + 1), 1.8 * len(keys)), squeeze=False)
    for row, (image, target) in enumerate(keys):
        first = by_key[(sources[0], image, target)]
        axes[row, 0].imshow(photos[image])
        axes[row, 0].contour(first.case.mask, levels=[0.5], colors="lime", linewidths=0.8)
        axes[row, 0].set_title(f"{first.case.name}\n→ {first.case.label[:18]}", fontsize=6)
        for col, source in enumerate(sources, start=1):
            rmap = by_key[(source, image, target)].rmap
            vmax = float(np.abs(rmap).max()) or 1.0
            axes[row, col].imshow(rmap, cmap="bwr", vmin=-vmax, vmax=vmax)
            axes[row, col].contour(first.case.mask, levels=[0.5], colors="k", linewidths=0.5)
            if row == 0:
                axes[row, col].set_title(source, fontsize=6)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    path = _save_figure(figure, path, dpi=dpi)
    plt.close(figure)
    return path
