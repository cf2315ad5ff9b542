"""A backbone with optional heads, exposing every feature a method may need."""

from __future__ import annotations

import flax.linen as nn
import jax


class Encoder(nn.Module):
    """`[B, H, W, 3]` -> the backbone's dict (`'pooled'` [B, C], feature maps such as
    `'stage4'` or Swin's `'layer4'`) plus, when the heads exist,
    `'proj'` = projector(pooled) [B, P], `'pred'` = predictor(proj) [B, P] (only with
    `predict=True`) and `'logits'` = classifier(pooled) [B, classes]."""

    backbone: nn.Module
    projector: nn.Module | None = None
    predictor: nn.Module | None = None
    classifier: nn.Module | None = None

    def __call__(self, x: jax.Array, train: bool, predict: bool = True) -> dict[str, jax.Array]:
        out = dict(self.backbone(x, train))
        if self.projector is not None:
            out["proj"] = self.projector(out["pooled"], train)
            if self.predictor is not None and predict:
                out["pred"] = self.predictor(out["proj"], train)
        if self.classifier is not None:
            out["logits"] = self.classifier(out["pooled"]).astype(jax.numpy.float32)
        return out
