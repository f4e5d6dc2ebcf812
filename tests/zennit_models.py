"""Torch test models and Zennit helpers for the Zennit cross-check (tests/test_zennit.py).

Everything here needs torch, torchvision and zennit; test_zennit.py skips at module level when they are
missing (CI installs them, so the suite runs there).

Two worlds meet here:

* the *original* torch model: what gets exported to ONNX (with both torch exporters) and converted by
  ``sglrp_onnx.convert``; it is written the way people write models (``x + y`` residuals, functional
  pooling, BatchNorm after and before convolutions);
* the *Zennit side*: a float64 twin of that model with the same weights, rewritten only where Zennit's
  module hooks cannot see an operation (SPEC section 6), plus a composite that mirrors the engine's
  rule choice (SPEC sections 4 and 5) and the canonizer that folds exactly the BatchNorms the engine
  folds (those that directly follow a convolution); every other BatchNorm gets Zennit's ``Epsilon``
  with the stabiliser (SPEC section 5: the epsilon rule of its affine map; Zennit's own default
  for BatchNorm is ``Pass``).

The initial relevance at the logits (SPEC section 3) is built here from the float64 logits and given to
Zennit as the output gradient; the methods' target and dual parts are propagated separately (in one
batch) and combined afterwards, so Zennit only ever propagates a given vector.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torchvision
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import CompositeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, SpecialFirstLayerMapComposite, layer_map_base
from zennit.layer import Sum
from zennit.rules import Epsilon, ZBox, ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer
from zennit.types import Convolution

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 10

# Per-channel ImageNet bounds: the lowest/highest value a [0, 1] pixel can take after normalisation.
LOW = [(0.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
HIGH = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]

EPSILON = 1e-6
STABILIZER = 1e-6
GAMMA = 0.25


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------


class VGGStyle(nn.Module):
    """Small VGG-style net: conv-BN-ReLU blocks, max pooling (plain and overlapping), average pooling,
    ``x.view(x.size(0), -1)`` (a Shape/Gather subgraph in the TorchScript exporter), dropout and two
    dense layers."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 8 * 8, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: optional 1x1 expansion, 3x3 depthwise conv, 1x1 projection, each with BN,
    ReLU6 after the first two, and a residual add where shapes allow.

    ``zennit_sum`` switches the residual add from ``x + out`` (the original, exported) to zennit's
    ``Sum`` module over a stacked pair (the twin), which computes the same numbers but is a module
    that Zennit can attach its ``Norm`` rule to."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout
        self.sum = Sum()
        self.zennit_sum = False

    def forward(self, x):
        out = self.block(x)
        if not self.use_residual:
            return out
        if self.zennit_sum:
            return self.sum(torch.stack([x, out], dim=-1))
        return x + out


class MobileNetV2Style(nn.Module):
    """Small MobileNetV2-style net: depthwise convolutions, ReLU6, residual adds, global average pooling
    written as ``x.mean((2, 3))`` (ReduceMean in ONNX), dropout and a dense head.

    ``zennit_twin`` makes the adds go through ``Sum`` modules and the pooling through an
    ``AdaptiveAvgPool2d`` module."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            InvertedResidual(24, 32, 2, 4),
            InvertedResidual(32, 32, 1, 4),
        )
        self.head = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(64, num_classes)
        self.twin = False

    def make_twin(self) -> None:
        self.twin = True
        for module in self.modules():
            if isinstance(module, InvertedResidual):
                module.zennit_sum = True

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        if self.twin:
            x = torch.flatten(self.pool(x), 1)
        else:
            x = x.mean((2, 3))
        return self.classifier(self.dropout(x))


class DenseNetTwin(nn.Module):
    """torchvision DenseNet with its functional tail (``F.relu``, ``F.adaptive_avg_pool2d``) replaced by
    modules, so that Zennit applies ``Pass`` to the ReLU and ``Norm`` to the pooling."""

    def __init__(self, densenet: torchvision.models.DenseNet):
        super().__init__()
        self.features = densenet.features
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = densenet.classifier

    def forward(self, x):
        x = self.pool(self.relu(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random statistics and affine parameters (trained-model-like, not identity)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                module.weight.copy_(0.6 + 0.8 * torch.rand(c, generator=generator))
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))


def build_model(name: str, seed: int = 0) -> nn.Module:
    """The original (exported) float32 model, random weights, random BN statistics, eval mode."""
    torch.manual_seed(seed)
    if name == "vgg":
        model = VGGStyle()
    elif name == "resnet18":
        model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES)
    elif name == "densenet121":
        model = torchvision.models.densenet121(weights=None, num_classes=NUM_CLASSES)
    elif name == "mobilenetv2":
        model = MobileNetV2Style()
    else:
        raise ValueError(name)
    generator = torch.Generator().manual_seed(seed + 1)
    randomize_batchnorm(model, generator)
    with torch.no_grad():
        if name in ("vgg", "mobilenetv2"):
            # He init (as torchvision does) keeps activations O(1) through the depth, so that the
            # stabiliser (1e-6) stays small against the layer outputs.
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
                    if module.bias is not None:
                        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        # torchvision zero-initialises some biases; make them random so that biases matter.
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


# input sizes: small enough for a CPU test run, large enough that every stage keeps >= 1x1 pixels
INPUT_SIZE = {"vgg": 64, "resnet18": 64, "densenet121": 32, "mobilenetv2": 64}


#: attribute set on a BatchNorm module while a canonizer has merged it into its convolution
MERGED = "_sglrp_merged_into_linear"


class _ExactIdentityAfterMerge:
    """zennit's MergeBatchNorm folds a BN into the preceding layer and turns the BN into an "identity"
    (mean 0, var 1, weight 1, bias 0) but keeps its ``eps``, so the BN still scales by 1/sqrt(1 + eps)
    (1e-5 by default: a 5e-6 relative change per BN, 2e-4 on ResNet-18's logits).  The engine removes a
    folded BN entirely, so set eps to 0 while merged, which makes the BN an exact identity."""

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.saved_eps = batch_norm.eps
        batch_norm.eps = 0.0
        setattr(batch_norm, MERGED, True)  # make_composite leaves merged BNs to the base composite

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.saved_eps
        delattr(self.batch_norm, MERGED)


class ExactSequentialMergeBatchNorm(_ExactIdentityAfterMerge, SequentialMergeBatchNorm):
    """SequentialMergeBatchNorm whose merged BNs are exact identities."""


class ExactNamedMergeBatchNorm(_ExactIdentityAfterMerge, NamedMergeBatchNorm):
    """NamedMergeBatchNorm whose merged BNs are exact identities."""


def densenet_bn_pairs(model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
    """The conv/BN pairs of a torchvision DenseNet where the BN directly follows the conv.

    DenseNet puts BN *before* its convolutions (norm1 -> relu1 -> conv1, transition norm -> conv,
    norm5 after the last concat); only conv0 -> norm0 and each dense layer's conv1 -> norm2 are
    conv-then-BN.  zennit's SequentialMergeBatchNorm pairs by module order and would also merge e.g.
    the last dense layer's conv2 with the next transition's BN, which is wrong (that BN reads the
    concatenation)."""
    pairs = []
    names = dict(model.named_modules())
    for name in names:
        if name.endswith("features.conv0"):
            pairs.append(((name,), name[: -len("conv0")] + "norm0"))
        elif name.endswith(".conv1") and "denselayer" in name:
            pairs.append(((name,), name[: -len("conv1")] + "norm2"))
    for linears, bn in pairs:
        assert bn in names and all(n in names for n in linears), (linears, bn)
    return pairs


def build_twin(name: str, model: nn.Module) -> tuple[nn.Module, callable]:
    """Float64 Zennit twin of ``model`` (same weights) and a factory of fresh canonizer lists.

    The canonizers fold the BNs the engine folds (SPEC section 5): those directly after a conv."""
    twin = copy.deepcopy(model).double().eval()
    if name == "vgg":
        return twin, lambda: [ExactSequentialMergeBatchNorm()]
    if name == "resnet18":
        # What zennit's ResNetCanonizer does: SequentialMergeBatchNorm (right for ResNet: every BN
        # directly follows its conv, the downsample branch included) + a Sum module for every
        # BasicBlock's add (the block's forward is replaced by one that stacks and sums).
        return twin, lambda: [CompositeCanonizer([ExactSequentialMergeBatchNorm(), ResNetBasicBlockCanonizer()])]
    if name == "mobilenetv2":
        twin.make_twin()
        return twin, lambda: [ExactSequentialMergeBatchNorm()]
    if name == "densenet121":
        twin = DenseNetTwin(twin).double().eval()
        pairs = densenet_bn_pairs(twin)
        assert len(pairs) == 1 + 58, len(pairs)  # conv0/norm0 + one pair per dense layer (6+12+24+16)
        return twin, lambda: [ExactNamedMergeBatchNorm(pairs)]
    raise ValueError(name)


def make_input(name: str, batch: int, seed: int = 123) -> torch.Tensor:
    """Random images in [0, 1], ImageNet-normalised (so they lie inside the zbox bounds), float32."""
    size = INPUT_SIZE[name]
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: torch.Tensor, dynamo: bool):
    """Export ``model`` with a dynamic batch axis; returns an onnx.ModelProto."""
    import io

    import onnx

    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    return onnx.load_from_string(buffer.getvalue())


# ----------------------------------------------------------------------------------------------------
# Zennit side
# ----------------------------------------------------------------------------------------------------


def make_composite(
    composite: str,
    low: torch.Tensor,
    high: torch.Tensor,
    canonizers: list,
    stabilizer=STABILIZER,
    epsilon=EPSILON,
    gamma=GAMMA,
):
    """Zennit composite matching ``sglrp_onnx``'s composite of the same name (SPEC section 4), with
    ``Epsilon(stabilizer)`` on the BatchNorms that no canonizer merged (SPEC section 5)."""
    return standalone_batchnorm_epsilon(
        _base_composite(composite, low, high, canonizers, stabilizer, epsilon, gamma), stabilizer)


def standalone_batchnorm_epsilon(comp, stabilizer):
    """Give every BatchNorm that is not merged into a convolution Zennit's ``Epsilon`` with the
    stabiliser, the rule SPEC section 5 gives it (the built-in composites give BatchNorm ``Pass``).

    Zennit applies the canonizers before it maps modules to rules, so the merged BNs are known
    (flagged with ``MERGED``) when the map runs; they keep the base composite's rule (an exact
    identity then, so ``Pass``)."""
    base = comp.module_map

    def module_map(ctx, name, module):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not getattr(module, MERGED, False):
            return Epsilon(epsilon=stabilizer)
        return base(ctx, name, module)

    comp.module_map = module_map
    return comp


def _base_composite(composite, low, high, canonizers, stabilizer, epsilon, gamma):
    if composite == "dtd":
        # zbox for the first conv, zplus for the other convs *and* the dense layers; activations
        # pass, average pooling and Sum get Norm (layer_map_base).
        layer_map = layer_map_base(stabilizer) + [
            (Convolution, ZPlus(stabilizer=stabilizer)),
            (nn.Linear, ZPlus(stabilizer=stabilizer)),
        ]
        first_map = [(Convolution, ZBox(low=low, high=high, stabilizer=stabilizer))]
        return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map, canonizers=canonizers)
    if composite == "epsilon-gamma-box":
        return EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer, canonizers=canonizers
        )
    if composite == "epsilon-plus-flat":
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    raise ValueError(composite)


def bounds_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.tensor(LOW, dtype=x.dtype).view(1, 3, 1, 1).expand_as(x).clone()
    high = torch.tensor(HIGH, dtype=x.dtype).view(1, 3, 1, 1).expand_as(x).clone()
    return low, high


def zennit_propagate(twin, canonizer_factory, composite: str, x64: torch.Tensor, r0: torch.Tensor, z=None, **params):
    """Propagate the given initial relevance ``r0`` [N, K] (at the logits) down to the input.

    If the logits ``z`` of the plain twin are given, check that the canonized twin (BN folded, Sum
    modules in place) still computes them: a BN merged into the wrong layer changes the function.
    ``params``: stabilizer, epsilon, gamma (the module's defaults otherwise)."""
    low, high = bounds_like(x64)
    comp = make_composite(composite, low, high, canonizer_factory(), **params)
    with Gradient(model=twin, composite=comp) as attributor:
        output, relevance = attributor(x64.clone(), r0)
    if z is not None:
        err = (output.detach() - z).abs().max().item()
        tol = 1e-9 if z.dtype == torch.float64 else 1e-5
        assert err <= tol * max(1.0, z.abs().max().item()), f"canonized twin changed the logits by {err}"
    return relevance.detach()


def initial_relevance(z: torch.Tensor, targets: torch.Tensor, method: str, contrast: str | None):
    """Initial relevance vectors at the logits (SPEC section 3), in z's dtype.

    Returns ``[r0]`` for single-pass methods, ``[r_target, r_dual]`` for the ``scaled`` contrast."""
    n, k = z.shape
    onehot = torch.zeros_like(z)
    onehot[torch.arange(n), targets] = 1.0
    zt = z[torch.arange(n), targets].unsqueeze(1)
    if method == "lrp":
        return [onehot * zt]
    if method == "sglrp":
        y = torch.softmax(z, dim=1)
        yt = y[torch.arange(n), targets].unsqueeze(1)
        one_minus_yt = (y * (1 - onehot)).sum(1, keepdim=True)
        target_part = onehot * yt * one_minus_yt
        dual_part = (1 - onehot) * yt * y  # the non-target entries with positive sign
        if contrast == "signed":
            return [target_part - dual_part]
        if contrast == "scaled":
            return [target_part, dual_part]
    if method == "clrp":
        target_part = onehot * zt
        dual_part = (1 - onehot) * zt / (k - 1)
        if contrast == "signed":
            return [target_part - dual_part]
        if contrast == "scaled":
            return [target_part, dual_part]
    raise ValueError((method, contrast))


def combine_scaled(a_t: torch.Tensor, a_d: torch.Tensor) -> torch.Tensor:
    """relevance = A_t - A_d * sum(A_t) / sum(A_d) per image; A_t where sum(A_d) is ~0 (SPEC section 3)."""
    axes = tuple(range(1, a_t.ndim))
    s_t = a_t.sum(axes, keepdim=True)
    s_d = a_d.sum(axes, keepdim=True)
    degenerate = s_d.abs() <= 1e-12 * a_d.abs().sum(axes, keepdim=True) + torch.finfo(a_d.dtype).tiny
    ratio = torch.where(degenerate, torch.zeros_like(s_t), s_t / torch.where(degenerate, torch.ones_like(s_d), s_d))
    return a_t - a_d * ratio


def zennit_relevance(twin, canonizer_factory, composite, x64, targets, method, contrast, **params):
    """Zennit's relevance for (method, contrast, composite), float64, and the float64 logits."""
    with torch.no_grad():
        z = twin(x64)
    parts = [
        zennit_propagate(twin, canonizer_factory, composite, x64, r0, z, **params)
        for r0 in initial_relevance(z, targets, method, contrast)
    ]
    if len(parts) == 1:
        return parts[0], z
    return combine_scaled(*parts), z


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def zennit_all_methods(twin, canonizer_factory, composite, x64, targets, **params):
    """Zennit's relevance for every (method, contrast) the tests use, from one batched Zennit run.

    Propagation is linear in the initial relevance once the forward pass is fixed (SPEC section 3), so
    the four distinct initial vectors (lrp = clrp's target part, sglrp's target and dual parts, clrp's
    dual part) are propagated together as one batch of 4N, and the methods are combined from them:
    signed = target part - dual part, scaled = combine_scaled(target part, dual part)."""
    with torch.no_grad():
        z = twin(x64)
    (lrp,) = initial_relevance(z, targets, "lrp", None)
    sg_t, sg_d = initial_relevance(z, targets, "sglrp", "scaled")
    cl_t, cl_d = initial_relevance(z, targets, "clrp", "scaled")
    assert torch.equal(cl_t, lrp)
    n = x64.shape[0]
    batch = torch.cat([x64] * 4)
    relevance = zennit_propagate(
        twin, canonizer_factory, composite, batch, torch.cat([lrp, sg_t, sg_d, cl_d]), torch.cat([z] * 4), **params
    )
    p_lrp, p_sg_t, p_sg_d, p_cl_d = (relevance[i * n : (i + 1) * n] for i in range(4))
    return {
        ("lrp", None): p_lrp,
        ("sglrp", "signed"): p_sg_t - p_sg_d,
        ("sglrp", "scaled"): combine_scaled(p_sg_t, p_sg_d),
        ("clrp", "signed"): p_lrp - p_cl_d,
        ("clrp", "scaled"): combine_scaled(p_lrp, p_cl_d),
    }
