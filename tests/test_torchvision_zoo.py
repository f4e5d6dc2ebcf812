"""Architecture coverage on torchvision's zoo (random weights): each model converts, runs, keeps
its outputs, and explains.

The numerical oracles are the float64 reference and Zennit (other test files); this file guards
the operator coverage real exporters produce: squeeze-excitation and SiLU gates (Mul by a gate
computed from the tensor), Hardswish/Hardsigmoid, channel splits written as Slice with bounds
computed at run time (ShuffleNet), Concat fan-outs (SqueezeNet, GoogLeNet), grouped convolutions
(ResNeXt, RegNet).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime")

import sglrp_onnx  # noqa: E402
from sglrp_onnx.runtime_rules import cuda_fallbacks  # noqa: E402

pytestmark = pytest.mark.torch

MODELS = ["squeezenet1_1", "shufflenet_v2_x0_5", "mobilenet_v3_small", "efficientnet_b0", "googlenet",
          "regnet_y_400mf", "mnasnet0_5"]


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_converts_and_explains(tmp_path, name):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(num_classes=10, **kwargs).eval()
    x = torch.rand(2, 3, 96, 96)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["scores"], dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}})
    # A tiny epsilon / stabiliser keeps relevance from being absorbed by the stabilisers of this
    # randomly initialised net, so the LRP-epsilon conservation check below is meaningful.
    converted = sglrp_onnx.convert(path, method="lrp", composite="epsilon", epsilon=1e-12, stabilizer=1e-12)
    # SPEC section 8: no float node of the relevance part would run on the CPU under CUDA
    assert cuda_fallbacks(converted, prefix="sglrp/") == []
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"image": x.numpy(), "target": np.array([-1, 3], np.int64)})))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert out["explained_class"].tolist() == [int(expected[0].argmax()), 3]
    relevance = out["relevance"]
    assert relevance.shape == tuple(x.shape) and np.isfinite(relevance).all()
    assert np.abs(relevance).max() > 0
    # Conservation does not hold exactly with biases, but the relevance must stay of the size of
    # the explained logit rather than vanish or explode.
    z_t = out["logits"][np.arange(2), out["explained_class"]]
    totals = relevance.reshape(2, -1).sum(axis=1)
    assert np.all(np.abs(totals) < 100 * np.abs(z_t) + 1e-6), (totals, z_t)
