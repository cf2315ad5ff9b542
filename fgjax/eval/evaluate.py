"""Evaluation of a train state: retrieval Recall@K / mAP and kNN top-1 of an embedding,
plus any evaluators a method adds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from fgjax.eval.features import Embed, FeatureExtractor
from fgjax.eval.knn import knn_top1
from fgjax.eval.retrieval import retrieval_metrics


class Evaluator:
    """`evaluate(state)`: leave-one-out retrieval Recall@K / mAP on the test split and
    weighted kNN top-1 (bank: the train split, or leave-one-out on test) of `embed`,
    then every `extra` evaluator `fn(state, extractor) -> {metric: value}` with its
    results prefixed `name/`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        extractor: FeatureExtractor,
        embed: Embed,
        extra: Mapping[str, Callable[[Any, FeatureExtractor], dict[str, float]]] | None = None,
    ):
        if config.eval.knn_bank not in ("train", "test"):
            raise ValueError(
                f"config.eval.knn_bank must be 'train' or 'test', got {config.eval.knn_bank!r}"
            )
        self.config, self.extractor, self.embed = config.eval, extractor, embed
        self.extra = dict(extra or {})

    def __call__(self, state: Any, periodic: bool = False) -> dict[str, float]:
        """`periodic`: an evaluation during training, which skips mAP / MAP@R unless
        `config.eval.periodic_map` or the best metric needs them."""
        c = self.config
        test = self.extractor.extract("test", self.embed, state)
        with_map = not periodic or c.periodic_map or c.best_metric.startswith("retrieval_map")
        retrieval = retrieval_metrics(
            test.features, test.labels, ks=tuple(c.recall_ks), compute_map=with_map, split="test"
        )
        results = {f"retrieval_{k}": float(v) for k, v in retrieval.items()}
        knn_args = dict(k=c.knn_k, temperature=c.knn_temperature)
        if c.knn_bank == "train":
            train = self.extractor.extract("train", self.embed, state)
            num_classes = self.extractor.sources["train"].num_classes
            knn = knn_top1(
                train.features,
                train.labels,
                test.features,
                test.labels,
                num_classes=num_classes,
                split="train",
                **knn_args,
            )
        else:  # leave-one-out on the test split
            num_classes = self.extractor.sources["test"].num_classes
            knn = knn_top1(
                test.features,
                test.labels,
                None,
                None,
                num_classes=num_classes,
                leave_one_out=True,
                split="test",
                **knn_args,
            )
        results["knn_top1"] = float(knn)
        for name, evaluate in self.extra.items():
            results.update(
                {f"{name}/{k}": float(v) for k, v in evaluate(state, self.extractor).items()}
            )
        return results
