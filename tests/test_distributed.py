"""Explaining on Ray: :func:`sglrp_onnx.distributed.explain_dataset` and ``explain --engine ray``.

One local Ray (2 CPUs) serves the whole module. References are the single-process paths:
:class:`~sglrp_onnx.runtime.Explainer` for the library and ``explain`` without ``--engine`` for the
command (same PNG bytes, same results.jsonl records). A worker that ends its process on its first
batch (the ``SGLRP_ONNX_TEST_CRASH_ONCE`` hook) must cost nothing: Ray restarts it and reruns the
batch, and every image is in the output exactly once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test cluster needs no token
ray = pytest.importorskip("ray", reason="the [ray] extra (ray[data]) is installed by make test")

from sglrp_onnx.cli import main  # noqa: E402
from sglrp_onnx.distributed import CRASH_ONCE_ENV, explain_dataset  # noqa: E402
from sglrp_onnx.runtime import Explainer  # noqa: E402
from tiny_models import plain_cnn, write_images  # noqa: E402

K = 5
SIZE = 16
SIZES = ((40, 30), (20, 50), (64, 64), (33, 17), (16, 16), (25, 25), (50, 20))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    model = base / "tiny.onnx"
    onnx.save(plain_cnn(num_classes=K, size=SIZE), model)
    photos = base / "photos"
    photos.mkdir()
    write_images(photos, sizes=SIZES)
    (photos / "zz-broken.png").write_bytes(b"\x89PNG but not really")
    good = sorted(str(p) for p in photos.iterdir() if "broken" not in p.name)
    return {"base": base, "model": model, "photos": photos, "good": good, "cache": base / "cache"}


@pytest.fixture(scope="module")
def explainer(files):
    return Explainer(files["model"], "cpu", preset="imagenet", cache_dir=files["cache"])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_image(records: list[dict]) -> dict[str, dict]:
    out = {}
    for record in records:
        assert record["image"] not in out, f"{record['image']} recorded twice"
        out[record["image"]] = record
    return out


def test_dataset_of_decoded_images_equals_explainer(local_ray, files, explainer):
    dataset = ray.data.read_images(files["good"], include_paths=True, mode="RGB")
    # one actor of one CPU: the other CPU stays free for Ray's reading tasks
    explained = explain_dataset(explainer, dataset, targets=["predicted", 2], batch_size=3, num_workers=1)
    rows = {Path(r["path"]).name: r for r in explained.take_all()}
    assert sorted(rows) == sorted(Path(p).name for p in files["good"])
    reference = {t: explainer.explain_images(files["good"], targets=t) for t in (-1, 2)}
    for i, path in enumerate(files["good"]):
        row = rows[Path(path).name]
        assert row["error"] == "" and row["provider"] == "CPUExecutionProvider"
        assert row["predicted_class"] == reference[-1].predicted_class[i]
        np.testing.assert_allclose(row["logits"], reference[-1].logits[i], rtol=1e-6, atol=1e-6)
        assert list(row["targets"]) == [-1, 2]
        for j, target in enumerate((-1, 2)):
            assert row["explained_class"][j] == reference[target].explained_class[i]
            assert row["relevance"][j].dtype == np.float32
            np.testing.assert_allclose(row["relevance"][j], reference[target].relevance[i], rtol=1e-5, atol=1e-8)


def test_encoded_bytes_float16_and_a_bad_image(local_ray, files, explainer):
    items = [{"image": Path(p).read_bytes(), "path": p} for p in files["good"][:3]]
    items.insert(1, {"image": b"definitely not an image", "path": "bad.jpg"})
    explained = explain_dataset(explainer, ray.data.from_items(items, override_num_blocks=2), top_k=2, dtype="float16",
                                batch_size=2, num_workers=2)
    rows = {r["path"]: r for r in explained.take_all()}
    assert len(rows) == 4
    assert rows["bad.jpg"]["error"].startswith("bad.jpg: not a readable image")
    assert not rows["bad.jpg"]["relevance"].any()
    good = files["good"][:3]
    top = explainer.explain_images(good, targets=-1)
    second = explainer.explain_images(good, targets=np.argsort(-top.logits, axis=1)[:, 1])
    for i, path in enumerate(good):
        row = rows[path]
        assert row["error"] == "" and list(row["targets"]) == [0, 1]  # ranks
        assert row["relevance"].dtype == np.float16
        for j, ref in enumerate((top, second)):
            assert row["explained_class"][j] == ref.explained_class[i]
            np.testing.assert_array_equal(row["relevance"][j], ref.relevance[i].astype(np.float16))


def test_worker_killed_mid_run_loses_nothing(local_ray, files, explainer, tmp_path):
    marker = tmp_path / "crashed"
    dataset = ray.data.from_items([{"image": p, "path": p} for p in files["good"]], override_num_blocks=4)
    explained = explain_dataset(explainer, dataset, batch_size=2, num_workers=2,
                                runtime_env={"env_vars": {CRASH_ONCE_ENV: str(marker)}})
    rows = explained.take_all()
    assert marker.exists(), "no worker ended its process: the test did not test a crash"
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(files["good"])  # each image exactly once
    reference = explainer.explain_images(files["good"])
    for row in rows:
        i = files["good"].index(row["path"])
        np.testing.assert_allclose(row["relevance"][0], reference.relevance[i], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("options, message", [
    ({"dtype": "int8"}, "dtype must be float32 or float16"),
    ({"image_column": "photo"}, "the dataset has no column 'photo'"),
    ({"top_k": 2, "targets": [1]}, "cannot be combined with targets"),
    ({"num_workers": 0}, "num_workers must be a positive integer"),
])
def test_explain_dataset_option_errors(local_ray, files, explainer, options, message):
    from sglrp_onnx.errors import UsageError

    dataset = ray.data.from_items([{"image": p} for p in files["good"]])
    with pytest.raises(UsageError, match=message):
        explain_dataset(explainer, dataset, **options)


def run_explain(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_ray_equals_local_and_resumes(local_ray, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SGLRP_ONNX_CACHE", str(files["cache"]))
    common = [files["model"], files["photos"], "--preset", "imagenet", "--target", "predicted", "2",
              "--batch-size", "3", "--quiet"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    code_local, _, err = run_explain(capsys, "explain", *common, "--out", local)
    assert code_local == 7, err  # the broken photo
    code_ray, out, err = run_explain(capsys, "explain", *common, "--out", remote, "--engine", "ray", "--num-workers", "2")
    assert code_ray == 7, err
    assert "zz-broken.png: not a readable image" in err
    assert "explained 7 image(s), skipped 0 already done, 1 failed" in out
    records_local, records_ray = by_image(read_jsonl(local / "results.jsonl")), by_image(read_jsonl(remote / "results.jsonl"))
    assert sorted(records_local) == sorted(records_ray)
    for image, expected in records_local.items():
        got = records_ray[image]
        if "error" in expected:
            assert "error" in got and "not a readable image" in got["error"]
            continue
        assert got["settings"] == expected["settings"]
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True) or _close(got, expected)
    pngs = sorted(p.name for p in local.glob("*.png"))
    assert pngs == sorted(p.name for p in remote.glob("*.png")) and len(pngs) == 7 * 2 * 2
    for name in pngs:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name

    code, out, _ = run_explain(capsys, "explain", *common, "--out", remote, "--engine", "ray")
    assert code == 7 and "explained 0 image(s), skipped 7 already done, 1 failed" in out  # the broken one is retried


def _close(got: dict, expected: dict) -> bool:
    """Records equal up to float rounding (the batches of the two engines differ)."""
    assert got.keys() == expected.keys()
    for key in got:
        if key in ("predictions", "explanations"):
            for a, b in zip(got[key], expected[key], strict=True):
                for field in a:
                    if isinstance(a[field], float):
                        assert a[field] == pytest.approx(b[field], rel=1e-5, abs=1e-7), field
                    else:
                        assert a[field] == b[field], field
        else:
            assert got[key] == expected[key], key
    return True


def test_cli_parquet_rows_and_resume_after_a_lost_file(local_ray, files, tmp_path, capsys, monkeypatch, explainer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("SGLRP_ONNX_CACHE", str(files["cache"]))
    out = tmp_path / "out"
    args = ["explain", files["model"], *files["good"], "--preset", "imagenet", "--target", "1", "--out", out,
            "--engine", "ray", "--format", "parquet", "--batch-size", "3", "--quiet"]
    code, _, err = run_explain(capsys, *args)
    assert code == 0, err
    records = by_image(read_jsonl(out / "results.jsonl"))
    parts = sorted((out / "relevance").glob("*.parquet"))
    assert len(parts) == 3  # 7 images in batches of 3
    lost = parts[0]
    lost_images = set(pq.read_table(lost).column("image").to_pylist())
    lost.unlink()
    code, stdout, err = run_explain(capsys, *args)
    assert code == 0, err
    assert f"explained {len(lost_images)} image(s), skipped {7 - len(lost_images)} already done" in stdout
    table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "relevance").glob("*.parquet"))])
    images = table.column("image").to_pylist()
    assert sorted(images) == sorted(records)  # each image once, the lost ones redone
    relevance = table.column("relevance").combine_chunks().to_numpy_ndarray()
    reference = explainer.explain_images(files["good"], targets=1)
    for row, image in enumerate(images):
        i = [str(Path(p).resolve()) for p in files["good"]].index(image)
        assert table.column("explained_class")[row].as_py() == 1
        np.testing.assert_allclose(relevance[row], reference.relevance[i], rtol=1e-5, atol=1e-8)
    final = by_image([r for r in read_jsonl(out / "results.jsonl") if r["image"] in lost_images][-len(lost_images):])
    for record in final.values():
        assert (out / record["explanations"][0]["files"]["parquet"]).is_file()


@pytest.mark.parametrize("extra, message", [
    (["--format", "parquet"], "--format parquet needs --engine ray"),
    (["--num-workers", "2"], "--num-workers applies to --engine ray"),
    (["--engine", "ray", "--compare"], "not available with --engine ray"),
    (["--engine", "ray", "--num-workers", "0"], "--num-workers must be at least 1"),
    (["--engine", "ray", "--provider", "cpu", "--tf32"], "--provider, --tf32: provider options apply to --engine local"),
])
def test_engine_option_errors(files, tmp_path, capsys, extra, message):
    code, _, err = run_explain(capsys, "explain", files["model"], files["photos"], "--preset", "imagenet",
                               "--out", tmp_path / "out", *extra)
    assert code == 2 and message in err
