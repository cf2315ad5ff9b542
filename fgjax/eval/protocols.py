"""Evaluation protocols by name: what `python -m fgjax.evaluate --protocol NAME` runs.

A protocol reads the features of some splits (by role: 'train' is `config.data.train_split`,
'test' `config.data.test_split`) and returns `{metric: value}`; results are reported as
`<name>_<metric>` (e.g. `retrieval_recall@1`, `knn_top1`, the trainer's keys too). Adding
one is one `register_protocol(name, Protocol(...))` line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import ml_collections

from fgjax.eval.features import Features
from fgjax.eval.knn import knn_top1
from fgjax.eval.retrieval import retrieval_metrics

FeaturesBySplit = Mapping[str, Features]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """`run(features by role, config) -> {metric: value}` on the roles `splits(config)`
    names (`run=None`: announced but not available yet). `output` is the encoder output it
    needs (e.g. 'logits'); None takes the feature the user chose (`--features`, default
    the pooled backbone feature)."""

    run: Callable[[FeaturesBySplit, ml_collections.ConfigDict], dict[str, float]] | None
    splits: Callable[[ml_collections.ConfigDict], tuple[str, ...]]
    output: str | None = None


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(name: str, protocol: Protocol) -> None:
    PROTOCOLS[name] = protocol


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)} or 'all'")
    return PROTOCOLS[name]


def retrieval(features: FeaturesBySplit, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Leave-one-out Recall@K (`config.eval.recall_ks`) and mAP on the test split."""
    test = features["test"]
    ks = tuple(config.eval.recall_ks)
    return {k: float(v) for k, v in retrieval_metrics(test.features, test.labels, ks=ks).items()}


def knn_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    if config.eval.knn_bank not in ("train", "test"):
        raise ValueError(
            f"config.eval.knn_bank must be 'train' or 'test', got {config.eval.knn_bank!r}"
        )
    return ("train", "test") if config.eval.knn_bank == "train" else ("test",)


def knn(features: FeaturesBySplit, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Weighted kNN top-1 (k = `config.eval.knn_k`, T = `config.eval.knn_temperature`) of
    the test split against the train split, or leave-one-out on test (`knn_bank='test'`)."""
    c, test = config.eval, features["test"]
    bank = features["train"] if c.knn_bank == "train" else test
    num_classes = int(max(bank.labels.max(), test.labels.max())) + 1
    args = dict(num_classes=num_classes, k=c.knn_k, temperature=c.knn_temperature)
    if c.knn_bank == "train":
        top1 = knn_top1(bank.features, bank.labels, test.features, test.labels, **args)
    else:
        top1 = knn_top1(test.features, test.labels, None, None, leave_one_out=True, **args)
    return {"top1": float(top1)}


register_protocol("retrieval", Protocol(retrieval, splits=lambda c: ("test",)))
register_protocol("knn", Protocol(knn, splits=knn_splits))
# TODO(lead): wire the linear probe and the classification metrics (run=None until then).
register_protocol("linear", Protocol(None, splits=lambda c: ("train", "test")))
register_protocol("classify", Protocol(None, splits=lambda c: ("test",), output="logits"))
