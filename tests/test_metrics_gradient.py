"""The gradient x input baseline (sglrp_onnx.metrics.gradient) against PyTorch autograd on the
same weights: a net with every structure the rewrite relies on (BatchNorm folded into Conv,
ReLU6 with many clipped units, LeakyReLU, depthwise Conv, a residual Add, max and average pooling,
a bias-carrying Linear, in-graph normalisation), exported by both exporters; and the refusal for a smooth activation."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from sglrp_onnx.errors import UnsupportedModelError  # noqa: E402
from sglrp_onnx.metrics.gradient import gradient_explainer, gradient_model  # noqa: E402

pytestmark = pytest.mark.torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6())
        self.depthwise = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.LeakyReLU(0.1))
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(8, 8, 1), torch.nn.Hardtanh(-1.0, 2.0),  # Clip with a non-zero lower bound
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
        )

        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3, 0.25]).reshape(1, 3, 1, 1))

    def forward(self, x):
        h = self.stem((x - self.mean) / self.std)  # in-graph normalisation: Sub and Div of constants
        h = h + self.depthwise(h)
        return self.head(self.pool(h))


def _net(seed=0):
    torch.manual_seed(seed)
    net = Block()
    with torch.no_grad():
        net.stem[0].weight.mul_(12.0)  # many units above 6: the clipping matters
        bn = net.stem[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
    return net.eval()


def _export(net, x, dynamo):
    buffer = io.BytesIO()
    kwargs = dict(input_names=["image"], dynamic_axes={"image": {0: "N"}}) if not dynamo else dict(input_names=["image"])
    torch.onnx.export(net, torch.from_numpy(x), buffer, dynamo=dynamo, opset_version=17 if not dynamo else 18, **kwargs)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", [False, True])
def test_gradient_x_input_equals_autograd(dynamo):
    net = _net()
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    clipped = (net.stem(torch.from_numpy(x)) >= 6).float().mean().item()
    assert clipped > 0.05  # the test is about the clipping
    targets = [1, 3, 4]
    explainer = gradient_explainer(_export(net, x, dynamo), "cpu", cache=False)
    ours = explainer.explain(x, targets).relevance
    inputs = torch.from_numpy(x).requires_grad_(True)
    logits = net(inputs)
    logits[torch.arange(3), torch.tensor(targets)].sum().backward()
    reference = (inputs.grad * inputs).detach().numpy()
    error = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert error < 1e-5, error


def test_plain_lrp0_is_not_the_gradient_with_relu6():
    """Why the rewrite exists: without it, ReLU6's pass rule hands relevance through clipped units."""
    from sglrp_onnx.runtime import Explainer

    net = _net()
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    plain = Explainer(_export(net, x, False), "cpu", method="lrp", composite="epsilon", cache=False,
                      epsilon=1e-20, stabilizer=1e-20, rules={"Add": "zero"})
    inputs = torch.from_numpy(x).requires_grad_(True)
    net(inputs)[0, 2].backward()
    reference = (inputs.grad * inputs).detach().numpy()
    ours = plain.explain(x, [2]).relevance
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) > 1e-2


def test_smooth_activation_is_refused():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    model = _export(net, np.zeros((1, 3, 8, 8), np.float32), False)
    with pytest.raises(UnsupportedModelError, match="Sigmoid|Mul"):
        gradient_model(model)
