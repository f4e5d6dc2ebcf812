"""Class names, and targets given as a class index or a class name.

The ImageNet-1k names (torchvision's spelling, one per line, index = line number) ship with the
package in ``sglrp_onnx/data/imagenet_classes.txt``; a model with 1000 classes uses them unless a
labels file is given. A labels file is either

- a text file with one name per line (line ``i`` is class ``i``; blank lines count as classes
  with an empty name only when they are not at the end), or
- a JSON file: a list of names, or an object mapping indices to names (``{"0": "tench", ...}``)
  or to ``[wnid, name]`` pairs (the Keras ``imagenet_class_index.json`` format).
"""

from __future__ import annotations

import difflib
import json
import os
from importlib import resources
from typing import Sequence

from sglrp_onnx.errors import InputError, UsageError

IMAGENET_NUM_CLASSES = 1000


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names bundled with the package (torchvision's spelling)."""
    text = resources.files("sglrp_onnx").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    names = text.splitlines()
    if len(names) != IMAGENET_NUM_CLASSES:  # pragma: no cover - packaging error
        raise RuntimeError(f"bundled imagenet_classes.txt has {len(names)} lines, expected 1000")
    return names


def load_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a labels file (text, one per line, or JSON; see the module doc).

    Raises:
        UsageError: the file is missing, unreadable or not in one of the formats.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read labels file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"labels file {path} is not UTF-8 text") from None
    stripped = text.lstrip()
    if path.lower().endswith(".json") or stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"labels file {path} is not valid JSON: {error}") from None
        return _labels_from_json(data, path)
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise UsageError(f"labels file {path} is empty")
    return names


def _labels_from_json(data, path: str) -> list[str]:
    def name_of(value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and value and isinstance(value[-1], str):
            return value[-1]
        raise UsageError(f"labels file {path}: cannot read a class name from {value!r}")

    if isinstance(data, list):
        if not data:
            raise UsageError(f"labels file {path} is empty")
        return [name_of(v) for v in data]
    if isinstance(data, dict):
        try:
            items = {int(k): name_of(v) for k, v in data.items()}
        except ValueError:
            raise UsageError(f"labels file {path}: the keys of a JSON object must be class indices") from None
        if not items:
            raise UsageError(f"labels file {path} is empty")
        if min(items) < 0 or sorted(items) != list(range(len(items))):
            raise UsageError(f"labels file {path}: class indices must be 0..{len(items) - 1} without gaps")
        return [items[i] for i in range(len(items))]
    raise UsageError(f"labels file {path}: expected a JSON list or object")


def labels_for(num_classes: int | None, path: str | os.PathLike | None = None) -> list[str] | None:
    """The class names to use for a model with ``num_classes`` classes.

    A labels file wins (its length must then match ``num_classes`` where that is known); without
    one, a 1000-class model gets the bundled ImageNet names and other models get ``None``.
    """
    if path is not None:
        names = load_labels(path)
        if num_classes is not None and len(names) != num_classes:
            raise UsageError(
                f"labels file {os.fspath(path)} has {len(names)} names but the model has {num_classes} classes"
            )
        return names
    if num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_labels()
    return None


def label_of(index: int, labels: Sequence[str] | None) -> str:
    """The name of class ``index``, or ``"class <index>"`` without names."""
    if labels is not None and 0 <= index < len(labels) and labels[index]:
        return labels[index]
    return f"class {index}"


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def resolve_target(
    target: int | str,
    labels: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> int:
    """A target given as a class index or a class name, as a class index.

    - an ``int`` or a string of digits is an index; ``-1`` (or any negative number, or the words
      ``predicted``/``pred``/``top``) means the predicted class and is returned as ``-1``;
    - any other string is a class name, matched case-insensitively (``_`` counts as a space).

    Raises:
        InputError: an index outside ``0..num_classes-1``, or a name that is unknown or ambiguous;
            for an unknown name the message lists close matches.
    """
    if isinstance(target, bool):
        raise InputError(f"invalid target {target!r}: give a class index or a class name")
    if not isinstance(target, (int, str)):
        try:
            import numpy as np

            if isinstance(target, np.integer):
                target = int(target)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(target, str):
        text = target.strip()
        if text.lower() in ("predicted", "pred", "top"):
            return -1
        try:
            target = int(text)
        except ValueError:
            return _resolve_name(text, labels)
    if not isinstance(target, int):
        raise InputError(f"invalid target {target!r}: give a class index or a class name")
    if target < 0:
        return -1
    if num_classes is not None and target >= num_classes:
        raise InputError(
            f"target {target} is out of range: the model has {num_classes} classes (0..{num_classes - 1}); "
            "a negative target means the predicted class"
        )
    return target


def _resolve_name(name: str, labels: Sequence[str] | None) -> int:
    if labels is None:
        raise InputError(
            f"target {name!r} is a class name, but the model's class names are unknown: "
            "give a labels file (--labels) or a class index"
        )
    wanted = _normalise(name)
    normalised = [_normalise(label) for label in labels]
    hits = [i for i, label in enumerate(normalised) if label == wanted]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        listed = ", ".join(f"{i} ({labels[i]})" for i in hits)
        raise InputError(f"class name {name!r} is ambiguous: it names classes {listed}; give the index")
    # Unknown: list names that contain the query's words, then its text, then ones that look alike.
    words = set(wanted.split())
    close: list[int] = [i for i, label in enumerate(normalised) if words and words <= set(label.split())]
    close += [i for i, label in enumerate(normalised) if wanted in label and i not in close]
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(normalised):
        by_label.setdefault(label, []).append(i)
    for match in difflib.get_close_matches(wanted, list(by_label), n=8, cutoff=0.6):
        close.extend(i for i in by_label[match] if i not in close)
    if close:
        listed = ", ".join(f"{labels[i]!r} ({i})" for i in close[:10])
        more = f" and {len(close) - 10} more" if len(close) > 10 else ""
        raise InputError(f"unknown class name {name!r}; close matches: {listed}{more}")
    raise InputError(f"unknown class name {name!r}; no class name looks like it (give a class index?)")
