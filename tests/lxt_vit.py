"""LXT 2.1 as the oracle for vision transformers (SPEC section 7; issue 7, item 2).

LXT (Achtibat et al. 2024, "AttnLRP", ICML; github rachtibat/LRP-eXplains-Transformers) computes LRP
as gradient x input: it patches torchvision's modules so that their gradient *is* the relevance rule
(LayerNorm with sigma detached, attention with query and key detached = CP-LRP of Ali et al. 2022, GELU
with the identity rule) and patches Zennit's hooks to translate between relevance and gradients, so
that Zennit's ``Epsilon`` acts on Conv2d and Linear.  Seeding the backward with R / z at the logits and
reading x * x.grad gives the relevance at the input.

Both LXT's ``monkey_patch`` and ``monkey_patch_zennit`` replace methods of classes that every other
test uses (``torch.nn.LayerNorm.forward``, ``zennit.core.BasicHook.backward``, ...).  ``lxt_patches``
therefore applies them only inside a ``with`` block and puts the original methods back afterwards, so
that the Zennit cross-check and the torch exports elsewhere in the same pytest process are unaffected.
"""

from __future__ import annotations

import contextlib

import torch
import torchvision

IMAGE_SIZE = 32
NUM_CLASSES = 10
VIT_CONFIG = dict(
    image_size=IMAGE_SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
    num_classes=NUM_CLASSES,
)


def build_vit(seed: int = 0) -> torchvision.models.VisionTransformer:
    """A tiny seeded torchvision ViT in eval mode.

    torchvision initialises the head to zero (every logit 0, nothing to explain), so the head gets
    random values here; the scale keeps the logits of order 1 so that the softmax is not saturated."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(**VIT_CONFIG).eval()
    with torch.no_grad():
        head = model.heads.head
        head.weight.normal_(0.0, 1.0 / VIT_CONFIG["hidden_dim"] ** 0.5)
        head.bias.normal_(0.0, 0.1)
    return model


def make_input(n: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def _patched_classes():
    """The classes whose methods LXT's ViT patch map and ``monkey_patch_zennit`` replace."""
    import zennit.core
    from lxt.efficient.models.vit_torch import cp_LRP

    return [(cls, "forward") for cls in cp_LRP] + [
        (zennit.core.BasicHook, "forward"),
        (zennit.core.BasicHook, "backward"),
    ]


@contextlib.contextmanager
def lxt_patches():
    """Apply LXT's CP-LRP patches to torchvision's vision_transformer and Zennit, then undo them."""
    import lxt.efficient
    from lxt.efficient.models.vit_torch import cp_LRP

    saved = []
    for cls, name in _patched_classes():
        for attr in (name, f"original_{name}"):
            saved.append((cls, attr, attr in cls.__dict__, cls.__dict__.get(attr)))
    try:
        lxt.efficient.monkey_patch(torchvision.models.vision_transformer, cp_LRP)
        lxt.efficient.monkey_patch_zennit()
        yield
    finally:
        for cls, attr, existed, value in saved:
            if existed:
                setattr(cls, attr, value)
            elif attr in cls.__dict__:
                delattr(cls, attr)


def zennit_composite(epsilon: float = 1e-6, gamma: float | None = None):
    """One Zennit rule on every Conv2d and Linear: ``Epsilon(epsilon)``, or ``Gamma(gamma)`` with
    ``epsilon`` as its stabiliser (LXT's ViT recipe uses Gamma there).

    The attention's in/out projections are Linear modules too, but torch's multi-head attention
    passes their weights to a functional call, so their hooks never fire (SPEC section 7): they stay
    LRP-0 whatever the rule."""
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Gamma

    def rule():
        return Epsilon(epsilon=epsilon) if gamma is None else Gamma(gamma=gamma, stabilizer=epsilon)

    return LayerMapComposite(layer_map=[(torch.nn.Conv2d, rule()), (torch.nn.Linear, rule())])


def lxt_relevance(
    model: torch.nn.Module, x: torch.Tensor, initial: torch.Tensor, epsilon: float = 1e-6, gamma: float | None = None
):
    """Relevance at the input for the initial relevance ``initial`` [N, K] at the logits, with
    ``zennit_composite(epsilon, gamma)`` on the layers that have weights.

    Runs LXT in float64 on a copy of ``model``.  Returns (relevance [N, 3, H, W], logits [N, K]),
    both float64."""
    import copy

    twin = copy.deepcopy(model).double().eval()
    x = x.detach().double().requires_grad_(True)
    with lxt_patches(), zennit_composite(epsilon, gamma).context(twin):
        logits = twin(x)
        # LXT's patched Zennit hook on the head multiplies the incoming gradient by the output.
        logits.backward(initial.double() / logits.detach())
    return (x * x.grad).detach(), logits.detach()


def attention_projections(model) -> list[str]:
    """Names of the ONNX nodes of the attention's input/output projections (a MatMul or Gemm with a
    constant weight inside a ``self_attention`` module): the layers whose Zennit hooks never fire in
    LXT.  Module paths are in the node names (TorchScript exporter) or in the ``name_scopes``
    metadata (dynamo exporter)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in constants:
            continue
        scopes = [p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        if any("self_attention" in text for text in [node.name, *scopes]):
            names.append(node.name)
    return names


def initial_relevance(logits: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    """The one-pass initial relevance of SPEC section 3: lrp (z_t at t) or sglrp signed."""
    import zennit_models as zm

    return zm.initial_relevance(logits, targets, method, "signed" if method == "sglrp" else None)[0]
