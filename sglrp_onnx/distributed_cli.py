"""``sglrp-onnx explain --engine ray``: the explain command's batches run by a pool of Ray actors.

The driver (this process) lists the images, skips those already in ``results.jsonl``, and hands
the rest to :func:`sglrp_onnx.distributed.explain_dataset` as a Ray Dataset of absolute paths;
actors on the local machine or a Ray cluster (``--address``) prepare and explain them. As rows come
back, the driver writes the same PNGs and ``results.jsonl`` lines as the single-process command
(:mod:`sglrp_onnx.cli.explain_output`), one image at a time, so an interrupted run resumes where
it stopped. With ``--format parquet`` the relevance maps also go to ``OUT/relevance/*.parquet``.

Workers read the images by path: on a cluster, the images must be on storage every node sees.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sglrp_onnx.errors import InputError, UsageError

ENGINES = ("local", "ray")
FORMATS = ("png", "parquet")
PARQUET_FOLDER = "relevance"


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The ``explain`` options for running on Ray and for Parquet output."""
    group = parser.add_argument_group("scaling out (needs the ray extra: pip install 'sglrp-onnx[ray,cpu]')")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process (default); ray: a pool of Ray actors, each with one ONNX Runtime session",
    )
    group.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (e.g. ray://head:10001 or auto; default: $RAY_ADDRESS, else a local Ray on this machine)",
    )
    group.add_argument(
        "--num-workers",
        type=int,
        metavar="K",
        help="Ray actors (default: one per CPU of the Ray cluster, one per GPU where it has GPUs); "
        "the cluster's CPUs and GPUs are shared out among them",
    )
    group.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: heatmaps, overlays and results.jsonl (default); parquet: also every relevance map in "
        f"OUT/{PARQUET_FOLDER}/*.parquet (with --engine ray)",
    )


def check_engine_arguments(args) -> None:
    """Refuse engine options that do not fit together, before any work."""
    if args.engine != "ray":
        for option, value in (("--address", args.address), ("--num-workers", args.num_workers)):
            if value is not None:
                raise UsageError(f"{option} applies to --engine ray")
        if args.format == "parquet":
            raise UsageError("--format parquet needs --engine ray")
        return
    if args.num_workers is not None and args.num_workers < 1:
        raise UsageError(f"--num-workers must be at least 1, got {args.num_workers}")
    if args.compare:
        raise UsageError("--compare runs three models side by side; it is not available with --engine ray")
    local_only = [flag for flag, given in _provider_flags(args).items() if given]
    if local_only:
        raise UsageError(
            f"{', '.join(local_only)}: provider options apply to --engine local; Ray actors run the CUDA provider "
            "where Ray gives them a GPU, else the CPU"
        )
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray Data: pip install 'sglrp-onnx[ray,cpu]' (or '[ray,gpu]')") from None


def _provider_flags(args) -> dict[str, bool]:
    """The execution-provider flags of ``explain`` and whether each was given."""
    return {
        "--provider": getattr(args, "provider", "auto") != "auto",
        "--device": getattr(args, "device", 0) != 0,
        "--deterministic": bool(getattr(args, "deterministic", False)),
        "--tf32": bool(getattr(args, "tf32", False)),
        "--cuda-graph": bool(getattr(args, "cuda_graph", False)),
        "--tensorrt-cache": getattr(args, "tensorrt_cache", None) is not None,
        "--verify-placement": bool(getattr(args, "verify_placement", False)),
    }


def engine_settings(args) -> dict:
    """What the engine adds to the settings that decide which finished images are skipped (the
    engine itself does not: both give the same results)."""
    return {"format": "parquet"} if args.format == "parquet" else {}


def done_with_parquet(done: set[str], results, key: str, out: Path) -> set[str]:
    """The finished images whose Parquet files exist too (a run interrupted between its lines in
    results.jsonl and their Parquet file redoes those images)."""
    from sglrp_onnx.cli.explain_output import read_results

    complete = set()
    for record in read_results(results.path):
        if record.get("settings") != key or "error" in record or record.get("image") not in done:
            continue
        parts = {e.get("files", {}).get("parquet") for e in record.get("explanations", [])}
        if parts and None not in parts and all((out / part).is_file() for part in parts):
            complete.add(record["image"])
    return complete


def init_ray(address: str | None):
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start Ray on this machine; quietly."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command draws its own
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on progress and plans
    return ray


def worker_shares(ray, requested: int | None, blocks: int) -> tuple[int, float, float]:
    """``(workers, CPUs per worker, GPUs per worker)``: by default one actor per GPU where the
    cluster has GPUs, else one per CPU; never more actors than blocks of work; the cluster's CPUs
    (and GPUs) shared out among them, so that every actor can start."""
    resources = ray.cluster_resources()
    cpus = max(1.0, float(resources.get("CPU", 1)))
    gpus = float(resources.get("GPU", 0))
    workers = requested or int(gpus or cpus)
    workers = max(1, min(workers, blocks))
    gpu_share = min(1.0, gpus / workers) if gpus else 0.0
    return workers, cpus / workers, gpu_share


@dataclass
class PendingRun:
    """What the explain command has settled before running: the model, what to explain, where
    to write, and which images are left (``keys``: image -> its resolved path, the record key)."""

    explainer: object
    targets: list
    listed: int
    method: str
    settings: str
    out: Path
    results: object
    names: dict
    keys: dict
    pending: list
    total: int
    skipped: int
    print_lines: bool

    @property
    def layout(self) -> str:
        return self.explainer.layout

    @property
    def labels(self):
        return self.explainer.labels


def explain_on_ray(args, run: PendingRun) -> int:
    """Explain ``run.pending`` on Ray and write what the single-process loop writes; returns the
    exit code (7 where some images failed, as the local engine)."""
    from sglrp_onnx.cli.explain import progress_bar
    from sglrp_onnx.distributed import explain_dataset

    written = failures = workers = 0
    with progress_bar(run.total, run.skipped, enabled=not args.quiet) as bar:
        if run.pending:
            ray = init_ray(args.address)
            items = [{"image": run.keys[p], "path": run.keys[p]} for p in run.pending]
            # blocks of about one batch each: Ray hands whole blocks to actors, so one block = one actor busy
            blocks = -(-len(items) // args.batch_size)
            workers, cpus, gpus = worker_shares(ray, args.num_workers, blocks)
            explained = explain_dataset(
                run.explainer,
                ray.data.from_items(items, override_num_blocks=blocks),
                targets=None if args.top_k else run.targets,
                top_k=args.top_k,
                fit=args.fit,
                batch_size=args.batch_size,
                num_workers=workers,
                num_cpus_per_worker=cpus,
                num_gpus_per_worker=gpus,
                keep_pixels=True,
            )
            parquet = ParquetWriter(run.out) if args.format == "parquet" else None
            for batch in explained.iter_batches(batch_size=args.batch_size, batch_format="numpy"):
                ok, bad = _write_batch(batch, run, parquet, bar)
                written, failures = written + ok, failures + bad
                if failures:
                    bar.set_postfix(failed=failures, refresh=False)
                bar.update(ok + bad)
    print(
        f"explained {written} image(s), skipped {run.skipped} already done, {failures} failed; "
        f"results in {run.results.path} (Ray: {workers} worker(s))"
    )
    return InputError.exit_code if failures else 0


def _write_batch(batch: dict, run, parquet, bar) -> tuple[int, int]:
    """PNGs, results.jsonl lines (and a Parquet file) for one batch of rows from the workers."""
    from sglrp_onnx.cli.explain_output import error_record, image_record, write_image

    part = parquet.new_part() if parquet else None
    maps, written, failed = [], 0, 0
    for i, key in enumerate(batch["path"]):
        key = str(key)
        if batch["error"][i]:
            failed += 1
            run.results.append(error_record(key, run.settings, batch["error"][i]))
            bar.write(f"warning: {batch['error'][i]}", file=sys.stderr)
            continue
        runs = _runs_of_row(batch, i, run)
        name = run.names[key]
        explanations = write_image(run.out, name, 0, batch["pixels"][i], runs, run.method, run.layout)
        if part:
            for entry in explanations:
                entry["files"]["parquet"] = part
                maps.append((key, name, entry, _relevance_for(batch, i, entry["explained_class"])))
        top = next(iter(runs.values()))[run.method].top_k(run.listed)[0]
        record = image_record(key, name, run.settings, run.method, str(batch["provider"][i]), top, explanations)
        run.results.append(record)
        written += 1
        if run.print_lines:
            best = record["predictions"][0]
            files = ", ".join(str(run.out / e["files"]["overlay"]) for e in explanations)
            bar.write(f"{key}: {best['label']} ({best['class']}) p={best['probability']:.3f} -> {files}", file=sys.stdout)
    if part and maps:
        parquet.write(part, maps)
    return written, failed


def _runs_of_row(batch: dict, i: int, run) -> dict:
    """``{target or rank: {method: Explanation}}`` for row ``i``, as the local loop has per batch."""
    from sglrp_onnx.runtime import Explanation, softmax

    logits = batch["logits"][i][None].astype(np.float32)
    probabilities = softmax(logits)
    runs = {}
    for j, target in enumerate(batch["targets"][i]):
        runs[int(target)] = {
            run.method: Explanation(
                logits=logits,
                probabilities=probabilities,
                explained_class=batch["explained_class"][i][j : j + 1],
                relevance=batch["relevance"][i][j : j + 1],
                targets=np.asarray([target], np.int64),
                layout=run.layout,
                labels=run.labels,
            )
        }
    return runs


def _relevance_for(batch: dict, i: int, cls: int) -> np.ndarray:
    j = int(np.flatnonzero(batch["explained_class"][i] == cls)[0])
    return batch["relevance"][i][j]


class ParquetWriter:
    """``OUT/relevance/part-*.parquet``: one file per batch, one row per (image, explained class)
    with columns image, name, target, explained_class and relevance (an Arrow fixed-shape tensor,
    float32, the model's layout). Each file is written to a temporary name and renamed."""

    def __init__(self, out: Path):
        self.folder = Path(out) / PARQUET_FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)

    def new_part(self) -> str:
        """A new file name, relative to OUT (the results lines name it before it is written)."""
        return f"{PARQUET_FOLDER}/part-{uuid.uuid4().hex[:16]}.parquet"

    def write(self, part: str, maps: list) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        relevance = np.stack([m[3] for m in maps]).astype(np.float32, copy=False)
        table = pa.table(
            {
                "image": [m[0] for m in maps],
                "name": [m[1] for m in maps],
                "target": pa.array([m[2]["target"] for m in maps], pa.int64()),
                "explained_class": pa.array([m[2]["explained_class"] for m in maps], pa.int64()),
                "relevance": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(relevance)),
            }
        )
        target = self.folder.parent / part
        temp = target.with_name(f".{target.name}.tmp")
        try:
            pq.write_table(table, temp)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
