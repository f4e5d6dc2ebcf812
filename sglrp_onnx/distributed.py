"""Explain a Ray Dataset of images with a pool of Ray actors, each holding one ONNX Runtime session.

:func:`explain_dataset` is a Ray Data (https://docs.ray.io/en/latest/data/) ``map_batches`` step:
the driver resolves the model once (a plain classifier is converted and cached, as
:class:`~sglrp_onnx.runtime.Explainer` does), puts the augmented model's bytes into Ray's object
store, and a fixed pool of actors (``ActorPoolStrategy``) each opens one
:class:`~sglrp_onnx.runtime.ExplainStep` on them: CUDA where the actor was given a GPU, the CPU
otherwise. Each batch is prepared with the model's :class:`~sglrp_onnx.runtime.Preprocessing` and
explained with :func:`sglrp_onnx.cli.explain.explain_batch`, the code the single-process
``explain`` command runs, so both give the same maps.

Fault tolerance is Ray Data's: an actor whose process dies is restarted and its unfinished batch
is run again (its defaults for actor pools: ``max_restarts=-1``, ``max_task_retries=-1``, i.e.
without limit), so every image appears once in the output. A batch that kills its worker every
time (say, out of memory) is therefore retried for ever: watch the Ray dashboard on long runs.
An image that cannot be read is not fatal: its row carries the message in ``error`` and zeros.

Needs the ``ray`` extra (``pip install 'sglrp-onnx[ray,cpu]'`` or ``'[ray,gpu]'``)::

    import ray
    from sglrp_onnx.distributed import explain_dataset

    ds = ray.data.read_images("s3://bucket/photos/", include_paths=True, mode="RGB")
    explained = explain_dataset("resnet50.onnx", ds, preset="imagenet", targets=None, num_workers=4)
    explained.write_parquet("s3://bucket/relevance/")
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sglrp_onnx.errors import InputError, SglrpError, UsageError
from sglrp_onnx.runtime.inputs import Preprocessing

#: Set to a file path, this makes the first batch of one worker end its process (os._exit) after
#: creating the file: the fault-tolerance tests use it to check that Ray's retry loses nothing.
CRASH_ONCE_ENV = "SGLRP_ONNX_TEST_CRASH_ONCE"

#: Columns :func:`explain_dataset` adds to each row.
OUTPUT_COLUMNS = ("error", "provider", "predicted_class", "logits", "targets", "explained_class", "relevance")
RELEVANCE_DTYPES = ("float32", "float16")
#: Models up to this size travel through Ray's object store; larger ones (external data) by path.
MAX_SHIPPED_BYTES = 2**31 - 1


@dataclass(frozen=True)
class ExplainJob:
    """Everything a worker needs, picklable: the model (bytes, an object reference to them, or a
    path every worker can read), its preprocessing, and what to explain.

    Attributes:
        targets: class indices to explain for every image (-1: the predicted class).
        top_k: instead of ``targets``, each image's ``top_k`` most probable classes (rank by rank).
        providers: ``"cuda"`` or ``"cpu"`` for :meth:`ExplainStep.open`.
        dtype: the dtype of the returned relevance (``"float32"`` or ``"float16"``).
        threads: ONNX Runtime intra-op threads per worker (its CPU share).
    """

    model: Any
    preprocessing: Preprocessing
    targets: tuple[int, ...] = (-1,)
    top_k: int | None = None
    image_column: str = "image"
    providers: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    keep_pixels: bool = False


class ExplainWorker:
    """A Ray Data callable class: one ONNX Runtime session, and the explain step on each batch."""

    def __init__(self, job: ExplainJob):
        import onnxruntime as ort
        import ray

        from sglrp_onnx.runtime import ExplainStep

        model = ray.get(job.model) if isinstance(job.model, ray.ObjectRef) else job.model
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = job.threads
        self.job = job
        self.step = ExplainStep.open(model, job.providers, session_options=options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _crash_once_if_asked()
        job = self.job
        values = list(batch[job.image_column])
        labels = _row_labels(batch, len(values))
        photos, kept, errors = [], [], [""] * len(values)
        for index, value in enumerate(values):
            try:
                photos.append(job.preprocessing.fit_one(_decoded(value, labels[index])))
                kept.append(index)
            except SglrpError as error:
                errors[index] = str(error)
        out = {k: v for k, v in batch.items() if k != job.image_column}
        out.update(self._empty(len(values)))
        out["error"] = np.asarray(errors, dtype=object)
        out["provider"] = np.full(len(values), self.step.provider, dtype=object)
        if kept:
            pixels = np.stack(photos)
            self._fill(out, kept, pixels)
        return out

    def _fill(self, out: dict, kept: list[int], pixels: np.ndarray) -> None:
        from sglrp_onnx.cli.explain import explain_batch

        job = self.job
        x = job.preprocessing.normalize(pixels)
        runs = explain_batch(x, {"model": self.step}, "model", list(job.targets), job.top_k)
        results = [by_method["model"] for by_method in runs.values()]
        rows = np.asarray(kept)
        out["predicted_class"][rows] = results[0].predicted_class
        out["logits"][rows] = results[0].logits
        out["targets"][rows] = np.asarray(list(runs), dtype=np.int64)
        for j, result in enumerate(results):
            out["explained_class"][rows, j] = result.explained_class
            out["relevance"][rows, j] = result.relevance.astype(job.dtype, copy=False)
        if job.keep_pixels:
            out["pixels"][rows] = pixels

    def _empty(self, n: int) -> dict[str, np.ndarray]:
        """Output columns for ``n`` rows, zero (or -1) where an image fails."""
        job = self.job
        io_ = self.step.io
        classes = io_.num_classes or 0
        runs = len(job.targets) if not job.top_k else min(job.top_k, classes or job.top_k)
        h, w = job.preprocessing.size
        image_shape = (3, h, w) if io_.layout == "NCHW" else (h, w, 3)
        columns = {
            "predicted_class": np.full(n, -1, np.int64),
            "logits": np.zeros((n, classes), np.float32),
            "targets": np.full((n, runs), -1, np.int64),
            "explained_class": np.full((n, runs), -1, np.int64),
            "relevance": np.zeros((n, runs, *image_shape), job.dtype),
        }
        if job.keep_pixels:
            columns["pixels"] = np.zeros((n, h, w, 3), np.uint8)
        return columns


def _crash_once_if_asked() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: only one process wins
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)


def _row_labels(batch: dict[str, np.ndarray], n: int) -> list[str]:
    """What to call each row in an error message: its path where the dataset has one."""
    paths = batch.get("path")
    if paths is not None:
        return [str(p) for p in paths]
    return [f"row {i} of its batch" for i in range(n)]


def _decoded(value, label: str):
    """An image the preprocessing can fit: a path or array as it is, encoded bytes decoded."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(bytes(value))) as opened:
                opened.load()
                return opened.copy()
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise InputError(f"{label}: not a readable image ({error})") from None
    if isinstance(value, np.ndarray) and value.dtype == object:
        raise InputError(f"{label}: the image column holds a {type(value).__name__} of objects, not pixels")
    return value


# -- the driver --------------------------------------------------------------------------------


def resolve_model(model, *, preset=None, providers="cpu", cache=True, **convert_kwargs):
    """An :class:`~sglrp_onnx.runtime.Explainer` on the driver: converts a plain classifier (cached)
    and reads the model's contract; ``model`` may already be an Explainer."""
    from sglrp_onnx.runtime import Explainer

    if isinstance(model, Explainer):
        return model
    return Explainer(model, providers, preset=preset, cache=cache, **convert_kwargs)


def resolve_targets(explainer, targets) -> tuple[int, ...]:
    """Class indices (-1: predicted) from ``None``, one target or several (indices or names)."""
    from sglrp_onnx.labels import resolve_target

    if targets is None:
        return (-1,)
    items = [targets] if isinstance(targets, (str, int, np.integer)) else list(targets)
    if not items:
        raise UsageError("targets is empty: give None (the predicted class), one target, or several")
    resolved: list[int] = []
    for item in items:
        index = resolve_target(item, explainer.labels, explainer.num_classes)
        if index not in resolved:
            resolved.append(index)
    return tuple(resolved)


def _model_payload(explainer):
    """The augmented model for the workers: its bytes in the object store, or (over 2 GiB, with
    external data) the path of its file, which every node must then be able to read."""
    import ray

    if explainer.model.ByteSize() <= MAX_SHIPPED_BYTES:
        return ray.put(explainer.model.SerializeToString())
    if explainer.model_path is None:
        raise UsageError("a model over 2 GiB must be given as a file (external data) that every Ray node can read")
    return os.fspath(explainer.model_path)


def _gpus_available() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def explain_dataset(
    model,
    dataset,
    *,
    targets=None,
    top_k: int | None = None,
    preset: str | None = None,
    fit: str = "crop",
    size: int | Sequence[int] | None = None,
    image_column: str = "image",
    batch_size: int = 16,
    num_workers: int = 1,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float | None = None,
    dtype: str = "float32",
    keep_pixels: bool = False,
    runtime_env: dict | None = None,
    **convert_kwargs,
):
    """Explain every image of a Ray Dataset; returns a (lazy) Ray Dataset with the results.

    Args:
        model: an augmented model or a plain classifier (path, ``onnx.ModelProto`` or bytes;
            converted on the driver with ``preset`` and ``convert_kwargs``, cached), or an
            :class:`~sglrp_onnx.runtime.Explainer`.
        dataset: a ``ray.data.Dataset`` whose ``image_column`` holds decoded images (uint8
            ``[H, W, 3]`` arrays, as ``ray.data.read_images(..., mode="RGB")`` gives), encoded image
            files (bytes, e.g. a Parquet column or ``read_binary_files``), or paths that every
            worker can read. Other columns (e.g. ``path``) are passed through. Ray hands whole
            blocks to the actors: a dataset of one block keeps one actor busy
            (``from_items(..., override_num_blocks=...)`` or ``repartition`` spread it).
        targets: ``None`` (each image's predicted class), one target, or several (class indices
            or names): every image is explained for each.
        top_k: instead of ``targets``, each image's ``top_k`` most probable classes.
        preset, fit, size: the preprocessing, as in :meth:`Explainer.explain_images`.
        batch_size: images per call of a worker.
        num_workers: actors in the pool (each holds one ONNX Runtime session).
        num_cpus_per_worker: CPUs Ray reserves per actor (also its ONNX Runtime thread count).
            Leave CPUs free for Ray's reading tasks: with every CPU taken by actors, reading stalls.
        num_gpus_per_worker: GPUs per actor (fractions share a GPU); ``None``: 1 where the
            cluster has GPUs, else 0. Actors with a GPU run the CUDA provider (onnxruntime-gpu).
        dtype: ``"float32"`` or ``"float16"`` for the returned relevance (computed in float32).
        keep_pixels: add the fitted photos (``pixels``, uint8 ``[H, W, 3]``) for drawing overlays.
        runtime_env: Ray runtime environment of the actors (e.g. ``{"env_vars": {...}}``).

    Returns:
        A Ray Dataset with the passed-through columns and ``error`` (``""``, or why the image was
        skipped), ``provider`` (the ONNX Runtime provider that ran it), ``predicted_class`` (int64), ``logits`` (float32 ``[K]``), ``targets`` (int64
        ``[T]``: the requested targets, or the ranks with ``top_k``), ``explained_class`` (int64
        ``[T]``) and ``relevance`` (``[T, *image shape]`` in the model's layout).

    Raises:
        UsageError: bad options; the model's own errors as :class:`Explainer` raises them.
    """
    import ray

    if dtype not in RELEVANCE_DTYPES:
        raise UsageError(f"dtype must be float32 or float16, got {dtype!r}")
    for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    if top_k is not None and (top_k < 1 or targets is not None):
        raise UsageError("top_k must be at least 1, and cannot be combined with targets")
    if num_cpus_per_worker <= 0:
        raise UsageError(f"num_cpus_per_worker must be positive, got {num_cpus_per_worker}")
    columns = dataset.columns(fetch_if_missing=False)  # known without running the dataset, or None
    if columns is not None and image_column not in columns:
        raise UsageError(f"the dataset has no column {image_column!r} (columns: {', '.join(columns)})")
    if not ray.is_initialized():
        ray.init()
    gpus = num_gpus_per_worker if num_gpus_per_worker is not None else (1 if _gpus_available() else 0)
    explainer = resolve_model(model, preset=preset, **convert_kwargs)
    job = ExplainJob(
        model=_model_payload(explainer),
        preprocessing=explainer.preprocessing(fit=fit, size=size),
        targets=resolve_targets(explainer, targets) if top_k is None else (-1,),
        top_k=top_k,
        image_column=image_column,
        providers="cuda" if gpus > 0 else "cpu",
        dtype=dtype,
        threads=max(1, int(num_cpus_per_worker)),
        keep_pixels=keep_pixels,
    )
    # Only named map_batches options: Ray Data 2.60 deprecates extra Ray remote arguments (and
    # ray_remote_args_fn), so actor restarts and task retries keep Ray Data's defaults for actor
    # pools (max_restarts=-1, max_task_retries=-1: a dead actor is restarted and its batch rerun).
    return dataset.map_batches(
        ExplainWorker,
        fn_constructor_kwargs={"job": job},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=num_cpus_per_worker,
        num_gpus=gpus,
        runtime_env=runtime_env,
    )
