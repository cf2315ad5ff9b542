"""BuCSFR's evaluation protocol (spec 7.1): kNN accuracy at several K from one neighbour
search (against scikit-learn and a numpy brute force, ties included, both backends),
Recall@K with K beyond the gallery, and each metric's best over the periodic evaluations."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from test_retrieval_metrics import exact_features

from fgjax.config import default_config
from fgjax.eval import knn as knn_module
from fgjax.eval.features import Features
from fgjax.eval.knn import knn_classify_multi, knn_top1, knn_top1_multi
from fgjax.eval.protocols import knn, knn_splits, retrieval
from fgjax.eval.retrieval import retrieval_metrics
from fgjax.train.loop import _EvalHistory, _format_best

BUCSFR_KS = (1, 2, 5, 10, 50, 100, 200)  # 100 and 200 exceed the banks below: clamped
BACKENDS = ("numpy", "jax")
T = 0.1


def _sklearn_predict(bank, labels, queries, k, vote):
    """scikit-learn's kNN classifier: brute-force cosine, majority (scipy mode: ties to the
    smallest label) or exp(sim / T) weights; `queries=None` leaves each bank item out."""
    weights = "uniform" if vote == "majority" else (lambda dist: np.exp((1.0 - dist) / T))
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine", weights=weights)
    return clf.fit(bank, labels).predict(queries)


@pytest.mark.parametrize("vote", ["majority", "weighted"])
@pytest.mark.parametrize("loo", [False, True], ids=["train-bank", "leave-one-out"])
def test_several_k_match_sklearn_from_one_search(vote, loo, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(130, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 130)  # 3 classes: many tied majority votes
    bank, bl = x[:90], labels[:90]
    queries, ql = (None, None) if loo else (x[90:], labels[90:])
    n_eff = len(bank) - int(loo)
    searches = []
    top_k = knn_module.ranking.top_k
    monkeypatch.setattr(knn_module.ranking, "top_k", lambda s, k: searches.append(k) or top_k(s, k))
    for backend in BACKENDS:
        preds = knn_classify_multi(
            bank, bl, queries, 3, BUCSFR_KS, T, 16, loo, vote=vote, backend=backend
        )
        assert preds.shape == (len(BUCSFR_KS), 90 if loo else 40)
        for k, got in zip(BUCSFR_KS, preds, strict=True):
            want = _sklearn_predict(bank, bl, queries, min(k, n_eff), vote)
            np.testing.assert_array_equal(got, want, err_msg=f"{backend} k={k}")
    # numpy: one top-max(K) search per block of 16 queries (40 or 90 of them), not one per K
    assert searches == [n_eff] * (6 if loo else 3)
    if vote == "majority":  # k=2 with two different labels: the smaller label wins
        nn = NearestNeighbors(n_neighbors=2, metric="cosine", algorithm="brute").fit(bank)
        pair = bl[nn.kneighbors(queries, return_distance=False)]
        tied = pair[:, 0] != pair[:, 1]
        assert tied.sum() > 5
        np.testing.assert_array_equal(preds[1][tied], pair[tied].min(axis=1))
    accs = knn_top1_multi(bank, bl, queries, ql, 3, (5, 200, 1), T, leave_one_out=loo, vote=vote)
    assert list(accs) == [5, 200, 1]
    target = bl if loo else ql
    assert accs[5] == pytest.approx(np.mean(preds[2] == target))
    assert accs[200] == knn_top1(bank, bl, queries, ql, 3, 200, T, leave_one_out=loo, vote=vote)


def _brute_prefix_votes(bank, bank_labels, queries, ks, vote, classes):
    """Cosine neighbours by (similarity desc, bank index asc), vote ties to the lower class."""
    loo = queries is None
    q = bank if loo else queries
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float64) @ bn.T
    out = np.zeros((len(ks), len(q)), np.int64)
    for i, row in enumerate(sims):
        order = np.lexsort((np.arange(len(row)), -row))
        order = order[order != i] if loo else order
        for j, k in enumerate(ks):
            nn = order[:k]
            w = np.ones(len(nn)) if vote == "majority" else np.exp(row[nn] / T)
            out[j, i] = np.argmax(np.bincount(bank_labels[nn], w, minlength=classes))
    return out


@pytest.mark.parametrize("loo", [False, True], ids=["train-bank", "leave-one-out"])
def test_several_k_with_tied_similarities_both_backends(loo):
    rng = np.random.default_rng(1)
    x = exact_features(rng, 120)  # cosines are multiples of 1/4: ties at every prefix end
    labels = rng.integers(0, 4, 120)
    bank, bl = x[:80], labels[:80]
    queries = None if loo else x[80:]
    ks = (7, 1, 3, 7, 30, 500)  # any order, repeats, beyond the bank
    for vote in ("majority", "weighted"):
        ref = _brute_prefix_votes(
            bank, bl, queries, [min(k, 79 if loo else 80) for k in ks], vote, 4
        )
        for backend in BACKENDS:
            got = knn_classify_multi(
                bank, bl, queries, 4, ks, T, 32, loo, vote=vote, backend=backend
            )
            np.testing.assert_array_equal(got, ref, err_msg=f"{vote} {backend}")


def _features(rng, n, classes=4):
    labels = rng.integers(0, classes, n).astype(np.int32)
    feats = rng.normal(size=(n, 6)).astype(np.float32) + labels[:, None]
    return Features(feats, labels, labels // 2)


def test_knn_protocol_reports_each_k_and_checks_knn_ks():
    rng = np.random.default_rng(2)
    feats = {"train": _features(rng, 60), "test": _features(rng, 25)}
    c = default_config("supervised")
    assert c.eval.knn_ks == ()
    assert set(knn(feats, c)) == {"top1"}
    c.eval.knn_vote, c.eval.knn_k, c.eval.knn_ks = "majority", 3, BUCSFR_KS
    got = knn(feats, c)
    assert list(got) == ["top1", *(f"top1@{k}" for k in BUCSFR_KS)]
    train, test = feats["train"], feats["test"]
    for k in (3, *BUCSFR_KS):
        want = np.mean(
            _sklearn_predict(train.features, train.labels, test.features, min(k, 60), "majority")
            == test.labels
        )
        assert got["top1" if k == 3 else f"top1@{k}"] == pytest.approx(want), k
    c.eval.knn_bank = "test"  # leave-one-out on test
    loo = knn(feats, c)
    want = np.mean(_sklearn_predict(test.features, test.labels, None, 5, "majority") == test.labels)
    assert loo["top1@5"] == pytest.approx(want) and loo["top1@200"] == loo["top1@100"]
    for bad in ((0, 5), (1.5,), (True,)):
        c.eval.knn_ks = bad
        with pytest.raises(ValueError, match="config.eval.knn_ks must be a tuple of positive"):
            knn_splits(c)  # checked before any extraction


def test_recall_at_k_beyond_the_test_split():
    """Recall@K for K >= N - 1 (leave-one-out) is evaluated at the whole gallery: whether
    the query's class has another test item at all."""
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # class 3: a single item
    x = rng.normal(size=(12, 5)).astype(np.float32)
    sims = x @ x.T / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1))
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :11]  # self last, dropped
    match = labels[order] == labels[:, None]
    ks = (*BUCSFR_KS, 11, 12)  # 11 = N - 1: the whole gallery
    want = {f"recall@{k}": match[:, :k].any(axis=1).mean() for k in ks}
    assert want["recall@200"] == want["recall@12"] == want["recall@11"] == 11 / 12
    for backend in BACKENDS:
        got = retrieval_metrics(x, labels, ks=ks, compute_map=False, backend=backend)
        assert got == pytest.approx(want), backend
    c = default_config("supervised")
    c.eval.recall_ks = BUCSFR_KS  # the protocol path (numpy on the CPU)
    got = retrieval({"test": Features(x, labels, labels)}, c, with_map=False)
    assert got == pytest.approx({f"recall@{k}": want[f"recall@{k}"] for k in BUCSFR_KS})


def test_best_each_takes_every_metric_at_its_own_best_epoch(tmp_path, capsys):
    history = _EvalHistory(str(tmp_path), "retrieval_recall@1")
    history.add(
        10,
        1.0,
        {
            "retrieval_recall@1": 0.5,
            "knn_top1@1": 0.7,
            "retrieval_map": float("nan"),
            "herbs/vote/outer_errors": 3.0,
            "herbs/vote/g/count": 9.0,
        },
    )
    history.add(
        20,
        2.0,
        {
            "retrieval_recall@1": 0.6,
            "knn_top1@1": 0.7,  # tie: the earlier evaluation is kept
            "retrieval_map": 0.4,
            "herbs/vote/outer_errors": 5.0,  # more mistakes: worse
            "herbs/vote/g/count": 9.0,
        },
    )
    best = history.best_each()
    assert best == {
        "retrieval_recall@1": {"value": 0.6, "epoch": 2.0, "step": 20},
        "knn_top1@1": {"value": 0.7, "epoch": 1.0, "step": 10},
        "retrieval_map": {"value": 0.4, "epoch": 2.0, "step": 20},
        "herbs/vote/outer_errors": {"value": 3.0, "epoch": 1.0, "step": 10},
    }
    assert history.best() == {"step": 20, "epoch": 2.0, "retrieval_recall@1": 0.6}
    resumed = _EvalHistory(str(tmp_path), "retrieval_recall@1")  # eval_history.json
    assert resumed.best_each() == best
    assert _format_best(best).startswith("retrieval_recall@1=0.6000@2  knn_top1@1=0.7000@1")
