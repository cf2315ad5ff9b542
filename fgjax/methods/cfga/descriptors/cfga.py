"""CFGA: descriptors from the gradients of conv weights (spec cfga.md section 4).

Per image: the objective L = sum_c [max_ij (M * F)_c + sum_ij (M * F)_c / |M|] of the
stage-4 map F with its SCDA mask M held constant (`objective`); the gradients of L with
respect to the kernels of `layer4_1` and `layer4_2` (`kernel_gradients`, one per example
through `jax.vmap(jax.grad(...))`); each gradient reduced to a vector (`cfga_vector`).

Flax kernels are [kh, kw, C_in, N_out] (torch's weights are [N_out, C_in, kh, kw]): the
taps are axes (-4, -3), the response matrix R is [C_in, N_out], and "mean over the
output filters" is a mean over its LAST axis (spec 10.2; the other axis is the Eq. 6
ablation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgjax.core.masks import scda_mask
from fgjax.core.objectives import l2_normalize
from fgjax.methods.cfga.descriptors.pooling import masked_avg_max
from fgjax.models.resnet import valid_region

# (block, conv) of a Flax kernel, e.g. ("layer4_1", "conv2")
Kernel = tuple[str, str]
# How the N x C response matrix becomes a vector (spec 4.2 and the 4.6 ablations):
# 'cfga' select, mean over the output filters; 'eq5' no selection, mean over the output
# filters; 'eq6' select, mean over the input channels (an N_out-d vector).
VARIANTS = ("cfga", "eq5", "eq6")


def response(grad: jax.Array) -> jax.Array:
    """Kernel gradient [..., kh, kw, C, N] -> response R [..., C, N] >= 0 (spec 4.2).

    A 1x1 kernel gives |D|; a larger one (max - min) + std (ddof=1, torch's default) over
    its kh * kw taps.
    """
    taps = (-4, -3)
    if grad.shape[-4] * grad.shape[-3] == 1:
        return jnp.abs(grad[..., 0, 0, :, :])
    spread = jnp.max(grad, axis=taps) - jnp.min(grad, axis=taps)
    return spread + jnp.std(grad, axis=taps, ddof=1)


def aggregate(r: jax.Array, variant: str = "cfga") -> jax.Array:
    """Response R [..., C, N] -> vector f [..., C] ([..., N] for 'eq6'), not normalised.

    Selection keeps R[c, n] only where it exceeds both the mean over the output filters
    of its input channel c and the mean over the input channels of its filter n (both
    strict); the mean that follows counts the dropped entries as zeros.
    """
    if variant not in VARIANTS:
        raise ValueError(f"CFGA variant {variant!r}: expected one of {VARIANTS}")
    if variant != "eq5":
        over_filters = jnp.mean(r, axis=-1, keepdims=True)  # [.., C, 1]
        over_channels = jnp.mean(r, axis=-2, keepdims=True)  # [.., 1, N]
        r = jnp.where((r > over_filters) & (r > over_channels), r, 0.0)
    return jnp.mean(r, axis=-2 if variant == "eq6" else -1)


def cfga_vector(grad: jax.Array, variant: str = "cfga") -> jax.Array:
    """Kernel gradient [..., kh, kw, C, N] -> unit (or zero) CFGA vector [..., C]."""
    return l2_normalize(aggregate(response(grad.astype(jnp.float32)), variant))


def objective(features: jax.Array, mask: jax.Array) -> jax.Array:
    """L = sum_c (max + |M|-average of M * F)_c summed over the batch (spec 4.1);
    `features` [B, h, w, C], `mask` bool [B, h, w] (no gradient flows through a bool)."""
    avg, mx = masked_avg_max(features, mask)
    return jnp.sum(avg + mx)


def _with_kernels(params: Mapping[str, Any], kernels: Mapping[Kernel, jax.Array]) -> dict:
    """`params` with the kernels of `kernels` replaced (copies only the touched levels)."""
    params = dict(params)
    for block in {b for b, _ in kernels}:
        params[block] = dict(params[block])
    for (block, conv), kernel in kernels.items():
        params[block][conv] = {**params[block][conv], "kernel": kernel}
    return params


def kernel_gradients(
    backbone: nn.Module,
    variables: Mapping[str, Any],
    images: jax.Array,
    kernels: Sequence[Kernel],
    use_lcc: bool,
    valid: jax.Array | None = None,
) -> tuple[dict[Kernel, jax.Array], jax.Array, jax.Array]:
    """Per-example gradients of `objective` w.r.t. `kernels`, each example with its own mask.

    One eval-mode forward per example (vmapped): it also gives the stage-4 map and mask.
    Only the named kernels are differentiated, so the backward pass stops where they are
    (inside layer4); JAX never linearises the layers before them.

    `valid` int [B, 2]: the real size of each padded image (`ResNet`'s `valid`); the mask
    stays inside the valid region. Nothing else is needed for the gradients: the backbone
    zeroes every padded activation before it reaches a real position, so padded positions
    add nothing to a kernel's gradient (and the objective sees only masked positions).

    Returns `({kernel: [B, kh, kw, C, N]}, features [B, h, w, C], masks bool [B, h, w])`.
    """
    params = variables["params"]
    for block, conv in kernels:
        if conv not in params.get(block, {}):
            raise KeyError(f"CFGA: the backbone's variables have no params/{block}/{conv}")
    start = {k: params[k[0]][k[1]]["kernel"] for k in kernels}

    def per_example(ks: dict, image: jax.Array, size: jax.Array | None) -> tuple:
        v = {**variables, "params": _with_kernels(params, ks)}
        size = None if size is None else size[None]
        out = backbone.apply(v, image[None], train=False, valid=size)
        f = out["stage4"]
        region = None if size is None else valid_region(out["valid4"], *f.shape[1:3])[0]
        mask = scda_mask(f[0], use_lcc, region)  # bool: a constant of the objective
        return objective(f, mask[None]), (f[0], mask)

    grad = jax.grad(per_example, has_aux=True)
    grads, (features, masks) = jax.vmap(grad, in_axes=(None, 0, 0))(start, images, valid)
    return grads, features, masks
