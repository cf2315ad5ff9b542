"""DDT over a dataset: the fit pass, the locate pass, the crops, the boxes file and the
contact sheet (spec leadpp.md 4.3), for any source of image files.

Both passes read the images through the evaluation loader with a squash (torchvision's
Resize((S, S)), bilinear, aspect not kept), normalise them with ImageNet's mean and std
and run one jitted, batch-sharded function of the backbone per batch: the fit adds the
batch's descriptors to the moments on the device (`fgjax.methods.leadpp.ddt.pca`), the locate pass
returns P = (F - mu) . v per image. Masks are one vmapped `ddt_mask`; the box search, the
crop policy and the crops run on the host (`fgjax.methods.leadpp.ddt.locate`).

Out: every crop at its source path relative to the source root, under `out` (the
parallel root a view's `root` reads), `boxes.tsv` (`BOX_COLUMNS`), `contact_sheet.png`,
and the caches `ddt_fit.npz` (mean, direction) and `ddt_maps_<split>.npz` (the maps).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image, ImageDraw

from fgjax.core.distributed import say
from fgjax.core.progress import progress
from fgjax.core.sharding import batch_sharded, global_batch, local_rows, replicated
from fgjax.data.augment import PhotometricSpec
from fgjax.data.decode import open_record, parallel_path, record_region, to_rgb
from fgjax.data.eval_loader import make_eval_loader, spread
from fgjax.eval.cache import fingerprint, read_if_fingerprint, save_npz_atomic
from fgjax.eval.features import normalize_images
from fgjax.methods.leadpp.ddt.locate import (
    CUT_RATES,
    MASK_RULES,
    POLICIES,
    Box,
    crop_policy,
    ddt_mask,
    search_box,
)
from fgjax.methods.leadpp.ddt.pca import (
    PCA_SIGNS,
    Scatter,
    add_rows,
    border_share,
    empty_scatter,
    principal_direction,
)

# (variables, normalised images float32 [B, S, S, 3]) -> feature maps [B, h, w, C]
FeatureFn = Callable[[Any, jax.Array], jax.Array]
IMAGENET = PhotometricSpec()  # its mean and std are ImageNet's
BOXES_FILE = "boxes.tsv"
SHEET_FILE = "contact_sheet.png"
FIT_FILE = "ddt_fit.npz"
FILE_MODE = 0o644  # crops and boxes.tsv (a temporary file is created 0o600)
BOX_COLUMNS = (
    "path",  # relative to the source root (= relative to the output root)
    "x",  # the crop written, in the original file's pixels: left, top, width, height
    "y",
    "w",
    "h",
    "box_x",  # the box DDT's search chose (before the crop policy), same pixels
    "box_y",
    "box_w",
    "box_h",
    "cut_rate",  # its cut rate
    "scored",  # 1, or 0 when no candidate was valid (the 1.05 box, unscored)
    "width",  # the image's size (its region: the dataset's box / trim_bottom)
    "height",
    "split",
)


@dataclasses.dataclass(frozen=True)
class DDTSettings:
    """The knobs of spec section 10 (faithful defaults)."""

    fit_size: int = 512  # ddt_fit_size: the fit's Resize((S, S))
    locate_size: int = 448  # ddt_locate_size
    cut_rates: tuple[float, ...] = CUT_RATES
    mask_rule: str = "leadpp"  # ddt_threshold: 'leadpp' (P > min of P >= 0) | 'ddt' (P > 0)
    over_num: float = 0.0  # the 'leadpp' threshold on the normalised positive range
    pca_sign: str = "max_abs"  # ddt_pca_sign: 'max_abs' | 'border' (+ the border check)
    fix_xyxy: bool = False  # ddt_fix_xyxy
    policy: str = "square"  # crop_policy (`fgjax.methods.leadpp.ddt.locate.POLICIES`)
    batch_size: int = 16

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"DDT policy {self.policy!r}: expected one of {sorted(POLICIES)}")
        if self.mask_rule not in MASK_RULES:
            raise ValueError(f"DDT mask_rule {self.mask_rule!r}: expected one of {MASK_RULES}")
        if self.pca_sign not in PCA_SIGNS:
            raise ValueError(f"DDT pca_sign {self.pca_sign!r}: expected one of {PCA_SIGNS}")
        if min(self.fit_size, self.locate_size, self.batch_size) < 1:
            raise ValueError(f"DDT sizes and batch size must be positive: {self}")
        if not self.cut_rates or min(self.cut_rates) <= 0:
            raise ValueError(f"DDT cut rates must be positive numbers, got {self.cut_rates}")


@dataclasses.dataclass(frozen=True)
class PCAFit:
    mean: np.ndarray  # float64 [C]
    direction: np.ndarray  # float64 [C], unit, sign by `sign_rule`
    variance: float  # its eigenvalue
    count: int  # descriptors


def backbone_features(backbone: Any, layer: str = "stage4") -> FeatureFn:
    """The eval-mode backbone's `layer` map as float32 (a ResNet's 'stage4' = layer4)."""

    def features(variables: Any, images: jax.Array) -> jax.Array:
        outputs = backbone.apply(variables, images, train=False)
        if layer not in outputs:
            raise ValueError(f"the backbone has no output {layer!r}; it has {sorted(outputs)}")
        return outputs[layer].astype(jnp.float32)

    return features


def load_backbone(model: Any, weights: str) -> tuple[Any, dict[str, Any]]:
    """`(backbone, variables)`: `config.model`'s backbone (`backbone_from_config`) with
    every variable read from the weights file `weights` (`fgjax.weights.load_pretrained`:
    torchvision's `resnet50-19c8e357.pth`, an fgjax `.npz`, ...); a variable the file
    lacks is an error naming the file."""
    from fgjax.models.factory import backbone_from_config
    from fgjax.weights import load_pretrained, require_complete

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"DDT weights: no file {weights!r}")
    backbone = backbone_from_config(model)
    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: backbone.init(jax.random.key(0), x, train=False))
    target = {k: v for k, v in abstract.items() if k in ("params", "batch_stats")}
    variables, report = load_pretrained(weights, target, model.arch)
    require_complete(variables, weights, model.arch)
    say(f"ddt weights {weights}: {report}")
    return backbone, variables


def _loader(source: Any, size: int, batch_size: int, num_workers: int):
    """Source order, Resize((size, size)) bilinear; an unreadable image is an error naming
    its file (a black stand-in would enter the PCA)."""
    return make_eval_loader(
        source,
        batch_size=batch_size,
        image_size=size,
        resize="squash",
        squash_size=size,
        num_workers=num_workers,
    )


def _global_batch_size(batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the devices (the batch is sharded)."""
    n = jax.device_count()
    return -(-batch_size // n) * n


def fit_pca(
    sources: Sequence[Any],
    features: FeatureFn,
    variables: Any,
    settings: DDTSettings,
    mesh: Mesh,
    num_workers: int = 0,
    show_progress: bool = True,
) -> PCAFit:
    """Mean and first principal direction of every descriptor of every image of `sources`
    at `settings.fit_size` (spec 4.1)."""
    mean, std = IMAGENET.mean, IMAGENET.std

    def step(variables: Any, s: Scatter, images: jax.Array, keep: jax.Array) -> Scatter:
        f = features(variables, normalize_images(images, mean, std))
        rows = f.reshape(-1, f.shape[-1])
        return add_rows(s, rows, jnp.repeat(keep, f.shape[1] * f.shape[2]))

    rep, shard = replicated(mesh), batch_sharded(mesh)
    step = jax.jit(step, in_shardings=(rep, rep, shard, shard), out_shardings=rep, donate_argnums=1)
    size, batch_size = settings.fit_size, _global_batch_size(settings.batch_size)
    shape = jax.eval_shape(features, variables, jnp.zeros((1, size, size, 3), jnp.float32))
    scatter = jax.device_put(empty_scatter(shape.shape[-1]), rep)
    loaders = [_loader(s, size, batch_size, num_workers) for s in sources]
    bar = progress(sum(map(len, loaders)), desc="ddt fit", enabled=show_progress)
    for loader in loaders:
        for local in loader:
            batch = global_batch({"images": local["images"], "keep": local["mask"]}, mesh)
            scatter = step(variables, scatter, batch["images"], batch["keep"])
            bar.update(1)
    bar.close()
    mu, v, variance = principal_direction(jax.device_get(scatter))
    return PCAFit(mu, v, variance, int(scatter.count))


def projection_maps(
    source: Any,
    features: FeatureFn,
    variables: Any,
    fit: PCAFit,
    settings: DDTSettings,
    mesh: Mesh,
    num_workers: int = 0,
    show_progress: bool = True,
) -> np.ndarray:
    """float32 [N, h, w]: P = (F - mu) . v of every image of `source` (source order) at
    `settings.locate_size`, mu and v in float32 as the code uses them."""
    norm_mean, norm_std = IMAGENET.mean, IMAGENET.std

    def project(variables: Any, images: jax.Array, mu: jax.Array, v: jax.Array) -> jax.Array:
        f = features(variables, normalize_images(images, norm_mean, norm_std))
        return jnp.einsum("bhwc,c->bhw", f - mu, v, precision=jax.lax.Precision.HIGHEST)

    rep, shard = replicated(mesh), batch_sharded(mesh)
    project = jax.jit(project, in_shardings=(rep, shard, rep, rep), out_shardings=shard)
    mu = jax.device_put(fit.mean.astype(np.float32), rep)
    v = jax.device_put(fit.direction.astype(np.float32), rep)
    loader = _loader(
        source, settings.locate_size, _global_batch_size(settings.batch_size), num_workers
    )
    maps, index = [], []
    bar = progress(len(loader), desc="ddt locate", enabled=show_progress)
    for local in loader:
        images = global_batch({"images": local["images"]}, mesh)["images"]
        maps.append(local_rows(project(variables, images, mu, v))[local["mask"]])
        index.append(local["index"][local["mask"]])
        bar.update(1)
    bar.close()
    return np.concatenate(maps)[np.argsort(np.concatenate(index), kind="stable")]


def object_masks(maps: np.ndarray, settings: DDTSettings) -> np.ndarray:
    """bool [N, h, w]: `ddt_mask` of every map (one vmapped call)."""
    fn = jax.jit(jax.vmap(lambda p: ddt_mask(p, settings.mask_rule, settings.over_num)))
    return np.asarray(fn(jnp.asarray(maps, jnp.float32)))


def image_region(record: dict) -> tuple[int, int, int, int]:
    """`(left, top, width, height)` in whole pixels of the part of the record's image the
    dataset uses (`record_region`: its 'box', 'trim_bottom'; else the whole image), read
    from the file's header."""
    img, _ = open_record(record)
    with img:
        region = record_region(record, *img.size)
    left, top, w, h = (int(round(v)) for v in region)
    return left, top, max(1, w), max(1, h)


def _xywh(b: Box, region: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """xyxy in a region -> (x, y, w, h) in the file holding it."""
    return b[0] + region[0], b[1] + region[1], b[2] - b[0], b[3] - b[1]


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """One image's row of `boxes.tsv` (boxes xyxy in the region's pixels)."""

    path: str  # relative to the source root
    split: str
    index: int  # in the split's source
    region: tuple[int, int, int, int]  # left, top, width, height in the file
    box: Box
    cut_rate: float
    scored: bool
    crop: Box

    def crop_xywh(self) -> tuple[int, int, int, int]:
        """The crop as (x, y, w, h) in the file's pixels."""
        return _xywh(self.crop, self.region)

    def row(self) -> list[str]:
        width, height = self.region[2:]
        return [
            self.path,
            *map(str, self.crop_xywh() + _xywh(self.box, self.region)),
            f"{self.cut_rate:g}",
            str(int(self.scored)),
            str(width),
            str(height),
            self.split,
        ]


def locate_images(
    source: Any, split: str, masks: np.ndarray, settings: DDTSettings, workers: int = 1
) -> list[ImageResult]:
    """The box search and crop policy of every image of `source` given its mask."""
    # `parallel_path` under the root "/" is "/" + the path relative to the source root: the
    # mapping (and its errors) that views use, without knowing the output root here.

    def one(i: int) -> ImageResult:
        record = source[i]
        region = image_region(record)
        width, height = region[2:]
        found = search_box(
            masks[i], width, height, settings.locate_size, settings.cut_rates, settings.fix_xyxy
        )
        rel = os.path.relpath(parallel_path(record, os.sep, source.root, "ddt"), os.sep)
        crop = crop_policy(settings.policy, found.box, width, height)
        return ImageResult(rel, split, i, region, found.box, found.cut_rate, found.scored, crop)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, range(len(source))))


def write_boxes(path: str, results: Sequence[ImageResult]) -> None:
    """`boxes.tsv`: a header of `BOX_COLUMNS`, then one tab-separated row per image."""
    lines = ["\t".join(BOX_COLUMNS)] + ["\t".join(r.row()) for r in results]
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".boxes.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


def read_boxes(path: str) -> dict[str, dict[str, Any]]:
    """`boxes.tsv` as {relative path: {column: value}} (ints, cut_rate a float)."""
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if tuple(header) != BOX_COLUMNS:
            raise ValueError(f"{path}: header {header} is not {list(BOX_COLUMNS)}")
        rows = {}
        for n, line in enumerate(f, start=2):
            values = line.rstrip("\n").split("\t")
            if len(values) != len(BOX_COLUMNS):
                raise ValueError(
                    f"{path}: line {n} has {len(values)} fields, not {len(BOX_COLUMNS)}"
                )
            row: dict[str, Any] = dict(zip(BOX_COLUMNS, values, strict=True))
            for key in BOX_COLUMNS[1:-1]:
                row[key] = float(row[key]) if key == "cut_rate" else int(row[key])
            rows[row["path"]] = row
    return rows


def _save_atomic(img: Image.Image, path: str) -> None:
    """Save as the extension says (JPEG: quality 95, optimize, as the code) via a rename."""
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"cannot write a crop to {path!r}: unknown image extension {ext!r}")
    options = dict(quality=95, optimize=True) if fmt == "JPEG" else {}
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".crop.", suffix=ext)
    os.close(fd)
    try:
        img.save(tmp, format=fmt, **options)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_crops(
    sources: Mapping[str, Any],
    results: Sequence[ImageResult],
    out: str,
    previous: Mapping[str, Mapping[str, Any]],
    workers: int = 1,
    show_progress: bool = True,
) -> int:
    """Write every result's crop under `out` at its relative path; a crop whose file exists
    and whose row in the `previous` boxes file is the same is kept. Returns how many were
    written."""
    todo = []
    for r in results:
        target = os.path.join(out, r.path)
        old = previous.get(r.path)
        same = old is not None and tuple(old[c] for c in ("x", "y", "w", "h")) == r.crop_xywh()
        if not (same and os.path.isfile(target)):
            todo.append((sources[r.split][r.index], r, target))

    def write(item: tuple[dict, ImageResult, str]) -> None:
        record, r, target = item
        img, _ = open_record(record)
        with img:
            left, top = r.region[:2]
            x1, y1, x2, y2 = r.crop
            _save_atomic(to_rgb(img).crop((x1 + left, y1 + top, x2 + left, y2 + top)), target)

    bar = progress(len(todo), desc="ddt crops", enabled=show_progress, every=100)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(write, todo):
            bar.update(1)
    bar.close()
    return len(todo)


BOX_COLOUR, CROP_COLOUR = (230, 0, 0), (0, 200, 0)


def contact_sheet(
    path: str,
    sources: Mapping[str, Any],
    results: Sequence[ImageResult],
    num: int = 24,
    thumb: int = 192,
) -> list[int]:
    """A PNG grid of `num` images spread over `results`, each fitted into a `thumb` square,
    with the searched box (red) and the crop (green) drawn. Returns the result indices."""
    chosen = [int(i) for i in spread(len(results), num)] if results else []
    cols = max(1, math.ceil(math.sqrt(len(chosen))))
    rows = max(1, -(-len(chosen) // cols))
    gap = 4
    sheet = Image.new("RGB", (cols * (thumb + gap) + gap, rows * (thumb + gap) + gap), "white")
    for k, i in enumerate(chosen):
        r = results[i]
        img, _ = open_record(sources[r.split][r.index])
        with img:
            left, top, width, height = r.region
            picture = to_rgb(img).crop((left, top, left + width, top + height))
        scale = thumb / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(picture)
        for box, colour in ((r.box, BOX_COLOUR), (r.crop, CROP_COLOUR)):
            x1, y1, x2, y2 = (v * scale for v in box)
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=2)
        x, y = gap + (k % cols) * (thumb + gap), gap + (k // cols) * (thumb + gap)
        sheet.paste(picture, (x, y))
    sheet.save(path)
    return chosen


def _paths(source: Any) -> list[str]:
    return list(getattr(source, "paths", None) or [])


def distinct_splits(sources: Mapping[str, Any], splits: Sequence[str]) -> list[str]:
    """`splits` without those whose every image an earlier one already has (a CSV without
    a split column gives every split the same rows): no image is fitted or cropped twice."""
    seen: set[str] = set()
    kept = []
    for split in dict.fromkeys(splits):
        paths = set(_paths(sources[split]))
        if paths <= seen:
            say(f"ddt: split {split!r} repeats images of an earlier split: skipped")
            continue
        seen |= paths
        kept.append(split)
    return kept


def check_file_source(source: Any, split: str, kind: str) -> None:
    """DDT writes crops at the images' relative paths: the source must read files."""
    if not _paths(source) or not getattr(source, "root", None):
        raise ValueError(
            f"config.data.kind={kind!r} split {split!r} holds no image files under a root "
            "(in-memory images): DDT writes its crops at the images' relative paths, so it "
            "needs a dataset of files (image_folder, csv, cub, cars, ...)"
        )


def _cached(path: str, key: str | None) -> dict[str, np.ndarray] | None:
    """The arrays of the cache `path` when its fingerprint is `key`; None when `key` is
    None (caching off) or the file does not match (`read_if_fingerprint`)."""
    return None if key is None else read_if_fingerprint(path, key)


class _Passes(NamedTuple):
    """What the fit and the projection passes over the images share."""

    features: FeatureFn
    variables: Any
    settings: DDTSettings
    mesh: Mesh
    num_workers: int
    show_progress: bool


def locate_dataset(
    sources: Mapping[str, Any],
    fit_splits: Sequence[str],
    features: FeatureFn,
    variables: Any,
    settings: DDTSettings,
    out: str,
    *,
    mesh: Mesh,
    num_workers: int = 0,
    cache_key: str | None = None,
    sheet: int = 24,
    show_progress: bool = True,
) -> dict[str, Any]:
    """DDT on `sources` (split -> source of image files; every split is cropped), fitted
    on `fit_splits`: writes the crops, `boxes.tsv` and `contact_sheet.png` under `out`.

    `cache_key` (a fingerprint of the weights, model and data): the fit and the maps are
    saved under `out` and reused while it and the settings they depend on are the same;
    None computes them afresh and saves nothing. Returns a summary (also printed).
    """
    os.makedirs(out, exist_ok=True)
    passes = _Passes(features, variables, settings, mesh, num_workers, show_progress)
    fit_key = None
    if cache_key is not None:
        fit_key = fingerprint(dict(base=cache_key, fit=list(fit_splits), size=settings.fit_size))
    fit = _load_or_fit(sources, fit_splits, out, fit_key, passes)
    say(f"ddt fit: {fit.count} descriptors, first component variance {fit.variance:.4g}")

    splits = distinct_splits(sources, list(sources))
    maps = {split: _load_or_project(sources, split, fit, out, fit_key, passes) for split in splits}
    flipped = _sign_check(maps, splits, settings)
    results: list[ImageResult] = []
    for split in splits:
        masks = object_masks(-maps[split] if flipped else maps[split], settings)
        results += locate_images(sources[split], split, masks, settings, max(1, num_workers))
    written = _write_outputs(out, sources, results, sheet, max(1, num_workers), show_progress)
    summary = _summary(results, written, fit, flipped, settings)
    say(f"wrote {os.path.join(out, BOXES_FILE)} and {os.path.join(out, SHEET_FILE)}")
    return summary


def _load_or_fit(
    sources: Mapping[str, Any],
    fit_splits: Sequence[str],
    out: str,
    fit_key: str | None,
    passes: _Passes,
) -> PCAFit:
    """The fit cached in `out/ddt_fit.npz` when its fingerprint is `fit_key`; else
    `fit_pca` over the distinct images of `fit_splits`, saved there unless `fit_key` is
    None."""
    path = os.path.join(out, FIT_FILE)
    saved = _cached(path, fit_key)
    if saved is not None:
        say(f"ddt fit: loaded {path}")
        return PCAFit(
            saved["mean"], saved["direction"], float(saved["variance"]), int(saved["count"])
        )
    fit_sources = [sources[s] for s in distinct_splits(sources, fit_splits)]
    p = passes
    fit = fit_pca(
        fit_sources, p.features, p.variables, p.settings, p.mesh, p.num_workers, p.show_progress
    )
    if fit_key is not None:
        save_npz_atomic(
            path,
            mean=fit.mean,
            direction=fit.direction,
            variance=np.array(fit.variance),
            count=np.array(fit.count),
            fingerprint=np.array(fit_key),
        )
    return fit


def _load_or_project(
    sources: Mapping[str, Any],
    split: str,
    fit: PCAFit,
    out: str,
    fit_key: str | None,
    passes: _Passes,
) -> np.ndarray:
    """The projection maps of `split`: cached in `out/ddt_maps_<split>.npz` when its
    fingerprint (of `fit_key`, the split and the locate size) matches; else
    `projection_maps`, saved there unless `fit_key` is None."""
    path = os.path.join(out, f"ddt_maps_{split}.npz")
    key = None
    if fit_key is not None:
        key = fingerprint(dict(fit=fit_key, split=split, size=passes.settings.locate_size))
    saved = _cached(path, key)
    if saved is not None:
        return saved["maps"]
    p = passes
    maps = projection_maps(
        sources[split],
        p.features,
        p.variables,
        fit,
        p.settings,
        p.mesh,
        p.num_workers,
        p.show_progress,
    )
    if key is not None:
        save_npz_atomic(path, maps=maps, fingerprint=np.array(key))
    return maps


def _sign_check(
    maps: Mapping[str, np.ndarray], splits: Sequence[str], settings: DDTSettings
) -> bool:
    """Whether to flip the direction: under pca_sign 'border', when more than half of the
    positive cells of all `splits`' maps lie on the border ring (printed); else False."""
    if settings.pca_sign != "border":
        return False
    share = border_share(np.concatenate([maps[s] for s in splits]))
    flipped = share > 0.5
    say(
        f"ddt sign check: {share:.2f} of the positive cells on the border ring"
        + (" > 0.5: direction flipped" if flipped else "")
    )
    return flipped


def _write_outputs(
    out: str,
    sources: Mapping[str, Any],
    results: Sequence[ImageResult],
    sheet: int,
    workers: int,
    show_progress: bool,
) -> int:
    """`boxes.tsv`, the crops (those unchanged since the previous `boxes.tsv` kept) and
    the contact sheet of `sheet` images under `out`. Returns how many crops were written."""
    boxes_path = os.path.join(out, BOXES_FILE)
    previous: dict[str, dict[str, Any]] = {}
    if os.path.exists(boxes_path):
        try:
            previous = read_boxes(boxes_path)
        except ValueError as err:
            say(f"warning: {err}; every crop is rewritten")
    write_boxes(boxes_path, results)
    written = write_crops(sources, results, out, previous, workers, show_progress)
    contact_sheet(os.path.join(out, SHEET_FILE), sources, results, sheet)
    return written


def _summary(
    results: Sequence[ImageResult],
    written: int,
    fit: PCAFit,
    flipped: bool,
    settings: DDTSettings,
) -> dict[str, Any]:
    """The run's summary (images, crops written and kept, the fit, the sign flip, the
    unscored images and the count of each cut rate), printed."""
    rates = [r.cut_rate for r in results if r.scored]
    summary = dict(
        images=len(results),
        written=written,
        kept=len(results) - written,
        descriptors=fit.count,
        variance=fit.variance,
        flipped=bool(flipped),
        unscored=sum(not r.scored for r in results),
        cut_rates={f"{c:g}": rates.count(c) for c in settings.cut_rates},
    )
    say(
        f"ddt: {len(results)} images, {written} crops written ({summary['kept']} kept), "
        f"{summary['unscored']} without a valid box; cut rates {summary['cut_rates']}"
    )
    return summary
