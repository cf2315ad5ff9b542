"""Retrieval and kNN metrics against brute-force numpy (full matrix + argsort) and scikit-learn."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.neighbors import NearestNeighbors

from fgjax.eval import retrieval
from fgjax.eval.knn import knn_classify, knn_top1, nearest_neighbors
from fgjax.eval.retrieval import retrieval_metrics

# --------------------------------------------------------------------------- references


def _cosine(q, g):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q.astype(np.float64) @ g.astype(np.float64).T


def _brute_retrieval(q, ql, g, gl, ks):
    """Whole [Nq, Ng] matrix, a full ranking per query, AP from the rank positions."""
    loo = g is None
    if loo:
        g, gl = q, ql
    sims = _cosine(q, g)
    if loo:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    n_gallery = g.shape[0] - int(loo)
    hits = {k: [] for k in ks}
    aps, map_r = [], []
    for i in range(q.shape[0]):
        ranked = order[i, :n_gallery]  # self (at -inf) is last in leave-one-out
        rel = gl[ranked] == ql[i]
        for k in ks:
            hits[k].append(rel[:k].any())
        rank_of_relevant = np.flatnonzero(rel) + 1
        if len(rank_of_relevant):
            aps.append(np.mean(np.arange(1, len(rank_of_relevant) + 1) / rank_of_relevant))
            r = len(rank_of_relevant)  # MAP@R: precision at each relevant rank within the first R
            map_r.append(np.sum(rel[:r] * np.cumsum(rel[:r]) / np.arange(1, r + 1)) / r)
    out = {f"recall@{k}": float(np.mean(hits[k])) for k in ks}
    out["map"] = float(np.mean(aps))
    out["map@r"] = float(np.mean(map_r))
    return out


def _sklearn_map(q, ql, g, gl):
    loo = g is None
    if loo:
        g, gl = q, ql
    sims = _cosine(q, g)
    aps = []
    for i in range(q.shape[0]):
        keep = np.arange(g.shape[0]) != i if loo else slice(None)
        y_true = gl[keep] == ql[i]
        if y_true.any():
            aps.append(average_precision_score(y_true, sims[i, keep]))
    return float(np.mean(aps))


def _brute_knn(bank, bank_labels, queries, num_classes, k, t):
    loo = queries is None
    if loo:
        queries = bank
    sims = _cosine(queries, bank)
    if loo:
        np.fill_diagonal(sims, -np.inf)
    k = min(k, bank.shape[0] - int(loo))
    preds = []
    for i in range(queries.shape[0]):
        nn = np.argsort(-sims[i], kind="stable")[:k]
        votes = np.zeros(num_classes)
        np.add.at(votes, bank_labels[nn], np.exp(sims[i, nn] / t))
        preds.append(np.argmax(votes))
    return np.array(preds)


def _data(seed, n, d, num_classes, min_count=0):
    rng = np.random.default_rng(seed)
    # class-dependent means so neighbours are informative and APs are not all tiny
    centers = rng.normal(size=(num_classes, d))
    labels = rng.integers(0, num_classes, n)
    if min_count:
        labels[: num_classes * min_count] = np.repeat(np.arange(num_classes), min_count)
    feats = centers[labels] + 1.5 * rng.normal(size=(n, d))
    return feats.astype(np.float32), labels


# --------------------------------------------------------------------------- retrieval


def test_hand_computed_toy_example():
    # 2-D unit vectors at distinct angles: cosine order = angular distance order, no ties.
    def vecs(degrees):
        a = np.deg2rad(degrees)
        return np.stack([np.cos(a), np.sin(a)], 1)

    gallery = vecs([0, 10, 25, 45, 70])
    g_labels = np.array([0, 1, 0, 1, 1])
    queries = vecs([-5, 80, 21]) * 3.0  # norms must not matter
    q_labels = np.array([0, 1, 7])
    # q0 ranks 0,10,25,45,70 -> relevance 1,0,1,0,0: AP = (1/1 + 2/3) / 2 = 5/6
    # q1 ranks 70,45,25,10,0 -> relevance 1,1,0,1,0: AP = (1/1 + 2/2 + 3/4) / 3 = 11/12
    # q2 has no relevant item: a miss for recall, left out of mAP
    # MAP@R: q0 (R=2) 1,0 -> 1/2; q1 (R=3) 1,1,0 -> 2/3
    out = retrieval_metrics(queries, q_labels, gallery, g_labels, ks=(1, 2, 3), chunk_size=2)
    assert out["recall@1"] == pytest.approx(2 / 3)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert out["map"] == pytest.approx((5 / 6 + 11 / 12) / 2, abs=1e-6)
    assert out["map@r"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-6)

    # Leave-one-out on the gallery alone. Relevance along each item's ranking:
    # 0: 0,1,0,0 (AP 1/2)   1: 0,0,1,1 (5/12)   2: 0,0,1,0 (1/3)
    # 3: 0,1,1,0 (7/12)     4: 1,0,1,0 (5/6)    -> mAP = 32/60
    # MAP@R (R = 1, 2, 1, 2, 2): 0, 0, 0, (1/2)/2, 1/2 -> 3/20
    want = {"recall@1": 1 / 5, "recall@2": 3 / 5, "recall@9": 1.0, "map": 32 / 60, "map@r": 0.15}
    for backend in ("numpy", "jax"):
        out = retrieval_metrics(gallery, g_labels, ks=(1, 2, 9), chunk_size=3, backend=backend)
        assert out == pytest.approx(want, abs=1e-6)


CONFIGS = [
    # (name, seed, n_query, n_gallery (None = leave-one-out), dim, classes, chunk, ks)
    ("gallery, chunk divides nothing", 0, 150, 230, 16, 10, 64, (1, 2, 4, 8)),
    ("leave-one-out, many small classes", 1, 301, None, 24, 60, 128, (1, 5, 8, 16)),
    ("leave-one-out, chunk > N, k > N", 2, 37, None, 8, 4, 1024, (1, 3, 50)),
    ("gallery, chunk 1", 3, 9, 40, 4, 3, 1, (1, 2, 100)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_retrieval_matches_brute_force_and_sklearn(config):
    _, seed, nq, ng, d, c, chunk, ks = config
    feats, labels = _data(seed, nq + (ng or 0), d, c)
    q, ql = feats[:nq], labels[:nq]
    g, gl = (feats[nq:], labels[nq:]) if ng else (None, None)
    if ng is None:
        ql[-1] = c + 5  # a singleton class: R = 0 in leave-one-out
    out = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=chunk)
    ref = _brute_retrieval(q, ql, g, gl, ks)
    assert set(out) == set(ref)
    for k in ks:
        assert out[f"recall@{k}"] == ref[f"recall@{k}"], k
    assert out["map"] == pytest.approx(ref["map"], rel=1e-5)
    assert out["map@r"] == pytest.approx(ref["map@r"], rel=1e-5)
    assert out["map"] == pytest.approx(_sklearn_map(q, ql, g, gl), rel=1e-5)
    jax_out = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=chunk, backend="jax")
    assert jax_out == pytest.approx(out, rel=1e-6)
    if seed == 0:
        no_map = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=chunk, compute_map=False)
        assert no_map == {key: v for key, v in out.items() if not key.startswith("map")}


def test_chunking_invariance_one_compile_and_jax_inputs():
    feats, labels = _data(4, 200, 12, 7)
    ref = retrieval_metrics(feats, labels, chunk_size=200, backend="jax")
    before = retrieval._retrieval_chunk._cache_size()
    # 29 chunks, the last one padded
    out = retrieval_metrics(feats, labels, chunk_size=7, backend="jax")
    assert retrieval._retrieval_chunk._cache_size() == before + 1
    assert out == pytest.approx(ref, rel=1e-6)
    # jax arrays in, same shapes: same numbers and no new compile
    feats_j, labels_j = jax.numpy.asarray(feats), jax.numpy.asarray(labels)
    jnp_out = retrieval_metrics(feats_j, labels_j, chunk_size=7, backend="jax")
    assert retrieval._retrieval_chunk._cache_size() == before + 1
    assert jnp_out == out


def test_sharded_inputs_on_four_devices():
    # A fresh process: the device count is fixed when jax starts.
    code = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        from fgjax.eval.knn import knn_classify
        from fgjax.eval.retrieval import retrieval_metrics
        rng = np.random.default_rng(0)
        x = rng.normal(size=(200, 8)).astype(np.float32)
        y = rng.integers(0, 5, 200)
        ref = {b: retrieval_metrics(x, y, chunk_size=48, backend=b) for b in ("jax", "numpy")}
        ref_knn = knn_classify(x[:120], y[:120], x[120:], 5, k=30)
        # explicit sharding: top_k along a sharded axis is a type error unless gathered
        mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
        put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
        with jax.set_mesh(mesh):
            for b in ("jax", "numpy"):
                assert retrieval_metrics(put(x), put(y), chunk_size=48, backend=b) == ref[b]
                preds = knn_classify(put(x[:120]), put(y[:120]), x[120:], 5, k=30, backend=b)
                assert (preds == ref_knn).all()
        print("ok")
        """
    )
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_retrieval_ties_go_to_lower_gallery_index():
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # items 0 and 1 tie
    out = retrieval_metrics(q, np.array([1]), g, np.array([0, 1, 1]), ks=(1, 2))
    assert out["recall@1"] == 0.0 and out["recall@2"] == 1.0
    assert out["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_retrieval_input_errors():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError):
        retrieval_metrics(x, np.zeros(4, int), x)  # gallery labels missing
    with pytest.raises(ValueError):
        retrieval_metrics(x[:1], np.zeros(1, int))  # leave-one-out with one item
    with pytest.raises(ValueError):
        retrieval_metrics(x, np.zeros(3, int))


# --------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("loo", [False, True], ids=["bank", "leave-one-out"])
def test_nearest_neighbors_match_sklearn(loo):
    feats, _ = _data(5, 260, 10, 5)
    bank, queries = (feats, None) if loo else (feats[:170], feats[170:])
    nn = NearestNeighbors(n_neighbors=9, metric="cosine", algorithm="brute").fit(bank)
    dist, ref_idx = nn.kneighbors(queries)  # X=None: sklearn excludes each point itself
    sims, idx = nearest_neighbors(queries, bank, k=9, chunk_size=64)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, 1 - dist, atol=1e-5)


KNN_CONFIGS = [
    # (name, seed, n_bank, n_test (None = leave-one-out), dim, classes, k, T, chunk)
    ("monitor defaults, k > class sizes", 6, 400, 130, 16, 20, 200, 0.1, 64),
    ("small k, chunk divides nothing", 7, 250, 77, 8, 6, 5, 0.5, 30),
    ("leave-one-out, k > N", 8, 90, None, 8, 9, 500, 0.1, 40),
    ("leave-one-out, low temperature", 9, 150, None, 32, 12, 20, 0.01, 1024),
]


@pytest.mark.parametrize("config", KNN_CONFIGS, ids=[c[0] for c in KNN_CONFIGS])
def test_knn_matches_brute_force(config):
    _, seed, nb, nt, d, c, k, t, chunk = config
    feats, labels = _data(seed, nb + (nt or 0), d, c)
    bank, bank_labels = feats[:nb], labels[:nb]
    test, test_labels = (feats[nb:], labels[nb:]) if nt else (None, None)
    preds = knn_classify(
        bank, bank_labels, test, c, k=k, temperature=t, chunk_size=chunk, leave_one_out=nt is None
    )
    ref = _brute_knn(bank, bank_labels, test, c, k, t)
    np.testing.assert_array_equal(preds, ref)
    acc = knn_top1(bank, bank_labels, test, test_labels, c, k, t, chunk, leave_one_out=nt is None)
    assert acc == pytest.approx(np.mean(ref == (bank_labels if nt is None else test_labels)))
    assert acc > 1.5 / c  # the class-dependent features are separable enough to beat chance


def test_knn_k1_is_nearest_neighbour_label_and_errors():
    feats, labels = _data(10, 120, 6, 4)
    preds = knn_classify(feats[:80], labels[:80], feats[80:], 4, k=1)
    nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(feats[:80])
    np.testing.assert_array_equal(preds, labels[:80][nn.kneighbors(feats[80:])[1][:, 0]])
    with pytest.raises(ValueError):
        knn_classify(feats, labels, None, 4)  # no queries and no leave-one-out
    with pytest.raises(ValueError):
        knn_classify(feats, labels, feats, 3)  # labels outside [0, num_classes)
