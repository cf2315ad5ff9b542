"""Backbone features of a whole split, extracted with the sharded, jitted model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fgjax.data.augment import normalize
from fgjax.train.sharding import batch_sharded, global_batch, replicated


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 `[B, H, W, 3]` -> float32 `(x / 255 - mean) / std`."""
    return normalize(images.astype(jnp.float32) / 255.0, mean, std)


def make_embed_fn(
    embed: Callable[[dict, dict, jax.Array], jax.Array],
    mean: Sequence[float],
    std: Sequence[float],
    mesh: Mesh,
) -> Callable:
    """jit `embed(params, batch_stats, normalised images) -> [B, D]` over the mesh."""

    def embed_uint8(params, batch_stats, images):
        return embed(params, batch_stats, normalize_images(images, mean, std))

    return jax.jit(
        embed_uint8,
        in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
        out_shardings=batch_sharded(mesh),
    )


def extract_features(
    embed_fn: Callable, params: dict, batch_stats: dict, loader: Iterable[dict], mesh: Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Features `[N, D]` float32 and labels `[N]` of every real (unpadded) example,
    ordered by source index."""
    feats, labels, indices = [], [], []
    for local in loader:
        batch = global_batch({k: local[k] for k in ("images", "label", "index", "mask")}, mesh)
        out = embed_fn(params, batch_stats, batch["images"])
        if jax.process_count() > 1:
            out, lab, idx, mask = (
                multihost_utils.process_allgather(a, tiled=True)
                for a in (out, batch["label"], batch["index"], batch["mask"])
            )
        else:
            out, lab, idx, mask = (
                np.asarray(a) for a in (out, batch["label"], batch["index"], batch["mask"])
            )
        mask = mask.astype(bool)
        feats.append(np.asarray(out)[mask])
        labels.append(lab[mask])
        indices.append(idx[mask])
    order = np.argsort(np.concatenate(indices), kind="stable")
    return np.concatenate(feats)[order], np.concatenate(labels)[order]
