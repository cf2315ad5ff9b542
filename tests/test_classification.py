"""Classification metrics against scikit-learn and hand-counted cases, including classes
absent from the test labels, ties in the scores and HERBS's outer errors."""

import numpy as np
import pytest
from sklearn import metrics as skm

from fgjax.eval.classification import (
    HERBS_CUB_GROUPS,
    classification_metrics,
    confusion_matrix,
    group_errors,
    per_class_accuracy,
    predictions,
    topk_accuracy,
)


def _random(seed: int, n: int = 300, c: int = 12, absent=(3, 7)):
    rng = np.random.default_rng(seed)
    present = np.setdiff1d(np.arange(c), absent)
    labels = rng.choice(present, n).astype(np.int32)
    scores = rng.normal(size=(n, c)).astype(np.float32)
    scores[np.arange(n), labels] += 1.0  # better than chance, still many errors
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_sklearn_with_absent_classes(seed):
    scores, labels = _random(seed)
    c = scores.shape[1]
    preds = predictions(scores)
    # Absent classes 3 and 7 are still predicted sometimes: columns, not rows, of the matrix.
    assert np.isin(preds, [3, 7]).any()
    cm = confusion_matrix(labels, preds, c)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=np.arange(c)))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        balanced = skm.balanced_accuracy_score(labels, preds)
    assert per_class_accuracy(cm) == pytest.approx(balanced, abs=1e-12)
    out = classification_metrics(scores, labels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        expected = skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(c))
        assert out[f"top{k}"] == pytest.approx(expected, abs=1e-12)
        assert topk_accuracy(scores, labels, k) == out[f"top{k}"]
    assert out["top1"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert out["per_class_accuracy"] == pytest.approx(balanced)


def test_ties_go_to_the_lower_class_index():
    # Every score equal: the true class ranks at its own index.
    scores = np.zeros((4, 5), np.float32)
    labels = np.array([0, 1, 2, 4], np.int32)
    assert topk_accuracy(scores, labels, 1) == 0.25  # only class 0 is the argmax
    assert topk_accuracy(scores, labels, 2) == 0.5
    assert topk_accuracy(scores, labels, 5) == 1.0
    # scikit-learn breaks ties towards the higher index: mirroring the class order turns
    # its rule into ours, an independent check on random tied scores.
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, (200, 6)).astype(np.float32)  # many ties
    labels = rng.integers(0, 6, 200).astype(np.int32)
    for k in (1, 2, 4):
        mirrored = skm.top_k_accuracy_score(5 - labels, scores[:, ::-1], k=k, labels=range(6))
        assert topk_accuracy(scores, labels, k) == pytest.approx(mirrored, abs=1e-12)
    assert topk_accuracy(scores, labels, 1) == pytest.approx(
        np.mean(np.argmax(scores, 1) == labels)
    )


def test_k_beyond_the_class_count_and_bad_inputs():
    scores, labels = _random(4, n=20, c=4, absent=())
    assert topk_accuracy(scores, labels, 10) == 1.0
    bad = scores.copy()
    bad[[2, 5], 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match="3 of 20 rows are not finite.*row 2"):
        classification_metrics(bad, labels)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        topk_accuracy(scores, np.full(20, 4, np.int32), 1)


def test_outer_errors_follow_herbs_definition():
    # 6 classes; group A = {0, 1, 2}, group B = {4, 5}; class 3 is in no group.
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 4, 4, 5])
    preds = np.array([0, 1, 1, 3, 5, 2, 0, 4, 0, 5])
    cm = confusion_matrix(labels, preds, 6)
    got = group_errors(cm, {"A": [0, 1, 2], "B": [4, 5], "empty": [3]})
    # A: 6 examples, 3 correct (0, 1, 2 at positions 0, 2, 5), 1->3 and 2->5 leave the
    # group (outer), 0->1 stays inside (inner error).
    assert got["A"] == {"accuracy": 0.5, "outer_errors": 2.0, "count": 6.0}
    assert got["B"] == {"accuracy": 2 / 3, "outer_errors": 1.0, "count": 3.0}
    assert got["empty"]["outer_errors"] == 1.0  # the class-3 example predicted as 0
    # Independent HERBS-style loop: matrix with an "outside" column per group.
    for name, members in {"A": [0, 1, 2], "B": [4, 5]}.items():
        outside = sum(
            1 for t, p in zip(labels, preds, strict=True) if t in members and p not in members
        )
        assert got[name]["outer_errors"] == outside
    out = classification_metrics(np.eye(6)[preds], labels, groups={"A": [0, 1, 2], "B": [4, 5]})
    assert out["outer_errors"] == 3.0 and out["A/accuracy"] == 0.5
    with pytest.raises(ValueError, match="class group 'bad'"):
        group_errors(cm, {"bad": [6]})


def test_herbs_cub_groups_are_the_documented_ranges():
    sizes = {name: len(m) for name, m in HERBS_CUB_GROUPS.items()}
    assert sizes == {
        "flycatcher": 7,
        "gull": 8,
        "kingfisher": 5,
        "sparrow": 21,
        "tern": 7,
        "vireo": 7,
        "warbler": 25,
        "woodpecker": 6,
        "wren": 7,
    }
    assert HERBS_CUB_GROUPS["wren"][-1] == 198 and HERBS_CUB_GROUPS["flycatcher"][0] == 36
