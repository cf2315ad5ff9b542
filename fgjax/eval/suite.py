"""Evaluation of a train state: retrieval Recall@K / mAP and kNN top-1 of an embedding,
plus any evaluators a method adds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from fgjax.eval.features import Embed, FeatureExtractor
from fgjax.eval.protocols import knn, knn_splits, require_train_classes, retrieval


class Evaluator:
    """`evaluate(state)`: leave-one-out retrieval Recall@K / mAP on the test split and
    weighted kNN top-1 (bank: the train split, or leave-one-out on test) of `embed` (the
    'retrieval' and 'knn' protocols of `fgjax.eval.protocols`), then every `extra`
    evaluator `fn(state, extractor) -> {metric: value}` with its results prefixed `name/`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        extractor: FeatureExtractor,
        embed: Embed,
        extra: Mapping[str, Callable[[Any, FeatureExtractor], dict[str, float]]] | None = None,
    ):
        self.splits = dict.fromkeys(("test", *knn_splits(config)))  # checks knn_bank
        sources = extractor.sources
        if "train" in self.splits and config.eval.knn_labels == "fine" and "train" in sources:
            # before training: held-out test classes make kNN on the train bank meaningless
            train_split = config.data.train_split
            if train_split != config.data.test_split:
                what = "kNN (config.eval.knn_bank='train')"
                require_train_classes(
                    sources["train"].labels, sources["test"].labels, what, train_split
                )
        self.config, self.extractor, self.embed = config, extractor, embed
        self.extra = dict(extra or {})

    def __call__(self, state: Any, periodic: bool = False) -> dict[str, float]:
        """`periodic`: an evaluation during training, which skips mAP / MAP@R unless
        `config.eval.periodic_map` or the best metric needs them."""
        c = self.config.eval
        features = {
            split: self.extractor.extract(split, self.embed, state) for split in self.splits
        }
        with_map = not periodic or c.periodic_map or c.best_metric.startswith("retrieval_map")
        found = retrieval(features, self.config, with_map=with_map)
        results = {f"retrieval_{k}": v for k, v in found.items()}
        results.update({f"knn_{k}": v for k, v in knn(features, self.config).items()})
        for name, evaluate in self.extra.items():
            results.update(
                {f"{name}/{k}": float(v) for k, v in evaluate(state, self.extractor).items()}
            )
        return results
