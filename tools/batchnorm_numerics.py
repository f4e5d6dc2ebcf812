"""Measure how large LRP relevance grows on CNNs with standalone BatchNormalization (SPEC section 5).

For timm's densenet121, dpn68 and repvgg_a0 (random weights, BatchNorm statistics re-estimated on a
few random batches in train mode, so logits are not vanishingly small), exported with the
TorchScript exporter at 224x224, this converts

- ``--method lrp --composite epsilon`` with standalone BatchNorms on the epsilon rule of their affine
  map (the default since 2026-12) and, for comparison, with the override ``BatchNormalization: pass``
  (Zennit's default rule, the engine's before);
- the default composite (dtd, imagenet bounds), sglrp and lrp,

runs each on a few random ImageNet-normalised images and prints sum(relevance) / logit and max|R|
(LRP-epsilon with epsilon 1e-6 is nearly conservative, so that ratio is the growth), whether the
map is finite, and for the default composite the largest |relevance| any layer hands on. docs/design.md ("Numerics") quotes its output. Not part of ``make test``
(it needs timm: ``pip install --no-deps timm huggingface_hub safetensors pyyaml``).

    python tools/batchnorm_numerics.py [--models densenet121,dpn68,repvgg_a0] [--size 224] [--no-offsets]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def calibrated_model(name: str, size: int, batches: int = 3, batch: int = 4):
    """timm model with random weights whose BatchNorm statistics come from random inputs."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, size, size, generator=generator))
    return model.eval()


def remove_offsets(model) -> None:
    """Zero every bias and every BatchNorm offset (beta = mean * gamma / sqrt(var + eps), so that
    BN is y = a*x): LRP-epsilon is then conservative up to its stabiliser, which separates the
    growth that biases cause (the rule's) from any other."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.bias.copy_(module.running_mean * module.weight / torch.sqrt(module.running_var + module.eps))
            elif getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
                module.bias.zero_()


def export(model, size: int, path: str) -> None:
    import torch

    x = torch.randn(1, 3, size, size)
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})


def images(size: int, count: int = 2) -> np.ndarray:
    rng = np.random.default_rng(7)
    pixels = rng.uniform(0, 1, (count, 3, size, size))
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)


def largest_intermediate(model, x: np.ndarray) -> float:
    """Largest |value| of every relevance tensor of the relevance part (the tensors each layer's
    rule hands to the layer below, named ``sglrp/r_*``), not only the final map."""
    import onnx
    import onnxruntime as ort

    names = [out for node in model.graph.node for out in node.output if out.startswith("sglrp/r_")]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {"image": x[:1], "target": np.full(1, -1, np.int64)})
    return max(float(np.abs(v).max()) if np.isfinite(v).all() else float("inf") for v in values)


def measure(path: str, x: np.ndarray, label: str, intermediate: bool = False, **options) -> None:
    import onnxruntime as ort

    import sglrp_onnx

    model = sglrp_onnx.convert(path, **options)
    if intermediate:
        print(f"  {label:42s} image 0: largest |relevance| of any layer {largest_intermediate(model, x):.4g}", flush=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    relevance, logits, explained = session.run(["relevance", "logits", "explained_class"],
                                               {"image": x, "target": np.full(len(x), -1, np.int64)})
    for i in range(len(x)):
        logit = float(logits[i, explained[i]])
        total = float(relevance[i].astype(np.float64).sum())
        finite = bool(np.isfinite(relevance[i]).all())
        print(f"  {label:42s} image {i}: logit {logit:10.4g}  sum(R)/logit {total / logit:11.4g}  "
              f"max|R| {np.abs(relevance[i]).max():10.4g}  finite {finite}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="densenet121,dpn68,repvgg_a0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-offsets", action="store_true", help="zero all biases and BatchNorm offsets first")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    x = images(args.size)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            path = os.path.join(folder, f"{name}.onnx")
            model = calibrated_model(name, args.size)
            if args.no_offsets:
                remove_offsets(model)
            export(model, args.size, path)
            print(f"{name} ({args.size}x{args.size}){' without biases' if args.no_offsets else ''}", flush=True)
            measure(path, x, "lrp epsilon (BatchNorm: epsilon rule)", method="lrp", composite="epsilon")
            measure(path, x, "lrp epsilon (BatchNorm: pass)", method="lrp", composite="epsilon",
                    rules={"BatchNormalization": "pass"})
            measure(path, x, "lrp dtd imagenet", method="lrp", preset="imagenet", intermediate=True)
            measure(path, x, "sglrp dtd imagenet", preset="imagenet", intermediate=True)
            measure(path, x, "sglrp dtd imagenet (BatchNorm: pass)", preset="imagenet",
                    rules={"BatchNormalization": "pass"})


if __name__ == "__main__":
    main()
