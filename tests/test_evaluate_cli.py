"""``sglrp-onnx evaluate`` end to end on the small CNN of tests/tiny_models.py (no torch):
boxes and masks, several methods and composites, baselines, the files written, and the errors
for bad annotation files (which must name the file and the entry)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from sglrp_onnx.cli import main
from tiny_models import plain_cnn, write_images

SIZE = 16
LABELS = ["apple", "banana", "Egyptian cat", "espresso", "zebra"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    model = base / "tiny.onnx"
    onnx.save(plain_cnn(num_classes=5, size=SIZE), model)
    photos = base / "photos"
    photos.mkdir()
    paths = write_images(photos, sizes=((40, 30), (32, 32)))
    labels = base / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    boxes = {
        paths[0].name: [{"class": "Egyptian cat", "box": [0, 0, 20, 30]}, {"class": 3, "box": [20, 0, 40, 30]}],
        paths[1].name: [{"class": 1, "box": [4, 4, 20, 28]}],
    }
    boxes_file = base / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    return {"base": base, "model": model, "photos": photos, "paths": paths, "labels": labels, "boxes": boxes_file}


def run(setup, *extra, out="out"):
    args = [
        "evaluate", str(setup["model"]), str(setup["photos"]), "--preset", "imagenet", "--labels", str(setup["labels"]),
        "--steps", "4", "--patch", "4", "--no-cache", "--quiet", "--out", str(setup["base"] / out), *map(str, extra),
    ]
    return main(args)


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    for option in ("--boxes", "--masks", "--target", "--methods", "--composites", "--baselines", "--fill", "--patch",
                   "--steps", "--out", "--fit", "--preset", "--no-plots", "evaluation.json", "curves.png", "AOPC"):
        assert option in text, option


def test_boxes_methods_composites_and_baselines(setup, capsys):
    pytest.importorskip("matplotlib")
    code = run(setup, "--boxes", setup["boxes"], "--methods", "lrp", "sglrp:scaled",
               "--composites", "dtd", "epsilon-plus-flat", out="boxes")
    assert code == 0, capsys.readouterr().err
    out = setup["base"] / "boxes"
    data = json.loads((out / "evaluation.json").read_text())
    sources = ["lrp / dtd", "sglrp scaled / dtd", "lrp / epsilon-plus-flat", "sglrp scaled / epsilon-plus-flat",
               "gradient x input", "random"]
    assert data["settings"]["sources"] == sources
    assert data["settings"]["cases"] == 3
    assert len(data["cases"]) == 3 * len(sources)
    first = data["cases"][0]
    assert first["label"] == "Egyptian cat" and len(first["deletion"]) == 5
    assert 0.0 <= first["relevance_mass"] <= 1.0 and 0.0 <= first["discrimination"] <= 1.0
    single = [c for c in data["cases"] if c["image"] == setup["paths"][1].name]
    assert all(c["discrimination"] is None for c in single)  # one object: nothing to discriminate
    table = (out / "evaluation.md").read_text()
    assert all(f"| {name} |" in table for name in sources)
    for png in ("curves.png", "scores.png", "heatmaps.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_masks_and_target(setup, capsys):
    masks = setup["base"] / "masks"
    masks.mkdir()
    mask = np.zeros((30, 40), np.uint8)
    mask[5:25, 10:30] = 255
    Image.fromarray(mask).save(masks / f"{setup['paths'][0].stem}.2.png")
    code = run(setup, "--masks", masks, "--methods", "sglrp", "--baselines", "random", "--target", "Egyptian cat",
               "--no-plots", "--fill", "blur", out="masks")
    assert code == 0, capsys.readouterr().err
    data = json.loads((setup["base"] / "masks" / "evaluation.json").read_text())
    assert data["settings"]["sources"] == ["sglrp / dtd", "random"]
    assert {c["class"] for c in data["cases"]} == {2}
    assert not (setup["base"] / "masks" / "curves.png").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "maps image file names"),
        ('{"photo0.png": [{"class": 1}]}', "entry 'photo0.png' item 0"),
        ('{"photo0.png": [{"class": 1, "box": [5, 5, 2, 9]}]}', "entry 'photo0.png' item 0: box [5, 5, 2, 9] is empty"),
        ('{"photo0.png": [{"class": 1, "box": [500, 500, 600, 600]}]}', "outside the 40x30 photo"),
        ('{"photo0.png": [{"class": "giraffe", "box": [0, 0, 5, 5]}]}', "entry 'photo0.png' item 0: class 'giraffe'"),
        ('{"photo0.png": [{"class": 9, "box": [0, 0, 5, 5]}]}', "out of range"),
        ('{"other.png": [{"class": 1, "box": [0, 0, 5, 5]}]}', "no annotated object"),
    ],
)
def test_bad_boxes_files(setup, capsys, content, message):
    bad = setup["base"] / "bad.json"
    bad.write_text(content)
    code = run(setup, "--boxes", bad, "--no-plots", "--methods", "lrp", "--baselines", out="bad")
    err = capsys.readouterr().err
    assert code == 7, err
    assert message in err
    if "no annotated" not in message:
        assert str(bad) in err


def test_bad_masks_and_options(setup, capsys):
    masks = setup["base"] / "badmasks"
    masks.mkdir()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(masks / "photo0.cat.png")
    assert run(setup, "--masks", masks, "--no-plots", out="bm") == 7
    assert "not named <image>.<class index>.png" in capsys.readouterr().err
    (masks / "photo0.cat.png").unlink()
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(masks / "photo0.2.png")
    assert run(setup, "--masks", masks, "--no-plots", out="bm") == 7
    assert "photo0.2.png: mask is 10x10 but the photo photo0.png is 40x30" in capsys.readouterr().err
    assert run(setup, "--boxes", setup["boxes"], "--steps", "0", out="bm") == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_table_marks_every_best_source():
    from sglrp_onnx.metrics.report import markdown_table
    from sglrp_onnx.metrics.runner import SCALARS

    def stats(value):
        return {"mean": value, "std": 0.0, "n": 2}

    summary = {
        name: {metric: stats(value) for metric in SCALARS}
        for name, value in (("a", 0.5), ("b", 0.5), ("c", 0.25))
    }
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown_table(summary).splitlines()[2:5]}
    # higher is better for mass: a and b tie; lower is better for the deletion area: c alone
    assert rows["a"].count("**0.500") == len(SCALARS) - 1 and rows["b"].count("**0.500") == len(SCALARS) - 1
    assert rows["c"].count("**0.250") == 1
