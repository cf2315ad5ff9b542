"""BuCSFR's per-epoch BuC step (`methods.bucsfr.buc.buc_step`: per coarse class k-means, 20 Lloyd
iterations x 5 restarts, then the coding-length merge criterion, class after class),
timed on synthetic unit features, side by side with scikit-learn's (and, where installed,
faiss's, the original's) k-means on the same per-class blocks.

    python benchmarks/buc_step.py --preset cifar100 --out buc_cifar100.json
    python benchmarks/buc_step.py --preset cars --out buc_cars.json
    python benchmarks/buc_step.py --quick                 # tiny smoke run, < 30 s on a CPU
    python benchmarks/buc_step.py --preset cifar100 --classes 12 --points 1281167 \\
        --clusters 500 --compile-only                     # XLA's memory for ImageNet32's sizes

Presets (spec 6.1): cifar100 = 20 coarse classes x 2,500 points, 25 initial clusters per
class (500), T 2.0; cars = 8 coarse classes of uneven size, 8,144 points, 125 clusters per
class (1,000), T 1.1. Features: d = 128 unit rows, gaussian blobs around fine-class centres
(5 per coarse class for CIFAR-100, 196 in all for Cars) scattered around coarse centres.

What is timed (each `block_until_ready`, features already on the device):
- fgjax `buc_step`: compilation (its jitted core lowered and compiled ahead of time, which
  also gives XLA's temp memory), one untimed call, then the median of `--repeats` calls;
- its parts, each mapped over the classes as in the step (`--class-batch` at a time):
  k-means alone and the merge criterion alone (merge_ratios + best_merge on the k-means
  assignment);
- scikit-learn `KMeans` per class (lloyd, n_init 5, max_iter 20, tol 0, the same k), for
  each `--sklearn-inits` (random: fgjax's and faiss's init; k-means++: sklearn's default);
- faiss `Kmeans` per class (niter 20, nredo 5, seed 0, the original's points-per-centroid
  bounds) when faiss is installed.
k-means quality: per class, fgjax's objective / the reference's inertia (the sum of squared
distances to the nearest centroid): < 1 means fgjax's clustering is tighter.

The issue's goal: the BuC step under 5 % of one training epoch. The epoch time is
`--epoch-seconds`, else points / images per second: `--images-per-s-from` a
`benchmarks/train_step.py --out` file (its MoCo v2 row: BuCSFR's step is MoCo v2 plus a coarse
head), else `--images-per-s` (default 2,500 img/s: an ASSUMPTION for ResNet-50 at 224 px,
bf16, on one H100-class GPU; issue #2's PyTorch torch.compile MoCo v2 target is ~4,100).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]

from describe import cpu_name  # noqa: E402

from fgjax.methods.bucsfr import buc  # noqa: E402
from fgjax.methods.bucsfr.coding_length import best_merge, merge_ratios  # noqa: E402
from fgjax.methods.bucsfr.kmeans import kmeans  # noqa: E402

DIM = 128
GOAL = 0.05  # of one epoch's training time (issue #16)
DEFAULT_IMAGES_PER_S = 2500.0
# Spec 6.1; min/max points per centroid: faiss's bounds in the original (spec 5.3).
PRESETS = {
    "cifar100": dict(classes=20, points=50_000, fine=100, clusters=25, threshold=2.0,
                     even=True, min_ppc=10, max_ppc=1710),
    "cars": dict(classes=8, points=8_144, fine=196, clusters=125, threshold=1.1,
                 even=False, min_ppc=4, max_ppc=200),
    "quick": dict(classes=4, points=800, fine=12, clusters=8, threshold=2.0,
                  even=False, min_ppc=4, max_ppc=200),
}  # fmt: skip


def class_sizes(classes: int, points: int, even: bool, rng: np.random.Generator) -> np.ndarray:
    """Points per coarse class: equal, or uneven (Dirichlet(4) shares, as Cars' body types)."""
    if even:
        sizes = np.full(classes, points // classes)
    else:
        sizes = np.floor(rng.dirichlet(np.full(classes, 4.0)) * points).astype(int)
    sizes[: points - sizes.sum()] += 1
    return sizes


def make_features(cfg: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit features `[N, 128]` float32 and coarse labels `[N]`, shuffled.

    Each coarse class has a random unit centre; its fine classes (`fine` in all, shared out
    by class size) have centres at cosine ~0.7 to it; points lie at cosine ~0.7 to their fine
    centre, so fine classes overlap a little, as a trained embedding's would."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(cfg["classes"], cfg["points"], cfg["even"], rng)
    fine = np.maximum(1, np.round(cfg["fine"] * sizes / sizes.sum())).astype(int)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    feats, coarse = [], []
    for c, (n, f) in enumerate(zip(sizes, fine, strict=True)):
        centre = unit(rng.standard_normal(DIM))
        fine_centres = unit(centre + unit(rng.standard_normal((f, DIM))))
        members = rng.integers(0, f, n)
        feats.append(unit(fine_centres[members] + unit(rng.standard_normal((n, DIM)))))
        coarse.append(np.full(n, c))
    order = rng.permutation(cfg["points"])
    return np.concatenate(feats)[order].astype(np.float32), np.concatenate(coarse)[order]


def _blocks(features, index):
    """The padded class blocks `[C, n_max, d]`, their valid mask, as buc_step gathers them."""
    num_points = features.shape[0]
    valid = index < num_points
    return features[jnp.minimum(index, num_points - 1)], valid


@functools.partial(jax.jit, static_argnames=("k_max", "class_batch"))
def kmeans_part(features, index, clusters, key, *, k_max, class_batch):
    """buc_step's k-means alone, mapped alike (same per-class keys, `class_batch` at a time):
    centroids, assignment and objective `[C]`."""
    blocks, valid = _blocks(features, index)
    k = jnp.minimum(clusters, jnp.sum(valid, axis=1))
    keys = jax.random.split(key, index.shape[0])
    return jax.lax.map(
        lambda a: kmeans(a[0], k_max, a[3], valid=a[1], active=jnp.arange(k_max) < a[2]),
        (blocks, valid, k, keys),
        batch_size=class_batch,
    )


@functools.partial(jax.jit, static_argnames=("k_max", "class_batch", "pair_chunk"))
def merge_part(features, index, assignment, threshold, *, k_max, class_batch, pair_chunk):
    """buc_step's merge criterion alone on a given assignment `[C, n_max]`: (a, b, merge, r),
    each class's block gathered inside the map as in buc_step."""
    num_points = features.shape[0]

    def one_class(args):
        idx, assign = args
        x = features[jnp.minimum(idx, num_points - 1)]
        ratios = merge_ratios(x, assign, k_max, idx < num_points, pair_chunk=pair_chunk)
        return best_merge(ratios, threshold)

    return jax.lax.map(one_class, (index, assignment), batch_size=class_batch)


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    """Median seconds of `repeats` calls of `fn` (each blocked on), all runs, last result."""
    runs, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs, out


def fgjax_rows(x, coarse, cfg, args) -> tuple[dict, np.ndarray | None]:
    """Times buc_step and its two parts. Returns the row and the k-means objectives [C]."""
    classes, k_max = cfg["classes"], cfg["clusters"]
    n_max = int(np.bincount(coarse, minlength=classes).max())
    clusters = np.full(classes, k_max)
    key = jax.random.key(args.seed)
    index = buc.class_blocks(coarse, classes, max(n_max, k_max))
    # buc_step's jitted core with buc_step's own argument types, lowered ahead of time: the
    # compilation is timed on its own and buc_step's calls then find it in jax's cache
    # (`first_call_s` close to `step_median_s` shows they did).
    core_args = (x, index, jnp.asarray(clusters, jnp.int32), key, jnp.float32(cfg["threshold"]))
    start = time.perf_counter()
    knobs = {"class_batch": args.class_batch, "pair_chunk": args.pair_chunk}
    compiled = buc.buc_blocks.lower(*core_args, k_max=k_max, **knobs).compile()
    row = {"compile_s": time.perf_counter() - start, "n_max": n_max, **knobs}
    try:
        row["xla_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
    except (AttributeError, TypeError):  # no memory analysis on this backend / version
        pass
    print(f"fgjax buc_step compiled in {row['compile_s']:.1f} s", flush=True)
    if args.compile_only:
        return row, None

    step = functools.partial(
        buc.buc_step, threshold=cfg["threshold"], k_max=k_max, n_max=n_max, **knobs
    )
    row["first_call_s"], _, _ = timed(lambda: step(x, coarse, clusters, key), 1)
    row["step_median_s"], row["step_runs_s"], out = timed(
        lambda: step(x, coarse, clusters, key), args.repeats
    )
    row["merged_classes"] = int(np.sum(out[3]))
    row["clusters_after"] = int(np.sum(out[2]))
    print(f"fgjax buc_step: {row['step_median_s']:.3f} s (median of {args.repeats})", flush=True)
    objective = None
    if not args.no_split:
        k_arr = jnp.asarray(clusters, jnp.int32)
        run_km = functools.partial(
            kmeans_part, x, index, k_arr, key, k_max=k_max, class_batch=args.class_batch
        )
        start = time.perf_counter()
        _, assign, _ = jax.block_until_ready(run_km())  # compile + one call
        row["kmeans_first_call_s"] = time.perf_counter() - start
        row["kmeans_median_s"], row["kmeans_runs_s"], km = timed(run_km, args.repeats)
        objective = np.asarray(km[2], np.float64)
        threshold = jnp.float32(cfg["threshold"])
        run_merge = functools.partial(merge_part, x, index, assign, threshold, k_max=k_max, **knobs)
        start = time.perf_counter()
        jax.block_until_ready(run_merge())
        row["merge_first_call_s"] = time.perf_counter() - start
        row["merge_median_s"], row["merge_runs_s"], merge = timed(run_merge, args.repeats)
        # The parts reproduce the step's decisions (same keys, same code).
        row["parts_agree"] = bool(np.array_equal(np.asarray(merge[2]), np.asarray(out[3])))
        print(
            f"fgjax parts: k-means {row['kmeans_median_s']:.3f} s, "
            f"merge criterion {row['merge_median_s']:.3f} s",
            flush=True,
        )
    stats = jax.devices()[0].memory_stats() or {}  # None on the CPU
    if "peak_bytes_in_use" in stats:
        row["peak_bytes"] = int(stats["peak_bytes_in_use"])
    return row, objective


def per_class(x: np.ndarray, coarse: np.ndarray, cfg: dict) -> list[tuple[np.ndarray, int]]:
    """Each class's rows and its k (min(k, n_c), as buc_step)."""
    out = []
    for c in range(cfg["classes"]):
        rows = x[coarse == c]
        out.append((rows, min(cfg["clusters"], len(rows))))
    return out


def _ratio_summary(objective: np.ndarray | None, inertia: list[float]) -> dict:
    if objective is None:
        return {}
    ratio = objective / np.asarray(inertia)
    return {
        "inertia_ratio_total": float(objective.sum() / np.sum(inertia)),
        "inertia_ratio_median": float(np.median(ratio)),
        "inertia_ratio_min": float(ratio.min()),
        "inertia_ratio_max": float(ratio.max()),
    }


def sklearn_rows(blocks, objective, args) -> list[dict]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info, threadpool_limits

    rows = []
    with threadpool_limits(args.threads or None):
        threads = max((p["num_threads"] for p in threadpool_info()), default=1)
        KMeans(2, n_init=1, max_iter=2).fit(blocks[0][0])  # untimed: thread pools start
        for init in [i for i in args.sklearn_inits.split(",") if i]:
            runs, inertia, iters = [], [], []
            for _ in range(args.repeats):
                inertia, iters = [], []
                start = time.perf_counter()
                for rows_c, k in blocks:
                    km = KMeans(
                        k, init=init, n_init=5, max_iter=20, tol=0.0, algorithm="lloyd",
                        random_state=args.seed,
                    ).fit(rows_c)  # fmt: skip
                    inertia.append(km.inertia_)
                    iters.append(km.n_iter_)
                runs.append(time.perf_counter() - start)
            row = {
                "method": f"sklearn KMeans init={init}",
                "threads": threads,
                "median_s": statistics.median(runs),
                "runs_s": runs,
                "mean_iterations": float(np.mean(iters)),
                **_ratio_summary(objective, inertia),
            }
            print(f"{row['method']}: {row['median_s']:.3f} s ({threads} threads)", flush=True)
            rows.append(row)
    return rows


def faiss_row(blocks, objective, cfg, args) -> dict:
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    faiss.Kmeans(DIM, 2, niter=2).train(blocks[0][0])  # untimed: the thread pool starts
    runs, inertia = [], []
    for _ in range(args.repeats):
        inertia = []
        start = time.perf_counter()
        for rows_c, k in blocks:
            km = faiss.Kmeans(
                DIM, k, niter=20, nredo=5, seed=args.seed, verbose=False,
                min_points_per_centroid=cfg["min_ppc"], max_points_per_centroid=cfg["max_ppc"],
            )  # fmt: skip
            km.train(rows_c)
            dist, _ = km.index.search(rows_c, 1)
            inertia.append(float(dist.sum()))
        runs.append(time.perf_counter() - start)
    row = {
        "method": "faiss Kmeans (the original's)",
        "threads": faiss.omp_get_max_threads(),
        "median_s": statistics.median(runs),
        "runs_s": runs,
        **_ratio_summary(objective, inertia),
    }
    print(f"{row['method']}: {row['median_s']:.3f} s", flush=True)
    return row


def measured_rate(path: str) -> tuple[float, str]:
    """images/s of the synthetic-input MoCo v2 row of a `train_step.py --out` file (BuCSFR's
    step is MoCo v2 plus a coarse head at the same 224 px), and its description."""
    with open(path) as f:
        rows = json.load(f)
    for row in rows:
        if row.get("step") == "moco" and row.get("input") == "synthetic":
            rate = float(row["images_per_s"])
            return rate, f"measured {rate:.0f} img/s (fgjax MoCo v2 step, {row['device']})"
    raise SystemExit(f"{path}: no synthetic 'moco' row (benchmarks/train_step.py --which moco)")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__}
    for name in ("sklearn", "faiss"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "absent"
    return out


def run_preset(name: str, args: argparse.Namespace) -> dict:
    cfg = dict(PRESETS[name])
    for field in ("classes", "points", "clusters", "threshold"):
        if getattr(args, field) is not None:
            cfg[field] = getattr(args, field)
    x_host, coarse = make_features(cfg, args.seed)
    x = jax.device_put(x_host)  # the momentum encoder's embeddings live on the device
    device = jax.devices()[0]
    images_per_s, source = args.images_per_s, f"ASSUMED {args.images_per_s:g} img/s"
    if args.images_per_s_from:
        images_per_s, source = measured_rate(args.images_per_s_from)
    epoch_s = args.epoch_seconds or cfg["points"] / images_per_s
    result = {
        "benchmark": "buc_step",
        "preset": name,
        "config": {k: cfg[k] for k in ("classes", "points", "clusters", "threshold")}
        | {"dim": DIM, "iterations": 20, "restarts": 5},
        "device": f"{device.platform}: "
        + (cpu_name() if device.platform == "cpu" else device.device_kind),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "load_average": os.getloadavg(),  # of the shared machine, at the start and the end
        "versions": versions(),
        "epoch": {
            "seconds": epoch_s,
            "source": "--epoch-seconds" if args.epoch_seconds
            else f"{source} x {cfg['points']} images",
            "goal_fraction": GOAL,
        },
    }  # fmt: skip
    print(f"== {name}: {result['config']} on {result['device']}", flush=True)
    result["fgjax"], objective = fgjax_rows(x, coarse, cfg, args)
    if args.compile_only:
        return result
    result["epoch"]["buc_fraction"] = result["fgjax"]["step_median_s"] / epoch_s
    blocks = per_class(x_host, coarse, cfg)
    result["references"] = []
    if args.sklearn_inits:
        try:
            result["references"] += sklearn_rows(blocks, objective, args)
        except ImportError:
            print("scikit-learn is not installed: its k-means rows are skipped", flush=True)
    if not args.no_faiss:
        try:
            result["references"].append(faiss_row(blocks, objective, cfg, args))
        except ImportError:
            print("faiss is not installed: its k-means row is skipped", flush=True)
    result["load_average_end"] = os.getloadavg()
    return result


def print_table(result: dict) -> None:
    fg, epoch = result["fgjax"], result["epoch"]
    print(f"\n{result['preset']}: {result['config']}")
    load = "{:.1f} -> {:.1f}".format(result["load_average"][0], result["load_average_end"][0])
    print(f"{result['device']}; {result['host']}; load average {load}")
    print(f"{result['versions']}")
    print(f"epoch {epoch['seconds']:.1f} s ({epoch['source']})")
    head = f"{'method':<34}{'median s':>10}{'% epoch':>9}{'threads':>8}  obj/inertia (min..max)"
    print(head + "\n" + "-" * len(head))

    def line(method, seconds, threads="", ratio=""):
        share = f"{100 * seconds / epoch['seconds']:.1f}"
        print(f"{method:<34}{seconds:>10.3f}{share:>9}{threads!s:>8}  {ratio}")

    line("fgjax buc_step (k-means + merge)", fg["step_median_s"], "all")
    if "kmeans_median_s" in fg:
        line("  fgjax k-means alone", fg["kmeans_median_s"], "all")
        line("  fgjax merge criterion alone", fg["merge_median_s"], "all")
    for ref in result["references"]:
        ratio = ""
        if "inertia_ratio_total" in ref:
            ratio = (
                f"{ref['inertia_ratio_total']:.4f} ({ref['inertia_ratio_min']:.4f}.."
                f"{ref['inertia_ratio_max']:.4f})"
            )
        line(ref["method"], ref["median_s"], ref["threads"], ratio)
    print(
        f"fgjax compile {fg['compile_s']:.1f} s (first call after it {fg['first_call_s']:.3f} s)"
        f"; merged {fg['merged_classes']}/{result['config']['classes']} classes, "
        f"{fg['clusters_after']} clusters after"
        + (f"; XLA temp {fg['xla_temp_bytes'] / 2**30:.2f} GiB" if "xla_temp_bytes" in fg else "")
        + (f"; peak {fg['peak_bytes'] / 2**30:.2f} GiB" if "peak_bytes" in fg else "")
    )
    verdict = "meets" if epoch["buc_fraction"] < GOAL else "misses"
    print(f"BuC step = {100 * epoch['buc_fraction']:.1f} % of the epoch: {verdict} the 5 % goal")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="cifar100,cars", help="comma list of cifar100, cars")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (4 classes, 800 points)")
    p.add_argument("--classes", type=int, help="override: coarse classes")
    p.add_argument("--points", type=int, help="override: N")
    p.add_argument("--clusters", type=int, help="override: initial clusters per coarse class")
    p.add_argument("--threshold", type=float, help="override: T")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-split", action="store_true", help="skip timing k-means/merge apart")
    p.add_argument("--compile-only", action="store_true", help="compile time and XLA memory")
    p.add_argument("--class-batch", type=int, default=1, help="buc_step's class_batch")
    p.add_argument("--pair-chunk", type=int, default=1024, help="buc_step's pair_chunk")
    p.add_argument("--sklearn-inits", default="random,k-means++", help="'' skips scikit-learn")
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="sklearn/faiss threads (0: all)")
    p.add_argument(
        "--images-per-s",
        type=float,
        default=DEFAULT_IMAGES_PER_S,
        help="training images/s for the epoch estimate (default: an assumption)",
    )
    p.add_argument(
        "--images-per-s-from", default="", help="train_step.py's JSON: its MoCo v2 images/s"
    )
    p.add_argument("--epoch-seconds", type=float, default=0, help="measured epoch time")
    p.add_argument("--out", default="", help="write the results (a JSON list) here")
    args = p.parse_args()  # fmt: skip
    names = ["quick"] if args.quick else [n for n in args.preset.split(",") if n]
    if args.quick:
        args.repeats = min(args.repeats, 2)
    unknown = set(names) - set(PRESETS)
    if unknown:
        p.error(f"unknown preset(s) {sorted(unknown)}; choose from {sorted(PRESETS)}")
    results = []
    for name in names:
        results.append(run_preset(name, args))
        if args.out:  # rewritten after every preset, so a deadline keeps what is done
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    for result in results:
        if not args.compile_only:
            print_table(result)
        else:
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
