"""Evaluation protocols by name: what `fgjax eval --protocol NAME` runs.

A protocol reads the features of some splits (by role: 'train' is `config.data.train_split`,
'test' `config.data.test_split`) and returns `{metric: value}`; results are reported as
`<name>_<metric>` (e.g. `retrieval_recall@1`, `knn_top1`, `knn_top1@5`, the trainer's keys
too). Adding one is one `register_protocol(name, Protocol(...))` line.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping

import ml_collections
import numpy as np

from fgjax.eval.classification import HERBS_CUB_GROUPS, classification_metrics
from fgjax.eval.clustering import clustering_nmi
from fgjax.eval.features import Features
from fgjax.eval.knn import knn_top1_multi
from fgjax.eval.linear_probe import linear_probe
from fgjax.eval.retrieval import retrieval_metrics

FeaturesBySplit = Mapping[str, Features]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """`run(features by role, config) -> {metric: value}` on the roles `splits(config)`
    names. `output` is the encoder output it
    needs (e.g. 'logits'); None takes the feature the user chose (`--features`, default
    the pooled backbone feature)."""

    run: Callable[[FeaturesBySplit, ml_collections.ConfigDict], dict[str, float]]
    splits: Callable[[ml_collections.ConfigDict], tuple[str, ...]]
    output: str | None = None


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(name: str, protocol: Protocol) -> None:
    PROTOCOLS[name] = protocol


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)} or 'all'")
    return PROTOCOLS[name]


def retrieval(
    features: FeaturesBySplit, config: ml_collections.ConfigDict, with_map: bool = True
) -> dict[str, float]:
    """Leave-one-out Recall@K (`config.eval.recall_ks`), mAP and MAP@R on the test split
    (`with_map=False`: Recall@K only, 3-4x faster)."""
    test = features["test"]
    _, inverse, counts = np.unique(test.labels, return_inverse=True, return_counts=True)
    alone = int(np.sum(counts[inverse] == 1))
    if alone:  # leave-one-out: such a query has nothing to find
        print(
            f"note: retrieval: {alone} of {len(test.labels)} {config.data.test_split} queries "
            f"are the only image of their class, so Recall@K is at most "
            f"{1 - alone / len(test.labels):.4f}",
            file=sys.stderr,
        )
    found = retrieval_metrics(
        test.features,
        test.labels,
        ks=tuple(config.eval.recall_ks),
        compute_map=with_map,
        split=config.data.test_split,
    )
    return {k: float(v) for k, v in found.items()}


def _knn_ks(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """`config.eval.knn_ks` checked: positive integers."""
    ks = config.eval.knn_ks
    if not isinstance(ks, (tuple, list)) or not all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks
    ):
        raise ValueError(
            f"config.eval.knn_ks must be a tuple of positive integers (e.g. '(1,2,5,10)'), "
            f"got {ks!r}"
        )
    return tuple(int(k) for k in ks)


def knn_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The roles the kNN protocol reads; checks its config fields before any extraction."""
    _knn_ks(config)
    if config.eval.knn_bank not in ("train", "test"):
        raise ValueError(
            f"config.eval.knn_bank must be 'train' or 'test', got {config.eval.knn_bank!r}"
        )
    return ("train", "test") if config.eval.knn_bank == "train" else ("test",)


def _labels(feats: Features, which: str, split: str) -> np.ndarray:
    if which == "fine":
        return feats.labels
    if which == "coarse":
        if (feats.coarse_labels < 0).any():
            raise ValueError(
                f"config.eval.knn_labels='coarse': the {split} split has no coarse labels "
                "(config.data.coarse)"
            )
        return feats.coarse_labels
    raise ValueError(f"config.eval.knn_labels must be 'fine' or 'coarse', got {which!r}")


def require_train_classes(
    train_labels: np.ndarray, test_labels: np.ndarray, what: str, train_split: str
) -> None:
    """Refuse a protocol that scores test images against the train split's classes when
    some test class has no train image (held-out classes: it could never be right)."""
    missing = sorted(set(np.unique(test_labels).tolist()) - set(np.unique(train_labels).tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise ValueError(
            f"{what}: {len(missing)} test classes (labels {shown}) have no image in the train "
            f"split {train_split!r}, so it could never be right on them. For held-out classes "
            "use retrieval, or kNN leave-one-out on the test split (config.eval.knn_bank='test')"
        )


def _one_split(config: ml_collections.ConfigDict) -> bool:
    return config.data.train_split == config.data.test_split


def knn(features: FeaturesBySplit, config: ml_collections.ConfigDict) -> dict[str, float]:
    """kNN top-1 (k = `config.eval.knn_k`; `knn_vote` 'weighted' with T =
    `knn_temperature`, or 'majority') of the test split against the train split, or
    leave-one-out on test (`knn_bank='test'`, and always when the train and test splits
    are one: each query would match itself), on fine or coarse labels (`knn_labels`).
    With `knn_ks`, also `top1@K` for each K there, from the same neighbour search."""
    c, test = config.eval, features["test"]
    ks = _knn_ks(config)
    against_train = c.knn_bank == "train" and not _one_split(config)
    bank = features["train"] if against_train else test
    bank_split = config.data.train_split if against_train else config.data.test_split
    bank_labels = _labels(bank, c.knn_labels, bank_split)
    test_labels = _labels(test, c.knn_labels, config.data.test_split)
    if against_train:
        what = "kNN (config.eval.knn_bank='train')"
        require_train_classes(bank_labels, test_labels, what, bank_split)
    num_classes = int(max(bank_labels.max(), test_labels.max())) + 1
    args = dict(
        num_classes=num_classes,
        ks=(c.knn_k, *ks),
        temperature=c.knn_temperature,
        vote=c.knn_vote,
        split=bank_split,
    )
    if against_train:
        top1 = knn_top1_multi(bank.features, bank_labels, test.features, test_labels, **args)
    else:
        top1 = knn_top1_multi(test.features, test_labels, None, None, leave_one_out=True, **args)
    return {"top1": top1[c.knn_k], **{f"top1@{k}": top1[k] for k in ks}}


def linear(features: FeaturesBySplit, config: ml_collections.ConfigDict) -> dict[str, float]:
    """The fast linear probe (`linear_probe`): logistic regression on the train split's
    frozen features, weight decay chosen on a validation share, scored on test."""
    if _one_split(config):  # a probe trained on its own test images scores ~1.0
        print(
            f"note: linear probe skipped: the train and test splits are both "
            f"{config.data.test_split!r}",
            file=sys.stderr,
        )
        return {}
    train, test = features["train"], features["test"]
    require_train_classes(train.labels, test.labels, "linear probe", config.data.train_split)
    result = linear_probe(train.features, train.labels, test.features, test.labels)
    metrics = classification_metrics(result.test_logits, test.labels)
    return {**metrics, "weight_decay": result.weight_decay}


CLASS_GROUPS = {"": None, "herbs_cub": HERBS_CUB_GROUPS}


def class_groups(config: ml_collections.ConfigDict) -> dict | None:
    """The class groups `config.eval.class_groups` names (None for '')."""
    if config.eval.class_groups not in CLASS_GROUPS:
        raise ValueError(
            f"config.eval.class_groups={config.eval.class_groups!r} is not one of "
            f"{sorted(CLASS_GROUPS)}"
        )
    return CLASS_GROUPS[config.eval.class_groups]


def classify(features: FeaturesBySplit, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Top-1/top-5 and per-class accuracy of the model's own classifier on the test split,
    and per-group accuracy / outer errors for `config.eval.class_groups` (e.g. 'herbs_cub')."""
    test = features["test"]
    return classification_metrics(test.features, test.labels, groups=class_groups(config))


def clustering(features: FeaturesBySplit, config: ml_collections.ConfigDict) -> dict[str, float]:
    """NMI of k-means clusters (k = number of test classes) against the test labels."""
    test = features["test"]
    return {"nmi": clustering_nmi(test.features, test.labels)}


register_protocol("retrieval", Protocol(retrieval, splits=lambda c: ("test",)))
register_protocol("clustering", Protocol(clustering, splits=lambda c: ("test",)))
register_protocol("knn", Protocol(knn, splits=knn_splits))
register_protocol("linear", Protocol(linear, splits=lambda c: ("train", "test")))
register_protocol("classify", Protocol(classify, splits=lambda c: ("test",), output="logits"))
