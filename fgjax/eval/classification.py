"""Classification metrics of scores (logits or probabilities) against labels, in numpy.

- `topk_accuracy`: fraction of examples whose true class is among the k best scores.
- `per_class_accuracy`: mean over the classes present in the labels of their recall
  (scikit-learn's `balanced_accuracy_score`).
- `confusion_matrix`: `[C, C]` counts, row = true class, column = predicted class;
  `class_accuracies`: the recall of every class.
- `group_confusion`: HERBS' in-group matrix with the extra "outside" column;
  `group_errors`: HERBS's fine-class accuracy and "outer errors" for user-given groups of
  confusable classes (../shared/methods/herbs.md section 6.2).
- `classification_metrics`: all of the above as one flat `{name: float}` dict.

Ties: a class with the same score as the true class ranks before it iff its index is
lower, so the prediction (top-1) is `np.argmax` (the lowest index among the best scores)
and top-k is `jax.lax.top_k`'s order. scikit-learn's `top_k_accuracy_score` breaks ties
the other way (higher index first); the two agree whenever there are no ties.
Scores must be finite: a NaN or infinite row is an error naming how many rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# HERBS's 9 confusable CUB-200-2011 groups, 0-based class ids (inclusive ranges in
# herbs.md section 6.2; the HERBS script's 26-wide wren matrix is a bug not copied here).
HERBS_CUB_GROUPS: dict[str, tuple[int, ...]] = {
    name: tuple(range(lo, hi + 1))
    for name, (lo, hi) in {
        "flycatcher": (36, 42),
        "gull": (58, 65),
        "kingfisher": (78, 82),
        "sparrow": (112, 132),
        "tern": (140, 146),
        "vireo": (150, 156),
        "warbler": (157, 181),
        "woodpecker": (186, 191),
        "wren": (192, 198),
    }.items()
}


def _check(scores: np.ndarray, labels: np.ndarray, what: str = "scores") -> tuple[int, int]:
    """Validates `scores [N, C]` finite and `labels [N]` integers in [0, C); returns (N, C)."""
    if scores.ndim != 2:
        raise ValueError(f"{what} must be [N, C], got shape {scores.shape}")
    n, c = scores.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    bad = ~np.all(np.isfinite(scores), axis=1)
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} of {n} rows are not finite (NaN or inf), "
            f"first at row {int(np.argmax(bad))}"
        )
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got [{labels.min()}, {labels.max()}]")
    return n, c


def true_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank `[N]` of each true class under the module's tie rule: the number of
    classes scored higher, plus those scored equal with a lower index."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    _check(scores, labels)
    true = np.take_along_axis(scores, labels[:, None], axis=1)
    lower = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return np.sum((scores > true) | ((scores == true) & lower), axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of the N examples whose true class is among the `k` best of `scores [N, C]`
    (k is clamped to C)."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return float(np.mean(true_class_rank(scores, labels) < k))


def predictions(scores: np.ndarray) -> np.ndarray:
    """Top-1 class `[N]` int32 of `scores [N, C]`: the lowest index among the best scores."""
    return np.argmax(np.asarray(scores), axis=1).astype(np.int32)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """`[C, C]` int64 counts: entry (i, j) = examples of true class i predicted as j."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must be equal [N]")
    for name, x in (("labels", labels), ("preds", preds)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{x.min()}, {x.max()}]")
    flat = labels.astype(np.int64) * num_classes + preds
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, -1)


def class_accuracies(confusion: np.ndarray) -> np.ndarray:
    """`[C]` float64 recall of every class (diagonal over row sum); NaN for a class
    without examples."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / support, np.nan)


def per_class_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes that have examples (rows with a non-zero sum): a class
    absent from the test labels is left out, as in `balanced_accuracy_score`."""
    recall = class_accuracies(confusion)
    if np.isnan(recall).all():
        raise ValueError("no examples: per-class accuracy is undefined")
    return float(np.nanmean(recall))


def group_members(name: str, members: Sequence[int], num_classes: int) -> np.ndarray:
    """The sorted distinct class ids of group `name`, checked to lie in [0, num_classes)."""
    idx = np.asarray(sorted(set(int(m) for m in members)), np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= num_classes:
        raise ValueError(
            f"class group {name!r} must be a non-empty list of class ids in "
            f"[0, {num_classes}), got {list(members)}"
        )
    return idx


def group_confusion(confusion: np.ndarray, members: np.ndarray) -> np.ndarray:
    """HERBS' matrix of one group (spec 6.2): `[n, n + 1]` int64 for its n classes
    (`members`, sorted ids): entry (i, j < n) counts examples of class members[i]
    predicted as members[j]; column n ("outside") those predicted outside the group."""
    rows = confusion[members]
    inside = rows[:, members]
    return np.concatenate([inside, (rows.sum(axis=1) - inside.sum(axis=1))[:, None]], axis=1)


def group_errors(
    confusion: np.ndarray, groups: Mapping[str, Sequence[int]]
) -> dict[str, dict[str, float]]:
    """HERBS's per-group numbers. For the test examples whose true class lies in a group:
    `accuracy` = fraction predicted correctly (the trace of the in-group matrix over its
    total), `outer_errors` = how many were predicted as a class outside the group (the
    "outside" column), `count` = how many there are. `accuracy` is NaN for a group
    without test examples."""
    out = {}
    for name, members in groups.items():
        m = group_confusion(confusion, group_members(name, members, confusion.shape[0]))
        count = int(m.sum())
        out[name] = {
            "accuracy": int(np.trace(m)) / count if count else float("nan"),
            "outer_errors": float(m[:, -1].sum()),
            "count": float(count),
        }
    return out


def classification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 5),
    groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
    """`{'top{k}': ..., 'per_class_accuracy': ...}` of `scores [N, C]` against `labels [N]`,
    plus `'{group}/accuracy'`, `'{group}/outer_errors'`, `'{group}/count'` for every
    group, and `'outer_errors'`, their total (groups should then be disjoint)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    n, c = _check(scores, labels)
    if n == 0:
        raise ValueError("no examples to evaluate")
    rank = true_class_rank(scores, labels)
    out = {f"top{k}": float(np.mean(rank < k)) for k in ks}
    confusion = confusion_matrix(labels, predictions(scores), c)
    out["per_class_accuracy"] = per_class_accuracy(confusion)
    if groups:
        per_group = group_errors(confusion, groups)
        for name, values in per_group.items():
            out.update({f"{name}/{key}": v for key, v in values.items()})
        out["outer_errors"] = float(sum(v["outer_errors"] for v in per_group.values()))
    return out
