"""Retrieval on the CPU: fgjax (Recall@{1,2,4,8}, then + mAP and MAP@R) against faiss-cpu
exact search (`IndexFlatIP`, Recall@K only) and a numpy blockwise brute force, on random
but clustered 2048-d features (about 20 images per class).

    python benchmarks/retrieval.py                       # N = 10k (leave-one-out), 100k
    python benchmarks/retrieval.py --sizes 10000,20000,100000,1000000 --repeats 1

A gallery of N <= 20,000 is searched leave-one-out by all N queries; a larger one by
`--queries` (2,048) held-out queries, so N = 100k is the "2,048 queries x 100k gallery"
case. Each (case, method, repeat) runs in its own subprocess: wall seconds of the search
alone (data generation excluded) and the subprocess's peak resident memory (maxrss,
including the features). Repeats are interleaved across methods and the median is
reported, since the machine may be shared. faiss is optional (`pip install faiss-cpu`);
without it its rows are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KS = (1, 2, 4, 8)
DIM = 2048
METHODS = ("fgjax", "fgjax+map", "faiss", "numpy", "numpy+map")
BLOCK = 1024  # query rows per block for the numpy brute force


def make_data(n_gallery: int, n_query: int | None, seed: int = 0):
    """Clustered unit-variance features; `n_query=None`: leave-one-out on the gallery."""
    rng = np.random.default_rng(seed)
    n = n_gallery + (n_query or 0)
    classes = max(2, n_gallery // 20)
    centers = rng.standard_normal((classes, DIM), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    feats = rng.standard_normal((n, DIM), dtype=np.float32)
    feats *= 5.0  # same-class cosine ~0.04 vs ~0.02 spread: recall@1 well below 1
    feats += centers[labels]
    if n_query is None:
        return feats, labels, None, None
    return feats[n_gallery:], labels[n_gallery:], feats[:n_gallery], labels[:n_gallery]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_brute(q, ql, g, gl, with_map: bool) -> dict[str, float]:
    """Block matmul, then argpartition top-k (recall) or a full argsort per row (mAP)."""
    loo = g is None
    q = _unit(q)
    g, gl = (q, ql) if loo else (_unit(g), gl)
    kmax = max(KS)
    hits, aps = np.zeros(kmax), []
    for s in range(0, len(q), BLOCK):
        sims = q[s : s + BLOCK] @ g.T
        rows = np.arange(len(sims))
        if loo:
            sims[rows, s + rows] = -np.inf
        top = np.argpartition(-sims, kmax, axis=1)[:, :kmax]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), 1), 1)
        match = gl[top] == ql[s : s + BLOCK, None]
        hits += (np.cumsum(match, 1) > 0).sum(0)
        if with_map:
            order = np.argsort(-sims, axis=1)[:, : len(g) - int(loo)]
            rel = gl[order] == ql[s : s + BLOCK, None]
            n_rel = rel.sum(1)
            prec = np.cumsum(rel, 1) / np.arange(1, rel.shape[1] + 1)
            ap = (prec * rel).sum(1)[n_rel > 0] / n_rel[n_rel > 0]
            aps.extend(ap.tolist())
    out = {f"recall@{k}": hits[k - 1] / len(q) for k in KS}
    if with_map:
        out["map"] = float(np.mean(aps))
    return out


def faiss_search(q, ql, g, gl) -> dict[str, float]:
    import faiss

    loo = g is None
    q = _unit(q)
    g, gl = (q, ql) if loo else (_unit(g), gl)
    index = faiss.IndexFlatIP(DIM)
    index.add(g)
    kmax = max(KS) + int(loo)
    _, idx = index.search(q, kmax)
    if loo:  # drop each query itself (first, or wherever a tie put it)
        keep = idx != np.arange(len(q))[:, None]
        idx = np.stack([row[k][: max(KS)] for row, k in zip(idx, keep, strict=True)])
    match = gl[idx] == ql[:, None]
    hits = (np.cumsum(match, 1) > 0).sum(0)
    return {f"recall@{k}": hits[k - 1] / len(q) for k in KS}


def run_one(method: str, n_gallery: int, n_query: int | None) -> dict:
    """One timed run (in this process): seconds of the search, metrics, peak RSS."""
    q, ql, g, gl = make_data(n_gallery, n_query)
    if method.startswith("fgjax"):  # imported before the clock starts, like numpy and faiss
        from fgjax.eval.retrieval import retrieval_metrics
    elif method == "faiss":
        import faiss  # noqa: F401
    t0 = time.perf_counter()
    if method.startswith("fgjax"):
        metrics = retrieval_metrics(
            q, ql, g, gl, ks=KS, compute_map=method.endswith("map"), backend="numpy"
        )
    elif method == "faiss":
        metrics = faiss_search(q, ql, g, gl)
    else:
        metrics = numpy_brute(q, ql, g, gl, with_map=method.endswith("map"))
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "rss_mb": rss_mb, "metrics": metrics}


def _versions() -> dict[str, str]:
    import jax

    out = {"python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__}
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        out["faiss"] = "absent"
    return out


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma-separated")
    p.add_argument("--queries", type=int, default=2048, help="held-out queries for N > 20k")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default="", help="also write the results as JSON here")
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: method, N, queries
    args = p.parse_args()
    if args.one:
        method, n, nq = args.one
        print(json.dumps(run_one(method, int(n), int(nq) or None)))
        return

    methods = [m for m in args.methods.split(",") if m]
    if "faiss" in methods and _versions()["faiss"] == "absent":
        print("faiss-cpu is not installed: skipping it (pip install faiss-cpu)")
        methods.remove("faiss")
    cases = [(int(n), 0 if int(n) <= 20000 else args.queries) for n in args.sizes.split(",")]
    runs: dict[tuple, list] = {}
    for rep in range(args.repeats):
        for n, nq in cases:
            for m in methods:  # interleaved: load changes hit every method alike
                cmd = [sys.executable, __file__, "--one", m, str(n), str(nq)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    print(res.stderr[-2000:])
                    raise SystemExit(f"{m} N={n} failed")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                runs.setdefault((n, nq, m), []).append(r)
                print(f"[{rep + 1}/{args.repeats}] N={n} q={nq or n} {m}: {r['seconds']:.1f} s")

    print(f"\n{_cpu_model()}, {os.cpu_count()} CPUs; {_versions()}")
    print(f"{'case':<24}{'method':<12}{'median s':>10}{'runs s':>22}{'peak MB':>9}  R@1    mAP")
    table = []
    for (n, nq, m), rs in runs.items():
        case = f"{nq or n} x {n}" + (" (LOO)" if not nq else "")
        secs = [r["seconds"] for r in rs]
        met = rs[0]["metrics"]
        row = {
            "case": case,
            "method": m,
            "median_s": statistics.median(secs),
            "runs_s": secs,
            "peak_mb": max(r["rss_mb"] for r in rs),
            "recall@1": met["recall@1"],
            "map": met.get("map"),
        }
        table.append(row)
        runs_s = ",".join(f"{s:.1f}" for s in secs)
        map_s = f"{row['map']:.4f}" if row["map"] is not None else "-"
        print(
            f"{case:<24}{m:<12}{row['median_s']:>10.1f}{runs_s:>22}{row['peak_mb']:>9.0f}"
            f"  {row['recall@1']:.4f} {map_s}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpu": _cpu_model(), "versions": _versions(), "rows": table}, f, indent=1)


if __name__ == "__main__":
    main()
