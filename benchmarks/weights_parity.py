"""Full-size weight-import parity: fgjax vs torchvision ResNets @224, timm Swin-L @384.

Needs one environment with torch, torchvision, timm and fgjax's dependencies (jax, flax);
run from the repository root, on the GPU host:

    python benchmarks/weights_parity.py                          # resnet50 and swin
    python benchmarks/weights_parity.py --which resnet18,resnet50 --device cpu --batch 2

Any `fgjax.models.registry` name works: resnet18/34/50/101/152 (torchvision) and timm
Swin names; the fgjax side is `fgjax.models.build_backbone(arch)`.

For each model: random torch weights (ResNet: random BN running stats too), eval mode,
float32 (TF32 off in torch, `jax_default_matmul_precision=highest` in JAX).
1. import: `torch.save(model.state_dict())` -> `fgjax.weights.load_pretrained` (the
   torch-free reader and key map; strict for ResNet) -> fgjax features vs torch features;
2. export: fgjax's own `.pth` (written without torch) -> `torch.load(weights_only=True)`
   -> a fresh torch model -> features vs the original torch model (expect exactly 0).
Prints one JSON line per model: max |diff| per feature, the feature scale, the load
report counts and the export's missing/unexpected keys.

Features compared: ResNet `pooled` [B, 2048] (ResNet-18/34: [B, 512]) and `stage1..4`
(torchvision layer1..4, NHWC); Swin `pooled` [B, 1536] (final norm + token mean, timm's
pre-logits) and `layer4` (last stage output before the final norm, timm `layers[-1]`).
The weights go through `load_pretrained` / `export_torch` (`fgjax.weights.resnet_keys`,
`fgjax.weights.swin_keys`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import numpy as np
import torch

from fgjax.models import arch_family, build_backbone
from fgjax.weights import export_torch, load_pretrained, target_for_arch

SWIN = "swin_large_patch4_window12_384"


def _randomize_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))


def _run(model, x, taps: dict[str, torch.nn.Module]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Eval-mode outputs of the `taps` modules and of the model, as float32 numpy."""
    out: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, y, n=n: out.__setitem__(n, y))
        for n, m in taps.items()
    ]
    with torch.no_grad():
        final = model(x)
    for h in hooks:
        h.remove()
    return {k: v.float().cpu().numpy() for k, v in out.items()}, final.float().cpu().numpy()


def _resnet_torch(model, x) -> dict[str, np.ndarray]:
    taps = {f"stage{s}": getattr(model, f"layer{s}") for s in range(1, 5)}
    out, _ = _run(model, x, {**taps, "pooled": model.avgpool})
    maps = {k: out[k].transpose(0, 2, 3, 1) for k in taps}  # NCHW -> NHWC
    return {**maps, "pooled": out["pooled"].reshape(out["pooled"].shape[0], -1)}


def _swin_torch(model, x) -> dict[str, np.ndarray]:
    out, pooled = _run(model, x, {"layer4": model.layers[-1]})  # num_classes=0: pre-logits
    layer4 = out["layer4"]  # timm >= 0.9 stages are NHWC
    return {"layer4": layer4.reshape(layer4.shape[0], -1, layer4.shape[-1]), "pooled": pooled}


def _case(arch: str, device: str, batch: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if arch_family(arch) == "resnet":
        import torchvision

        make = getattr(torchvision.models, arch)
        model = make()
        _randomize_bn(model, gen)
        size, features, strict = 224, _resnet_torch, True
    else:
        import timm

        def make():
            return timm.create_model(arch, pretrained=False, num_classes=0)

        model = make()
        size, features, strict = int(arch.rsplit("_", 1)[1]), _swin_torch, False
    model = model.eval().to(device)
    x = torch.randn(batch, 3, size, size, generator=gen)
    want = features(model, x.to(device))

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "torch.pth")
        torch.save(model.state_dict(), src)
        target = target_for_arch(arch)
        variables, report = load_pretrained(src, target, arch, strict=strict)
        fgjax_model = build_backbone(arch)
        apply = jax.jit(lambda v, x: fgjax_model.apply(v, x, train=False))
        got = apply(variables, np.asarray(x.numpy().transpose(0, 2, 3, 1)))
        import_diff = {
            k: float(np.abs(np.asarray(got[k], np.float32) - v).max()) for k, v in want.items()
        }

        out = os.path.join(tmp, "fgjax_export.pth")
        export_torch(out, variables, arch)
        fresh = make().eval().to(device)
        missing, unexpected = fresh.load_state_dict(
            torch.load(out, weights_only=True), strict=False
        )
        again = features(fresh, x.to(device))
        export_diff = {k: float(np.abs(again[k] - v).max()) for k, v in want.items()}
    return {
        "arch": arch,
        "batch": batch,
        "device": device,
        "jax_backend": jax.default_backend(),
        "import_max_abs_diff": import_diff,
        "feature_max_abs": {k: float(np.abs(v).max()) for k, v in want.items()},
        "report": {
            "loaded": len(report.loaded),
            "missing": report.missing[:10],
            "unexpected": report.unexpected[:10],
            "mismatched": [list(map(str, m)) for m in report.mismatched[:10]],
        },
        "export_missing": list(missing),
        "export_unexpected": list(unexpected),
        "export_max_abs_diff": export_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--which",
        default=f"resnet50,{SWIN}",
        help="comma list of arch names (resnet18..152, swin_*)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    jax.config.update("jax_default_matmul_precision", "highest")
    for arch in args.which.split(","):
        arch = "swin_large_patch4_window12_384" if arch == "swin" else arch
        batch = args.batch if arch_family(arch) == "resnet" else max(1, args.batch // 4)
        print(json.dumps(_case(arch, args.device, batch, args.seed)), flush=True)


if __name__ == "__main__":
    main()
