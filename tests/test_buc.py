"""BuCSFR's BuC building blocks (shared/methods/bucsfr.md 5.2-5.3): bucsfr.kmeans against
scikit-learn's KMeans, bucsfr.coding_length against a float64 numpy transcription of the
original's criterion (n x n Gram when n <= d, d x d otherwise; np.linalg.slogdet)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from fgjax.methods.bucsfr import coding_length as cl
from fgjax.methods.bucsfr import kmeans as km


@functools.partial(jax.jit, static_argnames=("k", "restarts"))
def _kmeans(x, key, valid, *, k, restarts):
    return km.kmeans(x, k, key, restarts=restarts, valid=valid)


def _np_length(z: np.ndarray, d: int) -> float:
    """The original's L(Z) in float64, with its Gram-size switch at the width d and its
    literal 128 (whatever d is) in the scale and the factor."""
    n = len(z)
    gram = z @ z.T if n <= d else z.T @ z
    logdet = np.linalg.slogdet(np.eye(len(gram)) + 128 / (16 * n) * gram)[1]
    return (n + 128) / 2 * logdet / np.log(2)


def _np_ratios(x: np.ndarray, assign: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """r[a, b] pair by pair, and how many pairs of non-empty clusters had I <= 0."""
    d = x.shape[1]
    r = np.full((k, k), np.inf)
    nonpositive = 0
    for a in range(k):
        for b in range(k):
            za, zb = x[assign == a], x[assign == b]
            if a == b or not len(za) or not len(zb):
                continue
            la, lb = _np_length(za, d), _np_length(zb, d)
            info = la + lb - _np_length(np.concatenate([za, zb]), d)
            nonpositive += info <= 0
            if info > 0:
                r[a, b] = (la if len(za) < len(zb) else lb) / info
    return r, nonpositive


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_from_given_rows_is_lloyd_from_them():
    """`init_index` (faiss' given initial centroids): every restart is Lloyd from those rows."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    init = np.array([4, 17, 9])
    cent = x[init].astype(np.float64)
    for _ in range(20):
        assign = np.argmin(((x[:, None] - cent[None]) ** 2).sum(-1), axis=1)
        cent = np.stack(
            [x[assign == j].mean(0) if (assign == j).any() else cent[j] for j in range(3)]
        )
    assign = np.argmin(((x[:, None] - cent[None]) ** 2).sum(-1), axis=1)
    got, got_assign, _ = km.kmeans(
        jnp.asarray(x), 3, jax.random.key(0), init_index=jnp.asarray(init)
    )
    np.testing.assert_array_equal(np.asarray(got_assign), assign)
    np.testing.assert_allclose(np.asarray(got), cent, atol=1e-5)


def test_kmeans_blobs_restarts_and_padding():
    k, restarts = 4, 5
    x, labels = make_blobs(60, n_features=6, centers=k, cluster_std=0.3, random_state=0)
    x = x.astype(np.float32)
    key = jax.random.key(0)

    # Separable blobs: recovered exactly, objective = scikit-learn's inertia.
    cent, assign, obj = _kmeans(x, key, np.ones(60, bool), k=k, restarts=restarts)
    assign = np.asarray(assign)
    assert assign.dtype == np.int32 and _same_partition(assign, labels)
    ref = KMeans(k, n_init=5, random_state=0).fit(x.astype(np.float64))
    np.testing.assert_allclose(float(obj), ref.inertia_, rtol=1e-4)
    np.testing.assert_allclose(float(obj), np.sum((x - np.asarray(cent)[assign]) ** 2), rtol=1e-5)

    # Padding: far-away rows inserted among the valid ones (they would grab a centroid and
    # shift the others if they counted) change nothing on the valid rows.
    pad = np.full((20, 6), 50.0, np.float32)
    xp = np.concatenate([pad[:10], x, pad[10:]])
    valid = np.r_[np.zeros(10, bool), np.ones(60, bool), np.zeros(10, bool)]
    cent_p, assign_p, obj_p = _kmeans(xp, jax.random.key(3), valid, k=k, restarts=restarts)
    assign_p = np.asarray(assign_p)[valid]
    assert _same_partition(assign_p, labels)
    np.testing.assert_allclose(float(obj_p), float(obj), rtol=1e-5)
    perm = [int(assign_p[np.flatnonzero(assign == c)[0]]) for c in range(k)]
    np.testing.assert_allclose(np.asarray(cent_p)[perm], np.asarray(cent), atol=1e-5)

    # Restarts on unstructured data (the runs differ): the lowest objective wins.
    u = jax.random.uniform(jax.random.key(1), (60, 6))
    runs = jax.vmap(lambda kk: km._lloyd(u, jnp.ones(60, bool), kk, k, 20, jnp.ones(k, bool)))(
        jax.random.split(key, restarts)
    )
    objs = np.asarray(runs[2])
    assert np.ptp(objs) > 1e-3 * objs.min()
    cent_u, assign_u, obj_u = _kmeans(u, key, np.ones(60, bool), k=k, restarts=restarts)
    best = int(np.argmin(objs))
    assert float(obj_u) == objs.min()
    np.testing.assert_array_equal(np.asarray(assign_u), np.asarray(runs[1][best]))
    np.testing.assert_array_equal(np.asarray(cent_u), np.asarray(runs[0][best]))


def test_kmeans_empty_cluster_keeps_its_centroid():
    # Two distinct points, each twice, k = 3: two seeds coincide, one cluster stays empty
    # (argmin ties go to the lower id) and must keep its seed, not collapse to 0.
    x = np.array([[1.0, 2.0], [1.0, 2.0], [-3.0, 1.0], [-3.0, 1.0]], np.float32)
    cent, assign, obj = _kmeans(x, jax.random.key(0), np.ones(4, bool), k=3, restarts=1)
    cent = np.asarray(cent)
    assert float(obj) == 0.0 and len(set(np.asarray(assign).tolist())) == 2
    assert all(any(np.array_equal(c, p) for p in x) for c in cent), cent


@functools.partial(jax.jit, static_argnames=("k", "pair_chunk"))
def _ratios(x, assign, valid, *, k, pair_chunk=1024):
    return cl.merge_ratios(x, assign, k, valid, pair_chunk=pair_chunk)


def test_coding_length_and_merge_ratios_match_numpy():
    d, k = 8, 6
    rng = np.random.default_rng(0)
    # Cluster 0 empty; 1, 2 tie on size (3 each: "small" must be b); 3 has n > d; 4 are 17
    # copies of one long vector and 5 two long vectors.
    sizes = [0, 3, 3, 12, 17, 2]
    x = rng.normal(size=(sum(sizes), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assign = np.repeat(np.arange(k), sizes)
    x[assign == 4] = 10 * x[assign == 4][0]
    x[assign == 5] *= 10
    ref, nonpositive = _np_ratios(x, assign, k)
    assert np.isfinite(ref).sum() > 10

    # Padding rows (assigned to a real cluster) must not count.
    xp = np.concatenate([x, rng.normal(size=(5, d))]).astype(np.float32)
    ap = np.concatenate([assign, np.full(5, 1)]).astype(np.int32)
    valid = np.arange(len(xp)) < len(x)
    # Only a < b is computed; 15 pairs in chunks of 4 (the last one padded) give the same.
    ref = np.where(np.triu(np.ones((k, k), bool), 1), ref, np.inf)
    for chunk in (1024, 4):
        r = np.asarray(_ratios(xp, ap, valid, k=k, pair_chunk=chunk))
        np.testing.assert_array_equal(np.isinf(r), np.isinf(ref))
        np.testing.assert_allclose(r[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=2e-4)

    # Per-cluster Grams by chunks of rows (7 rows: the last chunk padded) = numpy's.
    grams, counts = cl.cluster_grams(jnp.asarray(xp), jnp.asarray(ap), k, valid, row_chunk=7)
    np.testing.assert_array_equal(np.asarray(counts), sizes)
    want = np.stack([x[assign == c].T @ x[assign == c] for c in range(k)])
    np.testing.assert_allclose(np.asarray(grams), want, rtol=1e-5, atol=1e-3)

    # I <= 0 (coding the pair together costs more: under the literal 128, very long vectors
    # in 1 + 2 directions): no ratio, +inf.
    far = 1e5 * np.concatenate([np.repeat(x[assign == 4][:1], 17, 0), x[assign == 5]]) / 10
    far_assign = np.repeat([0, 1], [17, 2])
    assert _np_ratios(far, far_assign, 2)[1] == 2
    r = _ratios(far.astype(np.float32), far_assign.astype(np.int32), np.ones(19, bool), k=2)
    assert np.isinf(np.asarray(r)).all()

    z = x[assign == 3]
    length = cl.coding_length(jnp.asarray(z.T @ z, jnp.float32), 12)
    np.testing.assert_allclose(float(length), _np_length(z, d), rtol=1e-5)
    assert float(cl.coding_length(jnp.zeros((d, d)), 0)) == 0.0


def test_best_merge_hand_made():
    inf = np.inf
    r = np.array(
        [
            [inf, 3.0, -1.0, 1.5],
            [0.5, inf, 1.2, inf],  # 0.5 is below the diagonal: ignored
            [0.1, 0.2, inf, 1.2],  # a tie with (1, 2): the first in row order wins
            [0.3, 0.3, 0.3, inf],
        ],
        np.float32,
    )
    a, b, merge, best = cl.best_merge(jnp.asarray(r), 1.1)
    assert (int(a), int(b), bool(merge), float(best)) == (1, 2, False, np.float32(1.2))
    a, b, merge, _ = cl.best_merge(jnp.asarray(r), 1.3)
    assert (int(a), int(b), bool(merge)) == (1, 2, True)
    *_, merge, best = cl.best_merge(jnp.full((3, 3), jnp.inf), 5.0)
    assert not bool(merge) and np.isinf(float(best))


def _unit_blobs(rng, sizes, d, spread):
    """Unit vectors around random unit centres, one blob per entry of `sizes`."""
    centres = rng.normal(size=(len(sizes), d))
    x = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), sizes, axis=0)
    x = x + spread * rng.normal(size=x.shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _buc_reference(x, coarse, k, key, threshold, n_max):
    """Spec 5.2 class by class in a plain loop: kmeans (static k_c) + merge_ratios on the
    class's padded block, then the pair choice and the merge bookkeeping in numpy."""
    im2cluster, centroids, new_k, ratios = np.zeros(len(x), int), [], [], []
    for c, key_c in enumerate(jax.random.split(key, len(k))):
        idx = np.flatnonzero(coarse == c)
        block = np.zeros((n_max, x.shape[1]), np.float32)
        block[: len(idx)] = x[idx]
        valid = np.arange(n_max) < len(idx)
        k_c = min(k[c], len(idx))
        cent, assign, _ = _kmeans(block, key_c, valid, k=k_c, restarts=5)
        r = np.asarray(_ratios(block, assign, valid, k=k_c))
        upper = r[np.triu_indices(k_c, 1)]
        ratios.append(upper[upper > 0].min(initial=np.inf))
        # best_merge in numpy: the first smallest positive upper-triangle ratio, if below T.
        a, b = np.divmod(np.argmin(np.where(np.triu(r > 0, 1), r, np.inf)), k_c)
        merge = ratios[-1] < threshold
        labels, cent = np.asarray(assign)[: len(idx)].copy(), np.asarray(cent)[:k_c]
        if merge:  # run_hkmeans' numbering: the merged pair is 0, the others follow in order
            others = [j for j in range(k_c) if j not in (a, b)]
            new_id = np.zeros(k_c, int)
            new_id[others] = np.arange(1, k_c - 1)
            labels = new_id[labels]
            cent = cent[[a] + others]
            cent[0] = x[idx[labels == 0]].mean(axis=0)
        im2cluster[idx] = sum(new_k) + labels
        centroids.append(cent / np.linalg.norm(cent, axis=1, keepdims=True))
        new_k.append(k_c - merge)
    return im2cluster, np.concatenate(centroids), np.array(new_k), np.array(ratios)


def test_buc_step_matches_per_class_loop():
    from fgjax.methods.bucsfr import buc

    rng = np.random.default_rng(0)
    d, k_max, n_max, threshold = 8, 5, 40, 1.5
    # Class 0: 3 tight blobs, k = 3 (separated, r ~ 3.6: no merge); class 1: 2 blobs split
    # into k = 4 (halves of a blob, r ~ 1.46: merge, so class 2's offset moves); class 2:
    # 3 points, k = 5 -> k_c = min(k, n_c) = 3 (r ~ 1.17: merge).
    parts = [_unit_blobs(rng, [15, 15, 10], d, 0.05), _unit_blobs(rng, [16, 14], d, 0.3)]
    parts.append(_unit_blobs(rng, [3], d, 0.5))
    x = np.concatenate(parts).astype(np.float32)
    coarse = np.repeat(np.arange(3), [len(p) for p in parts])
    perm = rng.permutation(len(x))  # interleave the classes
    x, coarse = x[perm], coarse[perm]
    k = np.array([3, 4, 5])
    key = jax.random.key(7)

    ref_ids, ref_cent, ref_k, ratios = _buc_reference(x, coarse, k, key, threshold, n_max)
    merged_ref = ratios < threshold
    assert merged_ref.any() and not merged_ref.all(), ratios  # both branches exercised
    np.testing.assert_array_equal(ref_k, np.minimum(k, [40, 30, 3]) - merged_ref)

    step = functools.partial(buc.buc_step, threshold=threshold, k_max=k_max, n_max=n_max)
    ids, cent, new_k, merged, best = (np.asarray(v) for v in step(x, coarse, k, key))
    np.testing.assert_array_equal(merged, merged_ref)
    np.testing.assert_allclose(best, ratios, rtol=1e-4)  # each class's smallest ratio
    np.testing.assert_array_equal(new_k, ref_k)
    np.testing.assert_array_equal(ids, ref_ids)
    # Global ids contiguous, class blocks in class order.
    total = int(new_k.sum())
    assert ids.dtype == np.int32 and set(ids.tolist()) == set(range(total))
    starts = np.cumsum(new_k) - new_k
    for c in range(3):
        assert set(ids[coarse == c].tolist()) == set(range(starts[c], starts[c] + new_k[c]))
    # Centroids: the reference's, unit rows, zero padding; merged = normalised member mean.
    assert cent.shape == (3 * k_max, d)
    np.testing.assert_allclose(cent[:total], ref_cent, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cent[:total], axis=1), 1.0, rtol=1e-5)
    assert not cent[total:].any()
    for i in range(total):
        mean = x[ids == i].mean(axis=0)
        if merged[coarse[ids == i][0]]:  # k-means centroids are means too on converged blobs
            np.testing.assert_allclose(cent[i], mean / np.linalg.norm(mean), atol=1e-5)

    # The memory knobs change nothing: all 3 classes at once (vmapped, as before), 3
    # pairs a chunk (k_max = 5 clusters make 10 pairs: the last chunk padded).
    again = step(x, coarse, k, key, class_batch=3, pair_chunk=3)
    np.testing.assert_array_equal(np.asarray(again[0]), ids)
    np.testing.assert_array_equal(np.asarray(again[2]), new_k)
    np.testing.assert_allclose(np.asarray(again[1]), cent, atol=1e-6)
