"""End-of-training evaluation: kNN top-1 and retrieval Recall@K of backbone features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections
from jax.sharding import Mesh

from fgjax.data.pipeline import make_eval_loader
from fgjax.eval.features import extract_features, make_embed_fn
from fgjax.eval.knn import knn_top1
from fgjax.eval.retrieval import retrieval_metrics


def make_evaluator(
    method: Any,
    config: ml_collections.ConfigDict,
    sources: dict[str, Any],
    mesh: Mesh,
) -> Callable[[dict, dict], dict[str, float]]:
    """`evaluate(params, batch_stats)`: kNN top-1 (bank: train split, or leave-one-out
    on test) and leave-one-out retrieval Recall@K / mAP on the test split, all on the
    pooled backbone feature. The embedding is compiled and the loaders built once."""
    view = config.augment.view1
    embed_fn = make_embed_fn(method.embed, view.mean, view.std, mesh)
    loaders = {
        split: make_eval_loader(
            source, batch_size=config.eval.batch_size, image_size=config.data.image_size
        )
        for split, source in sources.items()
    }
    if config.eval.knn_bank not in ("train", "test"):
        raise ValueError(
            f"config.eval.knn_bank must be 'train' or 'test', got {config.eval.knn_bank!r}"
        )
    return lambda params, batch_stats: _evaluate(
        embed_fn, params, batch_stats, loaders, sources, config, mesh
    )


def _evaluate(embed_fn, params, batch_stats, loaders, sources, config, mesh):
    def features(split: str):
        return extract_features(embed_fn, params, batch_stats, loaders[split], mesh)

    test_feats, test_labels = features("test")
    results = {
        f"retrieval_{k}": float(v)
        for k, v in retrieval_metrics(
            test_feats, test_labels, ks=tuple(config.eval.recall_ks)
        ).items()
    }
    knn_args = dict(k=config.eval.knn_k, temperature=config.eval.knn_temperature)
    if config.eval.knn_bank == "train":
        train_feats, train_labels = features("train")
        knn = knn_top1(
            train_feats,
            train_labels,
            test_feats,
            test_labels,
            num_classes=sources["train"].num_classes,
            **knn_args,
        )
    else:  # 'test': leave-one-out on the test split
        knn = knn_top1(
            test_feats,
            test_labels,
            None,
            None,
            num_classes=sources["test"].num_classes,
            leave_one_out=True,
            **knn_args,
        )
    results["knn_top1"] = float(knn)
    return results
