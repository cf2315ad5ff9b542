"""CFGA and its pooled baselines in PyTorch, one image at a time, written from
shared/methods/cfga.md (sections 3, 4.1-4.3, 4.6, 6.2), not from the authors' code: the
per-image procedure of their extraction scripts (eval mode, batch 1, a host-side largest
connected component, `loss.backward()`, `.grad` of the six stage-4 convs).
Standalone (torch, numpy, scipy; a torchvision-layout ResNet); fgjax never imports it.

Used by `tests/fixtures/make_cfga_fixtures.py` (the parity fixture of tests/test_cfga.py)
and `benchmarks/describe.py` (the PyTorch side of the descriptors/s benchmark).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import nn

# (block, conv) of layer4 whose weight gradients CFGA reads: blocks 1 and 2, convs 1-3.
CONVS = tuple((b, k) for b in (1, 2) for k in (1, 2, 3))
VARIANTS = ("cfga", "eq5", "eq6")


def stage4(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """torchvision ResNet `model` up to `layer4` (post-ReLU) on `image` [1, 3, H, W]."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(image))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def scda_mask(features: torch.Tensor, use_lcc: bool) -> torch.Tensor:
    """[1, C, h, w] -> float [h, w]: channel sum > its mean (strict), then, with `use_lcc`,
    its largest 4-connected component (scipy's default cross structure; ties: the lowest
    label, i.e. the first in raster order)."""
    a = features.detach().sum(dim=1)[0]
    mask = a > a.mean()
    if use_lcc:  # on the host, as the reference does
        labels, count = scipy.ndimage.label(mask.cpu().numpy())
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            mask = torch.as_tensor(labels == 1 + int(np.argmax(sizes)), device=features.device)
    return mask.to(features.dtype)


def masked_avg_max(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Average over the mask's positions (divided by |M|) and max of M * F, each [1, C]."""
    g = features * mask
    return g.sum(dim=(2, 3)) / mask.sum(), g.amax(dim=(2, 3))


def response(grad: torch.Tensor) -> torch.Tensor:
    """Weight gradient [N, C, kh, kw] -> R [N, C]: 3x3 (max - min) + unbiased std of the 9
    taps, 1x1 |D|."""
    if grad.shape[2:] == (1, 1):
        return grad[:, :, 0, 0].abs()
    taps = grad.flatten(2)
    return taps.amax(dim=2) - taps.amin(dim=2) + taps.std(dim=2)


def cfga_vector(grad: torch.Tensor, variant: str = "cfga") -> torch.Tensor:
    """Weight gradient [N, C, kh, kw] -> unit CFGA vector [C] ([N] for 'eq6')."""
    r = response(grad)
    if variant != "eq5":
        keep = (r > r.mean(dim=0, keepdim=True)) & (r > r.mean(dim=1, keepdim=True))
        r = r * keep
    return F.normalize(r.mean(dim=1 if variant == "eq6" else 0), dim=0)


def descriptors(
    model: nn.Module, image: torch.Tensor, use_lcc: bool, variants: tuple[str, ...] = ("cfga",)
) -> dict[str, torch.Tensor]:
    """Every descriptor of one image [1, 3, H, W] (fgjax.methods.cfga.descriptors names): the pooled
    ones, `cfga_4_b_k` (and `cfga_eq5_4_b_k` / `cfga_eq6_4_b_k` for those `variants`),
    `cfga_plus`. `model` must be in eval mode with only the six convs' weights requiring
    grad (`prepare`), which keeps the backward inside layer4."""
    weights = [getattr(model.layer4[b], f"conv{k}").weight for b, k in CONVS]
    for w in weights:
        w.grad = None
    features = stage4(model, image)
    mask = scda_mask(features, use_lcc)
    avg, mx = masked_avg_max(features, mask)
    (avg.sum() + mx.sum()).backward()
    f = features.detach()
    out = {
        "gap": F.normalize(f.mean(dim=(2, 3)), dim=1)[0],
        "pooling": F.normalize(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], 1), dim=1)[0],
        "scda": torch.cat([F.normalize(avg, dim=1), F.normalize(mx, dim=1)], 1)[0].detach(),
        "scda_concat": F.normalize(torch.cat([avg, mx], 1), dim=1)[0].detach(),
    }
    for (b, k), w in zip(CONVS, weights, strict=True):
        for variant in variants:
            infix = "" if variant == "cfga" else f"{variant}_"
            out[f"cfga_{infix}4_{b}_{k}"] = cfga_vector(w.grad, variant)
    out["cfga_plus"] = torch.cat([out["cfga_4_1_2"], out["cfga_4_2_2"]])
    return out


def prepare(model: nn.Module) -> nn.Module:
    """Eval mode; gradients only for the six CFGA conv weights (the reference reads only
    those, so nothing below layer4 is back-propagated)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for b, k in CONVS:
        getattr(model.layer4[b], f"conv{k}").weight.requires_grad_(True)
    return model
