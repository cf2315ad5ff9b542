"""End-of-training evaluation: kNN top-1 and retrieval Recall@K of backbone features."""

from __future__ import annotations

from typing import Any

import ml_collections
from jax.sharding import Mesh

from fgjax.data.pipeline import make_eval_loader
from fgjax.eval.features import extract_features, make_embed_fn
from fgjax.eval.knn import knn_top1
from fgjax.eval.retrieval import retrieval_metrics


def evaluate_backbone(
    method: Any,
    params: dict,
    batch_stats: dict,
    config: ml_collections.ConfigDict,
    sources: dict[str, Any],
    mesh: Mesh,
) -> dict[str, float]:
    """kNN top-1 (bank: train split, or leave-one-out on test) and leave-one-out
    retrieval Recall@K / mAP on the test split, all on the pooled backbone feature."""
    view = config.augment.view1
    embed_fn = make_embed_fn(method.embed, view.mean, view.std, mesh)

    def features(split: str):
        loader = make_eval_loader(
            sources[split],
            batch_size=config.eval.batch_size,
            image_size=config.data.image_size,
        )
        return extract_features(embed_fn, params, batch_stats, loader, mesh)

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
    elif config.eval.knn_bank == "test":
        knn = knn_top1(
            test_feats,
            test_labels,
            None,
            None,
            num_classes=sources["test"].num_classes,
            leave_one_out=True,
            **knn_args,
        )
    else:
        raise ValueError(
            f"config.eval.knn_bank must be 'train' or 'test', got {config.eval.knn_bank!r}"
        )
    results["knn_top1"] = float(knn)
    return results
