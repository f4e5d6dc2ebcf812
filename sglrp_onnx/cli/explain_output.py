"""What ``sglrp-onnx explain`` writes: PNGs per image and explained class, and ``results.jsonl``.

``results.jsonl`` holds one JSON object per image. It is appended to and flushed one image at a
time, so an interrupted run loses at most the line being written (a cut-off line is ignored when
read), and a run started again skips the images recorded with the same settings
(:meth:`ResultsFile.done`). Every PNG is written atomically (:func:`sglrp_onnx.heatmap.save_png`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from sglrp_onnx.errors import OutputError
from sglrp_onnx.heatmap import heatmap, overlay, panel, save_png

RESULTS_FILE = "results.jsonl"
#: The order of the panels of a comparison image.
METHOD_ORDER = ("lrp", "clrp", "sglrp")


def output_names(images: list[Path]) -> dict[str, str]:
    """A file-name stem per image (keyed by its resolved path): its own stem, plus a short hash of
    its path where stems clash."""
    counts: dict[str, int] = {}
    for image in images:
        counts[image.stem] = counts.get(image.stem, 0) + 1
    names = {}
    for image in images:
        stem = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in image.stem) or "image"
        if counts[image.stem] > 1:
            stem += "-" + hashlib.sha1(str(image.resolve()).encode()).hexdigest()[:8]
        names[str(image.resolve())] = stem
    return names


def settings_key(settings: Mapping) -> str:
    """A short hash of the settings a result depends on; records with another key are redone."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_results(path: Path) -> list[dict]:
    """The parseable lines of a results file (a line cut off by an interruption is ignored)."""
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class ResultsFile:
    """``OUT/results.jsonl``: append records one at a time, find finished images, drop records."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / RESULTS_FILE

    def done(self, key: str) -> set[str]:
        """The images (resolved paths) recorded without error under settings ``key``."""
        return {
            r["image"]
            for r in read_results(self.path)
            if r.get("settings") == key and "error" not in r and isinstance(r.get("image"), str)
        }

    def append(self, record: dict) -> None:
        """Append one record as a line, flushed and synced (a cut-off last line is ended first)."""
        data = json.dumps(record, ensure_ascii=False)
        try:
            needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and _last_byte(self.path) != b"\n"
            with open(self.path, "a", encoding="utf-8") as handle:
                if needs_newline:
                    handle.write("\n")
                handle.write(data + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None

    def drop(self, images: set[str]) -> None:
        """Rewrite the file atomically without the records of ``images``."""
        if not self.path.is_file():
            return
        from sglrp_onnx.io import atomic_write_bytes

        kept = [r for r in read_results(self.path) if r.get("image") not in images]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        atomic_write_bytes(self.path, text.encode("utf-8"), force=True)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def write_image(out: Path, name: str, i: int, photo: np.ndarray, runs: dict, main_method: str, layout: str) -> list[dict]:
    """Write image ``i``'s PNGs and return its ``explanations`` entries.

    ``runs`` maps each requested target (or rank, with ``--top-k``) to ``{method: Explanation}``
    for the batch the image is in; ``main_method``'s result is drawn, and with several methods a
    comparison panel too. A class already drawn for this image (two targets resolving to it) is
    not repeated.
    """
    explanations = []
    seen_classes: set[int] = set()
    for target, by_method in runs.items():
        result = by_method[main_method]
        cls = int(result.explained_class[i])
        if cls in seen_classes:
            continue
        seen_classes.add(cls)
        relevance = result.relevance[i]
        files = {
            "heatmap": f"{name}.{main_method}.c{cls}.heatmap.png",
            "overlay": f"{name}.{main_method}.c{cls}.overlay.png",
        }
        save_png(heatmap(relevance, layout), out / files["heatmap"])
        save_png(overlay(photo, relevance, layout), out / files["overlay"])
        if len(by_method) > 1:
            files["compare"] = f"{name}.c{cls}.compare.png"
            save_png(_comparison(photo, by_method, i, cls, result, layout), out / files["compare"])
        r = relevance.astype(np.float64)
        explanations.append(
            {
                "target": int(target),
                "explained_class": cls,
                "explained_label": result.label(cls),
                "probability": float(result.probabilities[i, cls]),
                "logit": float(result.logits[i, cls]),
                "relevance_sum": float(r.sum()),
                "relevance_max_abs": float(np.abs(r).max()),
                "files": files,
            }
        )
    return explanations


def _comparison(photo, by_method, i, cls, result, layout) -> np.ndarray:
    order = [m for m in METHOD_ORDER if m in by_method]
    heat_row = [photo] + [heatmap(by_method[m].relevance[i], layout) for m in order]
    over_row = [np.full_like(photo, 255)] + [overlay(photo, by_method[m].relevance[i], layout) for m in order]
    header = f"class {cls}: {result.label(cls)} (p={result.probabilities[i, cls]:.3f})"
    return panel([heat_row, over_row], ["photo"] + [m.upper() for m in order], header)


def image_record(key: str, name: str, settings: str, method: str, provider: str, predictions, explanations) -> dict:
    """One line of ``results.jsonl`` (docs/runtime.md shows an example)."""
    return {
        "image": key,
        "name": name,
        "settings": settings,
        "method": method,
        "provider": provider,
        "predictions": predictions,
        "explanations": explanations,
    }


def error_record(key: str, settings: str, error: Exception) -> dict:
    """The line of an image that could not be read."""
    return {"image": key, "settings": settings, "error": str(error)}
