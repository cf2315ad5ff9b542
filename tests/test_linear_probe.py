"""The fast linear probe against scikit-learn's LogisticRegression on the same features
(C = 1 / (N * wd)): test accuracy within 1 point and the objective at convergence."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fgjax.eval.linear_probe import linear_probe, preprocess, stratified_split

N_TRAIN, N_TEST, DIM, CLASSES = 500, 400, 48, 8  # one shape: one compile for every test


def _clustered(seed: int, spread: float):
    """Gaussian classes around random centres; `spread` small = hard (overlapping)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM)) * spread
    scale = rng.uniform(0.5, 3.0, DIM)  # unequal feature scales: standardisation matters

    def draw(n):
        y = np.arange(n) % CLASSES
        return ((centres[y] + rng.normal(size=(n, DIM))) * scale).astype(np.float32), y

    (x, y), (xt, yt) = draw(N_TRAIN), draw(N_TEST)
    return x, y.astype(np.int32), xt, yt.astype(np.int32)


def _objective64(x, y, w, b, wd):
    logits = x.astype(np.float64) @ w + b
    top = logits.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return np.mean(lse - logits[np.arange(len(y)), y]) + 0.5 * wd * np.sum(w**2)


def _sklearn(x, y, wd):
    return LogisticRegression(C=1.0 / (len(y) * wd), max_iter=5000, tol=1e-8).fit(x, y)


@pytest.mark.parametrize("data", ["clustered", "random"])
def test_matches_sklearn_accuracy_and_objective(data):
    if data == "clustered":
        x, y, xt, yt = _clustered(0, spread=0.35)
    else:  # no signal: random features and labels, near chance
        rng = np.random.default_rng(1)
        x, xt = rng.normal(size=(N_TRAIN, DIM)), rng.normal(size=(N_TEST, DIM))
        y, yt = (rng.integers(0, CLASSES, n).astype(np.int32) for n in (N_TRAIN, N_TEST))
    result = linear_probe(x, y, xt, yt, num_classes=CLASSES)
    assert result.converged
    assert len(result.val_top1) == 11 and result.weight_decay in result.val_top1
    # Same preprocessing (StandardScaler = per-dimension mean / population std of train).
    scaler = StandardScaler().fit(x)
    sk = _sklearn(scaler.transform(x), y, result.weight_decay)
    sk_top1 = float(np.mean(sk.predict(scaler.transform(xt)) == yt))
    assert abs(result.top1 - sk_top1) <= 0.01, (result.top1, sk_top1)
    if data == "clustered":
        assert 0.5 < result.top1 < 0.98  # a problem with errors to disagree on
        assert result.top5 > result.top1
    else:
        assert result.top1 < 0.25  # chance is 1/8
    # Our logits' argmax equals ours' top-1; sklearn's objective value is not below ours.
    assert result.top1 == pytest.approx(np.mean(np.argmax(result.test_logits, 1) == yt))
    xs, _ = preprocess(x, xt)
    sk_loss = _objective64(xs, y, sk.coef_.T, sk.intercept_, result.weight_decay)
    assert result.loss == pytest.approx(sk_loss, rel=2e-5)


def test_chosen_weight_decay_is_the_best_on_validation():
    x, y, xt, yt = _clustered(2, spread=0.3)
    grid = (1e-4, 1e-2, 1.0)
    result = linear_probe(x, y, xt, yt, num_classes=CLASSES, weight_decays=grid)
    # Recompute the validation accuracies with scikit-learn on the same split.
    val = stratified_split(y, 0.2, seed=0)
    xs, _ = preprocess(x, xt)
    for wd in grid:
        sk = _sklearn(xs[~val], y[~val], wd)
        assert result.val_top1[wd] == pytest.approx(
            np.mean(sk.predict(xs[val]) == y[val]), abs=0.02
        )
    assert result.val_top1[result.weight_decay] == max(result.val_top1.values())
    assert len(set(result.val_top1.values())) > 1  # the choice is not a tie


def test_stratified_split_is_deterministic_and_per_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    val = stratified_split(labels, 0.2, seed=3)
    counts = {c: int(val[labels == c].sum()) for c in range(4)}
    assert counts == {0: 2, 1: 1, 2: 0, 3: 0}  # round(0.4) = 0; a single example stays
    np.testing.assert_array_equal(val, stratified_split(labels, 0.2, seed=3))
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=4))


def test_preprocessing_modes_and_errors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5)) * [1, 2, 3, 4, 0] + 7  # the last dimension is constant
    xs, xt = preprocess(x, x[:3], "standardize")
    np.testing.assert_allclose(xs.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(xs.std(0), [1, 1, 1, 1, 0], atol=1e-5)
    np.testing.assert_array_equal(xt, xs[:3])  # test rows use the train statistics
    xl, _ = preprocess(x, x, "l2")
    np.testing.assert_allclose(np.linalg.norm(xl, axis=1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match="preprocess must be"):
        preprocess(x, x, "pca")
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="train features: 1 of 20 rows are not finite"):
        linear_probe(bad, np.arange(20) % 2, x, np.arange(20) % 2)
