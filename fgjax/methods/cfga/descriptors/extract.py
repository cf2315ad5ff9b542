"""Training-free image descriptors of a ResNet by name: pooled (GAP, Pooling, SCDA) and
CFGA (spec cfga.md sections 4 and 6.2); `describe_fn` builds one jittable function for
any set of them.

Notation for the dims: w4 = 8 * width (the 3x3 width of stage 4, 512 for ResNet-50) and
C4 = 4 * w4 (the stage-4 channels, 2048).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgjax.core.masks import scda_mask
from fgjax.methods.cfga.descriptors.cfga import Kernel, cfga_vector, kernel_gradients
from fgjax.methods.cfga.descriptors.pooling import pooled_descriptors
from fgjax.models.resnet import ResNet, stage_valid, valid_region

Describe = Callable[[Mapping[str, Any], jax.Array, jax.Array | None], dict[str, jax.Array]]

# conv k of a stage-4 block: (what it is, its input channels C_in, its filters N_out)
_CONVS = {1: ("1x1 reduce", "C4", "w4"), 2: ("3x3", "w4", "w4"), 3: ("1x1 expand", "w4", "C4")}
_POOLED = {
    "gap": "L2(GAP(F)) of the stage-4 map F; C4 (2048)",
    "pooling": "the paper's Pooling: L2(concat[GAP(F), GMP(F)]), unmasked; 2 C4 (4096)",
    "scda": "SCDA: concat[L2(avg), L2(max)] of the masked F (norm sqrt 2); 2 C4 (4096)",
    "scda_concat": "SCDA: L2(concat[avg, max]) of the masked F; 2 C4 (4096)",
}
_PLUS = ("cfga_4_1_2", "cfga_4_2_2")


def _cfga_table() -> dict[str, tuple[Kernel, str, str]]:
    """name -> (kernel, variant, description) of every single-conv CFGA descriptor."""
    table = {}
    for b, k in ((b, k) for b in (1, 2) for k in _CONVS):
        what, c_in, n_out = _CONVS[k]
        kernel = (f"layer4_{b}", f"conv{k}")
        table[f"cfga_4_{b}_{k}"] = (
            kernel,
            "cfga",
            f"CFGA 4-{b}-{k}: gradient of layer4_{b}.conv{k} ({what}), selected, mean over "
            f"the output filters, L2; C_in = {c_in}",
        )
        table[f"cfga_eq5_4_{b}_{k}"] = (
            kernel,
            "eq5",
            f"Eq. 5 ablation of cfga_4_{b}_{k}: no selection; C_in = {c_in}",
        )
        table[f"cfga_eq6_4_{b}_{k}"] = (
            kernel,
            "eq6",
            f"Eq. 6 ablation of cfga_4_{b}_{k}: mean over the input channels; N_out = {n_out}",
        )
    return table


_CFGA = _cfga_table()
DESCRIPTORS: dict[str, str] = {
    **_POOLED,
    **{name: description for name, (_, _, description) in _CFGA.items()},
    "cfga_plus": "CFGA+: concat[cfga_4_1_2, cfga_4_2_2], norm sqrt 2; 2 w4 (1024)",
    "embedding": "the model's own embedding (`embed`, e.g. a metric-learned head)",
}

METHOD_DESCRIPTORS: dict[str, tuple[str, ...]] = {
    "cfga": tuple(f"cfga_4_{b}_{k}" for b in (1, 2) for k in (1, 2, 3)) + ("cfga_plus",),
    "cfga_plus": ("cfga_plus",),
    "scda": ("scda", "scda_concat"),
    "gap": ("gap", "pooling"),
}


def descriptor_dim(backbone: ResNet, name: str) -> int | None:
    """The dim of descriptor `name` on `backbone` (None for 'embedding': the model's)."""
    if name not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {name!r}; known: {', '.join(DESCRIPTORS)}")
    dims = {"w4": 8 * backbone.width, "C4": 32 * backbone.width}
    if name in _CFGA:
        (_, conv), variant, _ = _CFGA[name]
        _, c_in, n_out = _CONVS[int(conv[-1])]
        return dims[n_out if variant == "eq6" else c_in]
    return {"embedding": None, "gap": dims["C4"], "cfga_plus": 2 * dims["w4"]}.get(
        name, 2 * dims["C4"]
    )


def _check(backbone: nn.Module, needs_grads: bool) -> None:
    if not isinstance(backbone, ResNet) or len(backbone.stage_sizes) != 4:
        raise ValueError(
            "descriptors need a 4-stage fgjax ResNet (fgjax.models.ResNet, e.g. resnet50), "
            f"got {type(backbone).__name__}"
            + (
                f" with stage_sizes {tuple(backbone.stage_sizes)}"
                if isinstance(backbone, ResNet)
                else ""
            )
        )
    if needs_grads and (backbone.block != "bottleneck" or backbone.stage_sizes[3] < 3):
        raise ValueError(
            "CFGA descriptors need a Bottleneck ResNet with blocks layer4_1 and layer4_2 "
            f"(ResNet-50/101/152), got block={backbone.block!r}, "
            f"stage_sizes={tuple(backbone.stage_sizes)}"
        )


def describe_fn(
    backbone: nn.Module,
    names: Sequence[str],
    *,
    use_lcc: bool,
    embed: Callable[[Mapping[str, Any], jax.Array], jax.Array] | None = None,
) -> Describe:
    """A pure function `(variables, images, valid=None) -> {name: float32 [B, D_name]}`
    (jit it).

    Args:
      backbone: a 4-stage fgjax ResNet (Bottleneck with >= 3 stage-4 blocks for CFGA).
      names: descriptors of `DESCRIPTORS` ('embedding' only with `embed`).
      use_lcc: keep only the mask's largest 4-connected component (the ImageNet
        pipeline; the metric-learned ones use the plain mean-threshold mask).
      embed: optional `embed(variables, images) -> [B, D]`, returned as 'embedding'.

    `variables` are the backbone's {'params', 'batch_stats'} (eval mode); `images` float32
    [B, H, W, 3], normalised; `valid` int [B, 2]: each image's real (height, width) at the
    top left of a padded batch (`ResNet`'s `valid`; not with `embed`): the descriptors
    are then those of each image alone. With a CFGA name, one vmapped forward + backward
    per example serves every name; otherwise one batched forward. An image whose map is constant has
    an empty mask: its masked pools and CFGA vectors are zeros.
    """
    names = tuple(dict.fromkeys(names))
    unknown = [n for n in names if n not in DESCRIPTORS]
    if unknown:
        raise ValueError(f"unknown descriptors {unknown}; known: {', '.join(DESCRIPTORS)}")
    if "embedding" in names and embed is None:
        raise ValueError("descriptor 'embedding' needs `embed` (the model's embedding function)")
    # cfga_plus is made of two single-conv descriptors
    singles = sorted(
        {n for n in names if n in _CFGA} | (set(_PLUS) if "cfga_plus" in names else set())
    )
    kernels = tuple(sorted({_CFGA[n][0] for n in singles}))
    _check(backbone, needs_grads=bool(kernels))
    pooled = any(n in _POOLED for n in names)
    returned = (*names, *(("embedding",) if embed is not None and "embedding" not in names else ()))

    def describe(
        variables: Mapping[str, Any], images: jax.Array, valid: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        if valid is not None and embed is not None:
            raise ValueError("describe: `embed` cannot see `valid`; give unpadded images")
        out = {}
        if kernels:
            grads, features, masks = kernel_gradients(
                backbone, variables, images, kernels, use_lcc, valid
            )
            for n in singles:
                kernel, variant, _ = _CFGA[n]
                out[n] = cfga_vector(grads[kernel], variant)
            if "cfga_plus" in names:
                out["cfga_plus"] = jnp.concatenate([out[n] for n in _PLUS], axis=-1)
        elif pooled:
            features = backbone.apply(variables, images, train=False, valid=valid)["stage4"]
        if pooled:
            region = None  # a padded batch's valid stage-4 positions
            if valid is not None:
                sizes = stage_valid(valid, 4, backbone.stem_maxpool)
                region = valid_region(sizes, *features.shape[1:3])
            if not kernels:  # CFGA's masks came with its maps
                masks = jax.vmap(lambda f, r: scda_mask(f, use_lcc, r))(features, region)
            out.update(pooled_descriptors(features, masks, region))
        if embed is not None:
            out["embedding"] = jnp.asarray(embed(variables, images), jnp.float32)
        return {n: out[n] for n in returned}

    return describe
