"""Retrieval, kNN and clustering metrics on adversarial inputs, both backends, against an
independent float64 brute force (full ranking per query), scikit-learn (NMI, k-means)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from fgjax.eval import ranking
from fgjax.eval.clustering import clustering_nmi, kmeans, nmi
from fgjax.eval.knn import knn_classify, knn_top1, nearest_neighbors
from fgjax.eval.retrieval import retrieval_metrics

BACKENDS = ("numpy", "jax")


def _sims(q, g, metric):
    q, g = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return q @ g.T


def _ranking(sims_row, exclude=None):
    """Gallery indices by (similarity desc, index asc), `exclude` removed."""
    idx = np.arange(len(sims_row))
    order = np.lexsort((idx, -sims_row))
    return order[order != exclude] if exclude is not None else order


def reference(q, ql, g, gl, ks, metric="cosine"):
    loo = g is None
    g, gl = (q, ql) if loo else (g, gl)
    sims = _sims(q, g, metric)
    hits, aps, map_r = {k: 0 for k in ks}, [], []
    for i in range(len(q)):
        order = _ranking(sims[i], i if loo else None)
        rel = gl[order] == ql[i]
        for k in ks:
            hits[k] += bool(rel[:k].any())
        r = int(rel.sum())
        if r:
            ranks = np.flatnonzero(rel) + 1
            aps.append(np.mean(np.arange(1, r + 1) / ranks))
            map_r.append(np.sum(np.cumsum(rel[:r]) / np.arange(1, r + 1) * rel[:r]) / r)
    out = {f"recall@{k}": hits[k] / len(q) for k in ks}
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    out["map@r"] = float(np.mean(map_r)) if map_r else float("nan")
    return out


def exact_features(rng, n, d=8, nonzero=4):
    """Rows with `nonzero` entries in {-1, +1}: norm 2, so normalised entries are +-0.5 and
    every cosine is a multiple of 1/4, exact in float32 on any backend: many true ties."""
    x = np.zeros((n, d), np.float32)
    for row in x:
        cols = rng.choice(d, nonzero, replace=False)
        row[cols] = rng.choice([-1.0, 1.0], nonzero)
    return x


def _assert_metrics(out, ref):
    assert set(out) == set(ref)
    for key, value in ref.items():
        if np.isnan(value):
            assert np.isnan(out[key]), key
        else:
            assert out[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


CASES = {
    # name: (seed, n_query, n_gallery or None (leave-one-out), classes)
    "ties, leave-one-out": (0, 120, None, 6),
    "ties, query/gallery": (1, 50, 90, 5),
    "single-member classes": (2, 60, None, 45),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_exact_ties_match_brute_force(case, backend):
    seed, nq, ng, c = CASES[case]
    rng = np.random.default_rng(seed)
    x = exact_features(rng, nq + (ng or 0))
    labels = rng.integers(0, c, len(x))
    q, ql = x[:nq], labels[:nq]
    g, gl = (x[nq:], labels[nq:]) if ng else (None, None)
    ks = (1, 2, 3, 5, 8, 1000)  # 1000 > N - 1: evaluated at the gallery size
    ref = reference(q, ql, g, gl, ks)
    # many blocks with a padded last one, and one block (one jax compile is enough)
    for chunk in (7, 1024) if backend == "numpy" else (7,):
        out = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=chunk, backend=backend)
        _assert_metrics(out, ref)
        fast = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=chunk, compute_map=False)
        assert fast == {k: v for k, v in out.items() if k.startswith("recall")}


def test_duplicates_across_classes_and_identical_features():
    # Item 0 and 1 are the same vector with different labels: the lower index wins.
    g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    gl = np.array([0, 1, 1, 1])
    q, ql = np.array([[2.0, 0.0]], np.float32), np.array([1])
    for backend in BACKENDS:
        out = retrieval_metrics(q, ql, g, gl, ks=(1, 2), backend=backend)
        # ranking 0 (miss), 1 (hit), 3 (hit), 2 (hit): AP = (1/2 + 2/3 + 3/4) / 3
        assert out["recall@1"] == 0.0 and out["recall@2"] == 1.0
        assert out["map"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
        assert out["map@r"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    # all features identical: the ranking is the gallery order (self excluded)
    x = np.ones((30, 4), np.float32)
    labels = np.arange(30) % 4
    ref = reference(x, labels, None, None, (1, 4, 40))
    for backend in BACKENDS:
        _assert_metrics(retrieval_metrics(x, labels, ks=(1, 4, 40), backend=backend), ref)


def test_random_features_both_backends_and_dot_metric():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(12, 32))
    labels = rng.integers(0, 12, 400)
    x = (centers[labels] + 2.5 * rng.normal(size=(400, 32))).astype(np.float32)
    x *= rng.uniform(0.5, 2.0, (400, 1)).astype(np.float32)  # norms matter for 'dot'
    ks = (1, 2, 4, 8, 16)
    for metric in ("cosine", "dot"):
        ref = reference(x[:150], labels[:150], x[150:], labels[150:], ks, metric)
        outs = [
            retrieval_metrics(
                x[:150], labels[:150], x[150:], labels[150:], ks, 64, metric=metric, backend=b
            )
            for b in BACKENDS
        ]
        _assert_metrics(outs[0], ref)
        _assert_metrics(outs[1], ref)
        assert 0.2 < ref["recall@1"] < 0.95  # neither trivial nor hopeless


def test_blocks_bound_memory_and_agree(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    labels = rng.integers(0, 9, 300)
    whole = retrieval_metrics(x, labels, backend="numpy")
    monkeypatch.setattr(ranking, "BLOCK_BYTES", 37 * 300 * 4)  # 37 rows a block
    assert ranking.block_rows(300, 1024) == 37
    assert retrieval_metrics(x, labels, backend="numpy") == pytest.approx(whole, rel=1e-12)


def test_counting_ranks_equal_sorted_ranks():
    """positive_ranks / best_positive_rank vs the position in a stable sort, with ties."""
    rng = np.random.default_rng(5)
    sims = rng.integers(-3, 4, (40, 25)).astype(np.float32) / 4  # heavy ties
    sims[np.arange(40) % 25 == np.arange(40) % 7] = -np.inf  # some -inf (excluded self)
    labels = rng.integers(0, 4, 25)
    qlab = rng.integers(0, 5, 40)  # label 4: no positives
    p = ranking.LabelIndex(labels).positives(qlab, 0, exclude_self=False)
    rank = ranking.positive_ranks(sims, p, np.empty_like(sims))
    best = ranking.best_positive_rank(sims, p)
    for r in range(40):
        position = np.empty(25, int)
        position[_ranking(sims[r].astype(np.float64))] = np.arange(25)
        mine = p.col[p.row == r]
        np.testing.assert_array_equal(rank[p.row == r], position[mine])
        assert best[r] == (position[mine].min() if mine.size else -1)


def test_similarity_accuracy_matches_numpy():
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(600, 2048)) * 3 + 1).astype(np.float32)
    u = ranking.host_rows(x, "cosine")
    err = np.abs(u[:100] @ u.T - _sims(x[:100], x, "cosine")).max()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    numpy_err = np.abs(xn[:100] @ xn.T - _sims(x[:100], x, "cosine")).max()
    assert err <= 1.2 * numpy_err + 1e-8 and err < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_features_are_errors_naming_rows(backend):
    x = np.random.default_rng(7).normal(size=(20, 4)).astype(np.float32)
    bad = x.copy()
    bad[[3, 11]] = np.nan
    bad[5, 0] = np.inf
    labels = np.arange(20) % 3
    with pytest.raises(ValueError, match=r"query_feats \(test split\): 3 of 20 rows .* 3, 5, 11"):
        retrieval_metrics(bad, labels, split="test", backend=backend)
    with pytest.raises(ValueError, match=r"gallery_feats: 3 of 20 rows"):
        retrieval_metrics(x, labels, bad, labels, backend=backend)
    with pytest.raises(ValueError, match=r"bank features \(train split\): 3 of 20"):
        knn_classify(bad, labels, x, 3, split="train", backend=backend)
    with pytest.raises(ValueError, match=r"query features: 3 of 20"):
        nearest_neighbors(bad, x, 3, backend=backend)


# --------------------------------------------------------------------------- kNN


def _brute_knn(bank, bank_labels, queries, c, k, t, vote):
    loo = queries is None
    queries = bank if loo else queries
    sims = _sims(queries, bank, "cosine")
    preds = []
    for i in range(len(queries)):
        nn = _ranking(sims[i], i if loo else None)[:k]
        w = np.ones(len(nn)) if vote == "majority" else np.exp(sims[i, nn] / t)
        preds.append(np.argmax(np.bincount(bank_labels[nn], w, minlength=c)))
    return np.array(preds)


@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("loo", [False, True], ids=["bank", "leave-one-out"])
def test_knn_votes_with_ties_both_backends(vote, loo):
    rng = np.random.default_rng(8)
    x = exact_features(rng, 160)  # tied similarities, also at the k-th neighbour
    labels = rng.integers(0, 5, 160)
    bank, bl = x[:100], labels[:100]
    queries, ql = (None, None) if loo else (x[100:], labels[100:])
    for k in (1, 7, 200):  # 200 > bank size: clamped
        ref = _brute_knn(bank, bl, queries, 5, k, 0.1, vote)
        for backend in BACKENDS:
            preds = knn_classify(bank, bl, queries, 5, k, 0.1, 16, loo, vote=vote, backend=backend)
            np.testing.assert_array_equal(preds, ref)
        acc = knn_top1(bank, bl, queries, ql, 5, k, 0.1, leave_one_out=loo, vote=vote)
        assert acc == pytest.approx(np.mean(ref == (bl if loo else ql)))


def test_nearest_neighbors_tie_order_and_coarse_labels():
    rng = np.random.default_rng(9)
    x = exact_features(rng, 90)
    sims = _sims(x, x, "cosine")
    for backend in BACKENDS:
        s, idx = nearest_neighbors(None, x, 12, chunk_size=32, backend=backend)
        for i in range(90):
            np.testing.assert_array_equal(idx[i], _ranking(sims[i], i)[:12])
        np.testing.assert_allclose(s, np.take_along_axis(sims, idx, 1), atol=1e-7)
    # coarse labels: the same vote over the coarse ids
    fine = rng.integers(0, 6, 90)
    coarse = fine // 3
    ref = _brute_knn(x[:60], coarse[:60], x[60:], 2, 10, 0.1, "weighted")
    acc = knn_top1(x[:60], coarse[:60], x[60:], coarse[60:], 2, k=10)
    assert acc == pytest.approx(np.mean(ref == coarse[60:]))


# --------------------------------------------------------------------------- clustering


def test_nmi_matches_sklearn():
    rng = np.random.default_rng(10)
    for n, a_classes, b_classes in [(500, 7, 5), (50, 50, 3), (30, 1, 4), (40, 1, 1)]:
        a = rng.integers(0, a_classes, n) * 3 - 2  # arbitrary label values
        b = rng.integers(0, b_classes, n)
        assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    assert nmi(a, a) == pytest.approx(1.0)


def test_kmeans_quality_and_clustering_nmi():
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(15, 24))
    labels = rng.integers(0, 15, 900)
    x = (centers[labels] + 0.7 * rng.normal(size=(900, 24))).astype(np.float32)
    _, assign, inertia = kmeans(x, 15, n_init=5, seed=0)
    sk = KMeans(15, n_init=5, random_state=0).fit(x)
    assert inertia <= sk.inertia_ * 1.02
    direct = float(((x - np.stack([x[assign == c].mean(0) for c in range(15)])[assign]) ** 2).sum())
    assert inertia == pytest.approx(direct, rel=1e-4)
    assert kmeans(x, 15, n_init=5, seed=0)[2] == inertia  # fixed seed: deterministic
    score = clustering_nmi(x, labels, n_init=2)
    assert score > 0.9
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, assign, _ = kmeans(unit, 15, n_init=2, seed=0)
    assert score == pytest.approx(normalized_mutual_info_score(labels, assign), abs=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        clustering_nmi(np.full((5, 3), np.nan, np.float32), np.arange(5))


# --------------------------------------------------------------------------- trainer evaluation


def test_evaluator_map_only_when_final_or_asked():
    from types import SimpleNamespace

    from fgjax.config import default_config
    from fgjax.eval.features import Features
    from fgjax.eval.suite import Evaluator

    rng = np.random.default_rng(12)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    y = (np.arange(40) % 4).astype(np.int32)
    feats = Features(x, y, np.full(40, -1, np.int32))
    extractor = SimpleNamespace(
        extract=lambda split, embed, state: feats,
        sources={s: SimpleNamespace(num_classes=4) for s in ("train", "test")},
    )
    config = default_config("supervised")
    config.eval.knn_bank = "test"
    evaluate = Evaluator(config, extractor, embed=None)
    final, periodic = evaluate(None), evaluate(None, periodic=True)
    assert final["retrieval_map"] == pytest.approx(reference(x, y, None, None, (1,))["map"])
    assert "retrieval_map" not in periodic and "retrieval_map@r" not in periodic
    assert periodic == {k: v for k, v in final.items() if not k.startswith("retrieval_map")}
    config.eval.periodic_map = True
    assert Evaluator(config, extractor, embed=None)(None, periodic=True) == final


def test_the_evaluation_kmeans_matches_sklearn_quality_on_overlapping_clusters():
    """Issue #30: with 3 restarts the clustering NMI came out below KMeans(n_init=10). NMI
    swings per seed, so the objective is compared: over 5 seeded sets of 50 overlapping
    clusters the default (10 restarts, `clustering.N_INIT`) reaches sklearn's inertia on
    average (measured 0.9996 of it; 3 restarts: 1.0044)."""
    ratios = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 50, 2000)
        x = rng.normal(size=(50, 64))[labels] + rng.normal(scale=1.6, size=(2000, 64))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        sk = KMeans(50, n_init=10, random_state=0).fit(x)
        ratios.append(kmeans(x, 50)[2] / sk.inertia_)
    assert np.mean(ratios) <= 1.002, ratios
