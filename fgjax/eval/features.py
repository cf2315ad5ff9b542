"""Features of a whole split, extracted with the sharded, jitted model.

`FeatureExtractor.extract(split, embed, state)` runs any embedding
`embed(state, images [B, H, W, 3] normalised float32) -> [B, D]` over a split
(Resize + CenterCrop), each process reading its own contiguous share; the features
are gathered across processes once, at the end. Used by evaluation and by methods'
host hooks (e.g. clustering the training set at every epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fgjax.core.progress import progress
from fgjax.core.sharding import batch_sharded, global_batch, local_rows, replicated
from fgjax.data.augment import normalize
from fgjax.data.eval_loader import EvalLoader, make_eval_loader

Embed = Callable[[Any, jax.Array], jax.Array]


class Features(NamedTuple):
    """One row per example of the split, in source order."""

    features: np.ndarray  # [N, D] float32
    labels: np.ndarray  # [N] int32
    coarse_labels: np.ndarray  # [N] int32, -1 where the dataset has no coarse level


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 `[B, H, W, 3]` -> float32 `(x / 255 - mean) / std`."""
    return normalize(images.astype(jnp.float32) / 255.0, mean, std)


class FeatureExtractor:
    """Extracts features of the splits in `sources`; loaders and compiled embeddings are
    built once and reused (one compile per embedding function)."""

    def __init__(
        self,
        sources: Mapping[str, Any],
        mesh: Mesh,
        *,
        image_size: int,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        show_progress: bool = True,
        skip_bad: bool = False,
        resize: str = "short_side",
        squash_size: int = 0,
        resize_ratio: float = 0.875,
    ):
        if batch_size <= 0 or batch_size % jax.local_device_count():
            raise ValueError(  # checked here, before any training, not at the first batch
                f"config.eval.batch_size={batch_size} (per process) must be a positive "
                f"multiple of the {jax.local_device_count()} devices of each process"
            )
        self.sources, self.mesh = sources, mesh
        self.mean, self.std = tuple(mean), tuple(std)
        self.show_progress = show_progress
        self._loaders = {
            split: make_eval_loader(
                source,
                batch_size=batch_size,
                image_size=image_size,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                skip_bad=skip_bad,
                resize=resize,
                squash_size=squash_size,
                resize_ratio=resize_ratio,
            )
            for split, source in sources.items()
        }
        self._compiled: dict[Embed, Callable] = {}
        # Per split, the images the last extraction replaced by black ones (skip_bad).
        self.replaced: dict[str, list[str]] = {}

    def _jit(self, embed: Embed) -> Callable:
        if embed not in self._compiled:
            mean, std = self.mean, self.std
            self._compiled[embed] = jax.jit(
                lambda state, images: embed(state, normalize_images(images, mean, std)),
                in_shardings=(replicated(self.mesh), batch_sharded(self.mesh)),
                out_shardings=batch_sharded(self.mesh),
            )
        return self._compiled[embed]

    def loader(self, split: str) -> EvalLoader:
        """This process's loader of `split` (its contiguous share, last batch padded)."""
        if split not in self._loaders:
            raise ValueError(f"no split {split!r}; have {sorted(self._loaders)}")
        return self._loaders[split]

    def extract(self, split: str, embed: Embed, state: Any) -> Features:
        """`embed` over every (unpadded) example of `split`, gathered on every process."""
        fn, loader = self._jit(embed), self.loader(split)
        rows: dict[str, list[np.ndarray]] = {k: [] for k in ("out", "label", "coarse", "index")}
        masks, bad = [], []
        bar = progress(len(loader), desc=f"features {split}", enabled=self.show_progress)
        for local in loader:
            batch = global_batch({"images": local["images"]}, self.mesh)
            rows["out"].append(local_rows(fn(state, batch["images"])))
            rows["label"].append(local["label"])
            rows["coarse"].append(local["coarse_label"])
            rows["index"].append(local["index"])
            masks.append(local["mask"])
            bad.extend(local["bad_images"])
            bar.update(1)
        bar.close()
        for error in bad:
            print(f"warning: features {split}: a black image stands in for: {error}")
        self.replaced[split] = list(dict.fromkeys(bad))  # this process's, for eval.json
        local_arrays = [np.concatenate(rows[k]) for k in rows] + [np.concatenate(masks)]
        if jax.process_count() > 1:  # one gather of every process's share
            local_arrays = [
                np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in local_arrays
            ]
        out, labels, coarse, index, mask = local_arrays
        mask = mask.astype(bool)
        order = np.argsort(index[mask], kind="stable")
        return Features(
            out[mask][order].astype(np.float32), labels[mask][order], coarse[mask][order]
        )


class MissingFeatureError(ValueError):
    """The model has no output of the requested name."""


def select_feature(outputs: Mapping[str, jax.Array], name: str) -> jax.Array:
    """`outputs[name]` of an encoder's dict as `[B, D]` float32; a feature map `[B, H, W, C]`
    (a stage tap such as 'stage3') is global-average-pooled to `[B, C]`."""
    if name not in outputs:
        raise MissingFeatureError(f"no feature {name!r}; this model gives {sorted(outputs)}")
    x = outputs[name].astype(jnp.float32)
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x


def flip_averaged(embed: Embed) -> Embed:
    """`embed` averaged over each image and its horizontal mirror (test-time augmentation);
    the raw features are averaged, before any normalisation the metrics apply."""

    def averaged(state: Any, images: jax.Array) -> jax.Array:
        return 0.5 * (embed(state, images) + embed(state, images[:, :, ::-1, :]))

    return averaged
