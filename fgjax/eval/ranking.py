"""Host (numpy + BLAS) ranking kernels: the CPU backend of `fgjax.eval` retrieval and kNN.

Similarities are computed one block of query rows at a time by a float32 BLAS matmul into a
reused buffer, so memory is about `block * N_gallery * 4` bytes (twice that with mAP) at any
number of queries. No query's gallery is sorted by index: a rank is a count,

    rank(j) = #{g : s_g > s_j} + #{g : s_g == s_j and g < j}      (0-based)

i.e. higher similarity first and, among equal similarities, the lower gallery index first
(the tie rule of `jax.lax.top_k` and of a stable sort). Recall@K needs the rank of the best
positive only (two counting passes over the block); mAP and MAP@R need the rank of every
positive, read off one sorted copy of each similarity row by binary search. Equal
similarities are resolved exactly by a slower path that only runs for the tied values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

BLOCK_BYTES = 256 * 2**20  # similarity block budget; mAP holds a second (sorted) copy
_NORM_ROWS = 8192  # rows normalised at a time (scratch stays ~64 MB at D=2048)


def host_rows(x: np.ndarray, metric: str) -> np.ndarray:
    """`x [N, D]` as C-contiguous float32, scaled to unit L2 norm when `metric == 'cosine'`.

    PyTorch's `x / max(||x||, 1e-12)` (all-zero rows stay zero); the squared norm is a
    pairwise float32 sum (error ~log2(D) ulp, not D ulp), in row blocks to bound memory.
    """
    x = np.asarray(x)  # a sharded jax array is gathered here
    if metric == "dot":
        return np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, np.float32)
    for i in range(0, x.shape[0], _NORM_ROWS):
        rows = np.asarray(x[i : i + _NORM_ROWS], np.float32)
        norm = np.sqrt(np.sum(np.square(rows), axis=1, dtype=np.float32))  # pairwise sum
        np.divide(rows, np.maximum(norm, np.float32(1e-12))[:, None], out=out[i : i + _NORM_ROWS])
    return out


def block_rows(n_gallery: int, chunk_size: int) -> int:
    """Query rows per block: `chunk_size`, capped so one block fits `BLOCK_BYTES`."""
    return max(1, min(int(chunk_size), BLOCK_BYTES // (4 * max(n_gallery, 1))))


def similarity_blocks(
    queries: np.ndarray, gallery: np.ndarray, exclude_self: bool, rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """`(start, sims [b, Ng])` for consecutive query blocks (the buffer is reused: copy to keep).

    In leave-one-out (`exclude_self`, query i is gallery item i) the self-similarity is
    -inf, so it ranks after every finite similarity and never counts as a hit.
    """
    buf = np.empty((min(rows, queries.shape[0]), gallery.shape[0]), np.float32)
    for start in range(0, queries.shape[0], rows):
        q = queries[start : start + rows]
        sims = buf[: q.shape[0]]
        np.matmul(q, gallery.T, out=sims)
        if exclude_self:
            r = np.arange(q.shape[0])
            sims[r, start + r] = -np.inf
        yield start, sims


class Positives(NamedTuple):
    """The relevant gallery items of a block of queries, flattened row after row."""

    row: np.ndarray  # [P] query row in the block
    col: np.ndarray  # [P] gallery index, ascending within a row
    count: np.ndarray  # [b] number of relevant items of each query (R)
    start: np.ndarray  # [b] offset of each row's first entry


class LabelIndex:
    """Gallery items grouped by label, to list each query's relevant items without a
    `[b, Ng]` label comparison."""

    def __init__(self, gallery_labels: np.ndarray):
        self.classes, inverse = np.unique(gallery_labels, return_inverse=True)
        self.order = np.argsort(inverse, kind="stable")  # ascending index within a class
        sizes = np.bincount(inverse, minlength=len(self.classes))
        self.offset = np.concatenate([[0], np.cumsum(sizes)])

    def positives(self, query_labels: np.ndarray, start: int, exclude_self: bool) -> Positives:
        """Relevant items of queries `start, start+1, ...` with labels `query_labels [b]`."""
        b = len(query_labels)
        pos = np.searchsorted(self.classes, query_labels)
        pos = np.minimum(pos, len(self.classes) - 1)
        known = self.classes[pos] == query_labels
        lo = np.where(known, self.offset[pos], 0)
        n = np.where(known, self.offset[pos + 1] - lo, 0)
        row = np.repeat(np.arange(b), n)
        within = np.arange(row.size) - np.repeat(np.cumsum(n) - n, n)
        col = self.order[np.repeat(lo, n) + within]
        if exclude_self:
            keep = col != start + row
            row, col = row[keep], col[keep]
            n = np.bincount(row, minlength=b)
        return Positives(row, col, n, np.cumsum(n) - n)


def _segment_max(values: np.ndarray, p: Positives) -> np.ndarray:
    """Per-row max of `values [P]` (-inf for rows without positives)."""
    out = np.full(len(p.count), -np.inf, values.dtype)
    has = p.count > 0
    if has.any():
        out[has] = np.maximum.reduceat(values, p.start[has])
    return out


def _count_tied_before(sims: np.ndarray, row: np.ndarray, value: np.ndarray, col: np.ndarray):
    """`#{g < col : sims[row, g] == value}` for each entry (the slow path; only for ties)."""
    out = np.zeros(len(row), np.int64)
    keys = np.stack([row, value.view(np.int32)], 1)  # group entries by (row, tied value)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        r, v = row[members[0]], value[members[0]]
        tied_cols = np.flatnonzero(sims[r] == v)  # ascending
        out[members] = np.searchsorted(tied_cols, col[members])
    return out


def best_positive_rank(sims: np.ndarray, p: Positives) -> np.ndarray:
    """0-based rank of each query's first relevant item in its ranking; -1 if it has none.

    `sims [b, Ng]` (self at -inf in leave-one-out). Two counting passes over the block.
    """
    b = sims.shape[0]
    values = sims[p.row, p.col]
    best = _segment_max(values, p)
    # lowest gallery index among the positives that reach the row's best score
    cand = np.where(values == best[p.row], p.col, np.iinfo(np.int64).max)
    has = p.count > 0
    best_col = np.zeros(b, np.int64)
    if has.any():
        best_col[has] = np.minimum.reduceat(cand, p.start[has])
    thr = np.where(has, best, np.inf)[:, None]  # +inf: no counting for rows without positives
    above = np.count_nonzero(sims > thr, axis=1)
    equal = np.count_nonzero(sims == thr, axis=1)
    rank = above.astype(np.int64)
    tied = np.flatnonzero(has & (equal > 1))
    if tied.size:
        rank[tied] += _count_tied_before(sims, tied, best[tied], best_col[tied])
    return np.where(has, rank, -1)


def _searchsorted_rows(sorted_rows: np.ndarray, row: np.ndarray, value: np.ndarray, side: str):
    """`np.searchsorted(sorted_rows[row[i]], value[i], side)` for every i, vectorised."""
    lo = np.zeros(len(row), np.int64)
    hi = np.full(len(row), sorted_rows.shape[1], np.int64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        probe = sorted_rows[row, np.minimum(mid, sorted_rows.shape[1] - 1)]
        go_right = (probe < value) if side == "left" else (probe <= value)
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)


def positive_ranks(sims: np.ndarray, p: Positives, sorted_buf: np.ndarray) -> np.ndarray:
    """0-based rank of every relevant item `[P]` (aligned with `p.row`, `p.col`).

    `sorted_buf` is scratch of at least the block's shape; it receives each row sorted.
    """
    values = sims[p.row, p.col]
    srt = sorted_buf[: sims.shape[0]]
    srt[...] = sims
    srt.sort(axis=1)
    right = _searchsorted_rows(srt, p.row, values, "right")
    rank = sims.shape[1] - right  # items with a strictly higher similarity
    left = _searchsorted_rows(srt, p.row, values, "left")
    tied = np.flatnonzero(right - left > 1)
    if tied.size:
        rank[tied] += _count_tied_before(sims, p.row[tied], values[tied], p.col[tied])
    return rank


def average_precisions(rank: np.ndarray, p: Positives) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP over the full ranking and MAP@R from positive ranks; rows with R = 0 get 0.

    AP = (1/R) sum_k k / rank_k and MAP@R = (1/R) sum_{k: rank_k <= R} k / rank_k, with
    rank_k the 1-based rank of the k-th relevant item.
    """
    b = len(p.count)
    ap, map_r = np.zeros(b), np.zeros(b)
    if rank.size == 0:
        return ap, map_r
    # order each row's positives by rank (ranks are distinct within a row)
    key = np.sort(p.row.astype(np.int64) * (int(rank.max()) + 1) + rank)
    rank_sorted = key % (int(rank.max()) + 1) + 1
    k = np.arange(1, rank.size + 1) - np.repeat(p.start, p.count)
    prec = k / rank_sorted
    has = p.count > 0
    r_of = np.repeat(p.count, p.count)
    ap[has] = np.add.reduceat(prec, p.start[has]) / p.count[has]
    map_r[has] = np.add.reduceat(np.where(rank_sorted <= r_of, prec, 0.0), p.start[has])
    map_r[has] /= p.count[has]
    return ap, map_r


def top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest similarities of each row, `(values [b, k] descending, index [b, k])`,
    equal values in ascending index (the `jax.lax.top_k` order)."""
    b, n = sims.shape
    if k >= n:
        idx = np.argsort(-sims, axis=1, kind="stable")
        return np.take_along_axis(sims, idx, 1), idx
    idx = np.argpartition(sims, n - k, axis=1)[:, n - k :]
    vals = np.take_along_axis(sims, idx, 1)
    kth = vals.min(axis=1)
    # argpartition picks arbitrary members of a tie at the k-th value: redo those rows
    for r in np.flatnonzero(np.count_nonzero(sims >= kth[:, None], axis=1) > k):
        above = np.flatnonzero(sims[r] > kth[r])
        tied = np.flatnonzero(sims[r] == kth[r])[: k - above.size]
        idx[r] = np.concatenate([above, tied])
        vals[r] = sims[r, idx[r]]
    order = np.lexsort((idx, -vals), axis=1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
