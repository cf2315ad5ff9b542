"""The evaluation protocols' config knobs (kNN vote and label level, classification
groups) against numpy recomputations on the same features."""

import numpy as np
import pytest

from fgjax.config import default_config
from fgjax.eval.features import Features
from fgjax.eval.protocols import classify, knn, linear, retrieval


def _features(rng, n, dim=6, classes=6):
    labels = rng.integers(0, classes, n).astype(np.int32)
    centres = rng.normal(size=(classes, dim))
    feats = (centres[labels] + rng.normal(scale=1.5, size=(n, dim))).astype(np.float32)
    return Features(feats, labels, (labels // 3).astype(np.int32))


def _knn_numpy(bank, bank_labels, queries, k, temperature, vote, classes):
    """Cosine kNN by brute force: ties to the lower bank index, vote ties to the lower class."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ b.T.astype(np.float64)
    preds = []
    for row in sims:
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        weights = np.exp(row[order] / temperature) if vote == "weighted" else np.ones(k)
        preds.append(np.argmax(np.bincount(bank_labels[order], weights, minlength=classes)))
    return np.array(preds)


@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("level", ["fine", "coarse"])
def test_knn_vote_and_label_level(vote, level):
    rng = np.random.default_rng(0)
    train, test = _features(rng, 120), _features(rng, 50)
    c = default_config("supervised")
    c.eval.knn_k, c.eval.knn_vote, c.eval.knn_labels = 7, vote, level
    got = knn({"train": train, "test": test}, c)["top1"]
    pick = (lambda f: f.labels) if level == "fine" else (lambda f: f.coarse_labels)
    classes = int(pick(train).max()) + 1
    preds = _knn_numpy(train.features, pick(train), test.features, 7, 0.1, vote, classes)
    assert got == pytest.approx(np.mean(preds == pick(test)))


def test_knn_coarse_without_coarse_labels_is_an_error():
    rng = np.random.default_rng(1)
    train, test = _features(rng, 20), _features(rng, 10)
    train = train._replace(coarse_labels=np.full(20, -1, np.int32))
    c = default_config("supervised")
    c.eval.knn_labels = "coarse"
    with pytest.raises(ValueError, match="knn_labels='coarse': the train split has no coarse"):
        knn({"train": train, "test": test}, c)


def test_classify_reports_herbs_outer_errors():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 200, 400).astype(np.int32)
    logits = rng.normal(size=(400, 200)).astype(np.float32)
    logits[np.arange(400), labels] += 2.0
    test = Features(logits, labels, np.full(400, -1, np.int32))
    c = default_config("supervised")
    c.eval.class_groups = "herbs_cub"
    got = classify({"test": test}, c)
    preds = logits.argmax(1)
    warbler = (labels >= 157) & (labels <= 181)
    outside = warbler & ((preds < 157) | (preds > 181))
    assert got["warbler/outer_errors"] == outside.sum()
    assert got["top1"] == pytest.approx(np.mean(preds == labels))
    c.eval.class_groups = "herbs"
    with pytest.raises(ValueError, match="class_groups='herbs' is not one of"):
        classify({"test": test}, c)


def test_held_out_test_classes_are_refused_by_knn_on_train_and_the_probe():
    rng = np.random.default_rng(3)
    train, test = _features(rng, 60, classes=4), _features(rng, 30, classes=6)
    test = test._replace(labels=np.maximum(test.labels, 1))  # classes 1..5, 4 and 5 unseen
    c = default_config("supervised")
    c.eval.knn_k = 5
    with pytest.raises(ValueError, match=r"kNN .* 2 test classes \(labels 4, 5\) have no image"):
        knn({"train": train, "test": test}, c)
    with pytest.raises(ValueError, match=r"linear probe: 2 test classes"):
        linear({"train": train, "test": test}, c)
    c.eval.knn_bank = "test"  # leave-one-out on test: fine for held-out classes
    assert 0 <= knn({"train": train, "test": test}, c)["top1"] <= 1


def test_one_split_for_train_and_test_is_leave_one_out_and_skips_the_probe(capsys):
    rng = np.random.default_rng(4)
    split = _features(rng, 40)
    c = default_config("supervised")
    c.eval.knn_k = 5
    c.data.train_split = c.data.test_split = "all"
    same = knn({"train": split, "test": split}, c)["top1"]  # each query matched itself: 1.0
    c.eval.knn_bank = "test"
    assert same == knn({"test": split}, c)["top1"] < 1.0
    assert linear({"train": split, "test": split}, c) == {}
    assert "linear probe skipped" in capsys.readouterr().err


def test_retrieval_says_how_many_queries_have_no_positive(capsys):
    rng = np.random.default_rng(5)
    test = _features(rng, 30, classes=3)
    test = test._replace(labels=np.concatenate([test.labels[:28] % 3, [7, 9]]).astype(np.int32))
    c = default_config("supervised")
    found = retrieval({"test": test}, c)
    err = capsys.readouterr().err
    assert "2 of 30 test queries are the only image of their class" in err
    assert "at most 0.9333" in err and found["recall@8"] <= 28 / 30
