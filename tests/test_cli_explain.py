"""End to end through the command line: ``python -m sglrp_onnx convert`` then ``explain``.

Uses the small CNN from tests/tiny_models.py (no torch) and photos written by the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tiny_models import plain_cnn, write_images

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16
K = 5
LABELS = ["apple", "banana", "Egyptian cat", "espresso", "zebra"]


def sglrp(*args, cwd=None, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "sglrp_onnx", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    plain = base / "tiny.onnx"
    onnx.save(plain_cnn(num_classes=K, size=SIZE), plain)
    photos = base / "photos"
    photos.mkdir()
    write_images(photos, sizes=((40, 30), (20, 50), (64, 64), (33, 17), (16, 16)))
    labels = base / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    converted = base / "tiny.sglrp.onnx"
    done = sglrp("convert", plain, "-o", converted, "--preset", "imagenet")
    assert done.returncode == 0, done.stderr
    assert converted.is_file()
    return {"base": base, "plain": plain, "photos": photos, "labels": labels, "converted": converted,
            "cache": {"SGLRP_ONNX_CACHE": str(base / "cache")}}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_png(path: Path, size=(SIZE, SIZE)) -> np.ndarray:
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == size
        pixels = np.asarray(img)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1, f"{path} is blank"
    return pixels


def test_help_is_complete():
    done = sglrp("explain", "--help")
    assert done.returncode == 0
    for option in ("--target", "--top-k", "--method", "--composite", "--contrast", "--preset", "--labels",
                   "--batch-size", "--out", "--compare", "--force", "results.jsonl", "examples:"):
        assert option in done.stdout, option


def test_explain_folder_then_resume(setup):
    out = setup["base"] / "out1"
    args = ["explain", setup["converted"], setup["photos"], "--out", out, "--batch-size", "2",
            "--labels", setup["labels"]]
    first = sglrp(*args, env_extra=setup["cache"])
    assert first.returncode == 0, first.stderr
    assert "explained 5 image(s), skipped 0" in first.stdout
    assert "explain:" in first.stderr and "5/5" in first.stderr  # the progress bar (tqdm) on stderr
    records = read_jsonl(out / "results.jsonl")
    assert len(records) == 5
    names = set()
    for record in records:
        assert Path(record["image"]).is_file()
        assert record["method"] == "sglrp" and record["provider"] == "CPUExecutionProvider"
        assert len(record["predictions"]) == 5  # max(K, 5) predictions, K = 5 classes here
        probabilities = [p["probability"] for p in record["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert record["predictions"][0]["label"] in LABELS
        (explanation,) = record["explanations"]
        assert explanation["target"] == -1
        assert explanation["explained_class"] == record["predictions"][0]["class"]
        assert explanation["explained_label"] == LABELS[explanation["explained_class"]]
        for kind in ("heatmap", "overlay"):
            check_png(out / explanation["files"][kind])
        names.add(record["name"])
    assert names == {f"photo{i}" for i in range(5)}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert len(stamps) == 10

    second = sglrp(*args, env_extra=setup["cache"])
    assert second.returncode == 0, second.stderr
    assert "explained 0 image(s), skipped 5" in second.stdout
    assert len(read_jsonl(out / "results.jsonl")) == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps

    # a new image in the folder: only that one is done
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(setup["photos"] / "zz_new.png")
    try:
        third = sglrp(*args, env_extra=setup["cache"])
        assert third.returncode == 0, third.stderr
        assert "explained 1 image(s), skipped 5" in third.stdout
        assert len(read_jsonl(out / "results.jsonl")) == 6
    finally:
        (setup["photos"] / "zz_new.png").unlink()

    forced = sglrp(*args, "--force", env_extra=setup["cache"])
    assert forced.returncode == 0, forced.stderr
    assert "explained 5 image(s), skipped 0" in forced.stdout
    assert len(read_jsonl(out / "results.jsonl")) == 6  # 5 redone + the removed image's old line


def test_top_k_explains_the_most_probable_classes(setup):
    out = setup["base"] / "out_topk"
    done = sglrp("explain", setup["converted"], setup["photos"], "--out", out, "--top-k", "3", "--quiet",
                 "--labels", setup["labels"], env_extra=setup["cache"])
    assert done.returncode == 0, done.stderr
    records = read_jsonl(out / "results.jsonl")
    assert len(records) == 5
    for record in records:
        ranked = [p["class"] for p in record["predictions"]]
        explained = [e["explained_class"] for e in record["explanations"]]
        assert explained == ranked[:3]
        for explanation in record["explanations"]:
            check_png(out / explanation["files"]["heatmap"])
    clash = sglrp("explain", setup["converted"], setup["photos"], "--out", out, "--top-k", "2", "--target", "0")
    assert clash.returncode == 2 and "--top-k" in clash.stderr


def test_interrupted_results_line_is_redone(setup):
    out = setup["base"] / "out_cut"
    image = sorted(setup["photos"].glob("*"))[0]
    args = ["explain", setup["converted"], image, "--out", out, "--quiet"]
    assert sglrp(*args).returncode == 0
    results = out / "results.jsonl"
    text = results.read_text()
    results.write_text(text[: len(text) // 2])  # as if killed while writing the line
    again = sglrp(*args)
    assert again.returncode == 0, again.stderr
    assert "explained 1 image(s)" in again.stdout
    assert len(read_jsonl_tolerant(results)) == 1


def read_jsonl_tolerant(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def test_plain_model_targets_by_name_and_index(setup):
    out = setup["base"] / "out2"
    image = sorted(setup["photos"].glob("*"))[2]
    done = sglrp(
        "explain", setup["plain"], image, "--preset", "imagenet", "--labels", setup["labels"],
        "--target", "egyptian cat", "3", "predicted", "--out", out, "--quiet",
        env_extra=setup["cache"],
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (record,) = read_jsonl(out / "results.jsonl")
    explained = [e["explained_class"] for e in record["explanations"]]
    assert explained[:2] == [2, 3]
    predicted = record["predictions"][0]["class"]
    assert explained == ([2, 3] if predicted in (2, 3) else [2, 3, predicted])
    heat = {e["explained_class"]: check_png(out / e["files"]["heatmap"]) for e in record["explanations"]}
    assert not np.array_equal(heat[2], heat[3])  # different classes, different maps
    assert list((setup["base"] / "cache").glob("*.onnx"))  # converted on the fly and cached


def test_compare_renders_three_methods(setup):
    out = setup["base"] / "out3"
    image = sorted(setup["photos"].glob("*"))[0]
    done = sglrp(
        "explain", setup["plain"], image, "--preset", "imagenet", "--compare", "--target", "1",
        "--out", out, "--quiet", env_extra=setup["cache"],
    )
    assert done.returncode == 0, done.stderr
    (record,) = read_jsonl(out / "results.jsonl")
    (explanation,) = record["explanations"]
    files = explanation["files"]
    assert set(files) == {"heatmap", "overlay", "compare"}
    with Image.open(out / files["compare"]) as img:
        assert img.width > 4 * SIZE and img.height > 2 * SIZE
        assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 10


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--target", "5"], 7, "target 5 is out of range"),
        (["--target", "espreso"], 7, "close matches: 'espresso' (3)"),
        (["--preset", "torch"], 2, "unknown preset 'torch'"),
        (["--batch-size", "0"], 2, "--batch-size must be at least 1"),
        (["--method", "lrp", "--contrast", "signed"], 2, "--contrast applies to clrp and sglrp"),
    ],
)
def test_errors(setup, extra, code, message):
    image = sorted(setup["photos"].glob("*"))[0]
    done = sglrp("explain", setup["converted"], image, "--labels", setup["labels"],
                 "--out", setup["base"] / "out_err", "--quiet", *extra, env_extra=setup["cache"])
    assert done.returncode == code, (done.returncode, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_inputs_and_unreadable_image(setup, tmp_path):
    missing = sglrp("explain", setup["converted"], tmp_path / "nope.png", "--out", tmp_path / "o")
    assert missing.returncode == 7 and "no such image file or folder" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = sglrp("explain", setup["converted"], empty, "--out", tmp_path / "o")
    assert none.returncode == 7 and "no images found" in none.stderr
    no_model = sglrp("explain", tmp_path / "model.onnx", setup["photos"], "--out", tmp_path / "o")
    assert no_model.returncode == 3 and "no such model file" in no_model.stderr
    no_preset = sglrp("explain", setup["plain"], setup["photos"], "--out", tmp_path / "o",
                      "--composite", "epsilon", env_extra=setup["cache"])
    assert no_preset.returncode == 2 and "--preset" in no_preset.stderr
    broken = tmp_path / "mixed"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not an image")
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(broken / "good.png")
    out = tmp_path / "o2"
    done = sglrp("explain", setup["converted"], broken, "--out", out, "--quiet")
    assert done.returncode == 7, done.stderr
    assert "bad.png" in done.stderr and "explained 1 image(s)" in done.stdout
    records = read_jsonl(out / "results.jsonl")
    assert any("error" in r for r in records) and any("explanations" in r for r in records)


def test_compare_maps_run_in_turn_equal_maps_run_together(setup, tmp_path, monkeypatch):
    """--compare runs the other methods first, one session at a time, and reads their maps back
    from disk: each map equals what that method's own explainer gives for the same batch, with
    --top-k ranks too; the maps' folder is gone afterwards."""
    from sglrp_onnx.cli import build_parser
    from sglrp_onnx.cli.explain import open_method, run_other_methods, stored_runs
    from sglrp_onnx.runtime.step import explain_batch

    monkeypatch.setenv("SGLRP_ONNX_CACHE", str(tmp_path / "cache"))
    photos = sorted(setup["photos"].glob("*"))
    args = build_parser().parse_args(["explain", str(setup["plain"]), *map(str, photos), "--preset", "imagenet",
                                      "--compare", "--top-k", "2", "--batch-size", "2", "--out", str(tmp_path / "o")])
    main = open_method(args, "sglrp")
    preprocessing = main.preprocessing()
    batches = [photos[:2], photos[2:4], photos[4:]]
    run_other_methods(args, "sglrp", batches, preprocessing, [-1], tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [f"{m}.{b}.npz" for m in ("clrp", "lrp") for b in range(3)]
    for number, batch in enumerate(batches):
        pixels, _, _ = preprocessing.fit_many(batch)
        x = preprocessing.normalize(pixels)
        runs = stored_runs(explain_batch(x, {"sglrp": main}, "sglrp", [-1], 2), tmp_path, number)
        for method in ("lrp", "clrp"):
            direct = explain_batch(x, {method: open_method(args, method)}, method, [-1], 2)
            for rank in (0, 1):
                np.testing.assert_array_equal(runs[rank][method].relevance, direct[rank][method].relevance)
    out = tmp_path / "cli"
    done = sglrp("explain", setup["plain"], *photos[:3], "--preset", "imagenet", "--compare", "--batch-size", "2",
                 "--out", out, "--quiet", env_extra=setup["cache"])
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(out / "results.jsonl")) == 3
    assert not list(out.glob(".compare-*"))
