"""Explain photos with an augmented model served by Triton Inference Server (gRPC client example).

Serve a model first (``sglrp-onnx triton-repo MODEL repo`` and the ``tritonserver`` container, see
docs/scaling.md), then::

    pip install 'tritonclient[grpc]'
    python tools/triton_client.py --url localhost:8001 --model resnet50 cat.jpg cup.png --target 285 --out triton-out

The client reads everything it needs from the server's model config (``get_model_config``): the
contract's tensor names, the preprocessing preset, the layout and the input size, which
``triton-repo`` records there. Photos are prepared by the project's own preprocessing (the same
code as ``sglrp-onnx explain``), sent with their targets (-1: the predicted class) in requests of
at most ``max_batch_size`` images, and each answer is written as heatmap and overlay PNGs plus a
JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

from sglrp_onnx import metadata  # noqa: E402
from sglrp_onnx.heatmap import heatmap, overlay, save_png  # noqa: E402
from sglrp_onnx.presets import get_preset  # noqa: E402
from sglrp_onnx.runtime import Preprocessing  # noqa: E402

#: Triton data type names (model config) -> numpy dtypes, for the inputs this client sends.
NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64}


@dataclass(frozen=True)
class ServedModel:
    """What the client needs to know about a served augmented model (from its Triton config)."""

    name: str
    image_input: str
    target_input: str
    logits_output: str
    explained_output: str
    relevance_output: str
    preset: str
    layout: str
    size: tuple[int, int]
    image_dtype: type
    max_batch_size: int

    @classmethod
    def from_config(cls, config: dict, preset: str | None = None) -> "ServedModel":
        """From a model config as JSON (``get_model_config(name, as_json=True)["config"]``)."""
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

        def name_of(key: str, default: str) -> str:
            return params.get(key) or default

        image = name_of(metadata.IMAGE_INPUT, "")
        inputs = {i["name"]: i for i in config["input"]}
        if image not in inputs:
            floats = [n for n, i in inputs.items() if i["data_type"] in ("TYPE_FP32", "TYPE_FP16")]
            if len(floats) != 1:
                raise SystemExit("error: the model config does not say which input is the image")
            image = floats[0]
        preset = preset or params.get(metadata.PRESET)
        if not preset:
            raise SystemExit("error: the served model records no preprocessing preset: give --preset")
        layout = params.get(metadata.LAYOUT) or "NCHW"
        max_batch = int(config.get("max_batch_size", 0))
        dims = [int(d) for d in inputs[image]["dims"]]
        spatial = dims if max_batch > 0 else dims[1:]  # without batching the dims include the batch axis
        h, w = (spatial[1], spatial[2]) if layout == "NCHW" else (spatial[0], spatial[1])
        if h < 1 or w < 1:
            raise SystemExit("error: the served model's input size is dynamic; this example needs a fixed one")
        return cls(
            name=config["name"],
            image_input=image,
            target_input=name_of(metadata.TARGET_INPUT, "target"),
            logits_output=name_of(metadata.LOGITS_OUTPUT, "logits"),
            explained_output=name_of(metadata.EXPLAINED_CLASS_OUTPUT, "explained_class"),
            relevance_output=name_of(metadata.RELEVANCE_OUTPUT, "relevance"),
            preset=preset,
            layout=layout,
            size=(h, w),
            image_dtype=NUMPY_TYPES.get(inputs[image]["data_type"], np.float32),
            max_batch_size=max_batch,
        )

    def preprocessing(self, fit: str = "crop") -> Preprocessing:
        """The ``explain`` command's preprocessing (:class:`sglrp_onnx.runtime.Preprocessing`) for it."""
        return Preprocessing(get_preset(self.preset), self.size, self.layout, np.dtype(self.image_dtype).name, fit)


def served_model(client, model: str, preset: str | None = None) -> ServedModel:
    """The :class:`ServedModel` of ``model`` on a ``tritonclient.grpc.InferenceServerClient``."""
    return ServedModel.from_config(client.get_model_config(model, as_json=True)["config"], preset)


def infer(client, served: ServedModel, x: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Logits, explained classes and relevance for a preprocessed batch, in requests of at most
    ``max_batch_size`` images (one request without batching; ``targets``: int64 ``[N]``)."""
    import tritonclient.grpc as grpcclient

    step = served.max_batch_size or len(x)
    names = (served.logits_output, served.explained_output, served.relevance_output)
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(x), step):
        xs = np.ascontiguousarray(x[start : start + step])
        ts = targets[start : start + step].astype(np.int64)
        if served.max_batch_size:  # declared dims [1] + reshape to a scalar (triton-repo): send [n, 1]
            ts = ts.reshape(-1, 1)
        inputs = [
            grpcclient.InferInput(served.image_input, list(xs.shape), "FP16" if xs.dtype == np.float16 else "FP32"),
            grpcclient.InferInput(served.target_input, list(ts.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(xs)
        inputs[1].set_data_from_numpy(ts)
        outputs = [grpcclient.InferRequestedOutput(name) for name in names]
        result = client.infer(served.name, inputs, outputs=outputs)
        for name in names:
            pieces[name].append(result.as_numpy(name))
    merged = {name: np.concatenate(parts) for name, parts in pieces.items()}
    merged[served.explained_output] = merged[served.explained_output].reshape(-1)
    merged[served.logits_output] = merged[served.logits_output].reshape(len(x), -1)
    return merged


def explain_photos(client, model: str, photos, targets=None, *, preset=None, fit="crop"):
    """``(served, pixels, outputs)`` for photo files; ``targets``: class indices, one or one per photo."""
    served = served_model(client, model, preset)
    x, pixels = served.preprocessing(fit)(photos)
    wanted = np.full(len(photos), -1, np.int64) if targets is None else np.broadcast_to(np.asarray(targets, np.int64), (len(photos),))
    return served, pixels, infer(client, served, x, wanted)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="+", help="image files")
    parser.add_argument("--url", default="localhost:8001", help="Triton's gRPC address (default localhost:8001)")
    parser.add_argument("--model", required=True, help="the model's name in the repository")
    parser.add_argument("--target", type=int, default=-1, help="class to explain (default -1: the predicted class)")
    parser.add_argument("--preset", help="preprocessing preset, where the server's config records none")
    parser.add_argument("--fit", choices=("crop", "stretch", "pad"), default="crop")
    parser.add_argument("--out", default="triton-out", help="folder for the PNGs (default triton-out)")
    args = parser.parse_args(argv)

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(args.url)
    served, pixels, outputs = explain_photos(client, args.model, args.photos, args.target, preset=args.preset, fit=args.fit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logits = outputs[served.logits_output]
    for i, photo in enumerate(args.photos):
        cls = int(outputs[served.explained_output][i])
        relevance = outputs[served.relevance_output][i]
        stem = f"{Path(photo).stem}.c{cls}"
        save_png(heatmap(relevance, served.layout), out / f"{stem}.heatmap.png")
        save_png(overlay(pixels[i], relevance, served.layout), out / f"{stem}.overlay.png")
        print(json.dumps({"image": photo, "predicted_class": int(np.argmax(logits[i])), "explained_class": cls,
                          "files": [f"{stem}.heatmap.png", f"{stem}.overlay.png"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
