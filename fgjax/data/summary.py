"""A dataset before training on it: per split the image and class counts, the smallest
and largest class, the coarse level, image sizes from file headers (a fixed-seed sample),
and a contact sheet of captioned images with the regions crops are taken from.

The command: `fgjax inspect` (fgjax/cli/inspect.py).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fgjax.data.decode import record_region

SIZE_SAMPLE = 2000  # image headers read per split for the size statistics
BOX_COLOR = (255, 0, 0)
_BACKGROUND, _PAD, _CAPTION = (40, 40, 40), 4, 14


def class_counts(source) -> np.ndarray:
    """int64 [num_classes]: images per fine class in this split."""
    return np.bincount(np.asarray(source.labels), minlength=source.num_classes)


def _coarse(source) -> dict | None:
    if not getattr(source, "num_coarse_classes", 0):
        return None
    present = np.unique(np.asarray(source.coarse_labels))
    return {
        "level": getattr(source, "coarse_level", "") or "coarse",
        "num_classes": int((present >= 0).sum()),
        "num_class_names": int(source.num_coarse_classes),
    }


def _stats(values: list[int]) -> dict:
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def image_sizes(
    source, *, max_samples: int = SIZE_SAMPLE, seed: int = 0, show_progress: bool = False
) -> dict:
    """Width/height statistics of the source's images.

    Path sources: read from the file headers (no decode) of every image, or of a sample of
    `max_samples` drawn with `seed` when there are more; files whose header cannot be read
    are listed under 'unreadable'. In-memory sources: the array shape.
    """
    from fgjax.core.progress import progress

    images = getattr(source, "images", None)
    if images is not None:
        return {"source": "memory", "shape": [int(d) for d in np.shape(images)]}
    paths = getattr(source, "paths", None)
    if paths is None:  # a source that renders its records (the procedural demo set)
        return {"source": "memory", "shape": [len(source), *np.shape(source[0]["image"])]}
    n = len(paths)
    picked = np.arange(n)
    if n > max_samples:
        picked = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
    widths, heights, unreadable = [], [], []
    bar = progress(len(picked), desc="image sizes", enabled=show_progress, every=500)
    for i in picked.tolist():
        try:
            with Image.open(paths[i]) as im:  # parses the header only
                w, h = im.size
            widths.append(w)
            heights.append(h)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            unreadable.append(f"{paths[i]}: {type(e).__name__}: {e}")
        bar.update()
    bar.close()
    out = {"source": "headers", "sampled": len(picked), "of": n, "unreadable": unreadable}
    if widths:
        out.update(width=_stats(widths), height=_stats(heights))
    return out


def summarize(
    source, *, max_size_samples: int = SIZE_SAMPLE, seed: int = 0, show_progress: bool = False
) -> dict:
    """The numbers `inspect` prints for one split, as a JSON-ready dict."""
    counts = class_counts(source)
    present = np.flatnonzero(counts)
    record = source[0] if len(source) else {}
    summary = {
        "dataset": getattr(source, "dataset", type(source).__name__),
        "split": getattr(source, "split", ""),
        "num_images": len(source),
        "num_classes": len(present),
        "num_class_names": int(source.num_classes),
        "coarse": _coarse(source),
        "boxes": "box" in record,
        "trim_bottom": int(record.get("trim_bottom", 0)),
        "image_size": image_sizes(
            source, max_samples=max_size_samples, seed=seed, show_progress=show_progress
        ),
    }
    if len(present):
        small, large = present[np.argmin(counts[present])], present[np.argmax(counts[present])]
        for key, c in (("smallest_class", small), ("largest_class", large)):
            summary[key] = {"name": source.class_names[c], "count": int(counts[c])}
    return summary


def format_summary(s: dict) -> str:
    """The printed form of `summarize`'s dict: a few indented lines."""
    lines = [
        f"{s['dataset']}/{s['split']}: {s['num_images']} images, {s['num_classes']} classes "
        f"(of {s['num_class_names']} class names)"
    ]
    if "smallest_class" in s:
        lo, hi = s["smallest_class"], s["largest_class"]
        lines.append(
            f"  smallest class: {lo['name']} ({lo['count']}); largest: {hi['name']} ({hi['count']})"
        )
    c = s["coarse"]
    lines.append(
        f"  coarse level: {c['level']}, {c['num_classes']} classes" if c else "  coarse level: none"
    )
    size = s["image_size"]
    if size["source"] == "memory":
        lines.append(f"  images in memory: array {size['shape']}")
    elif "width" in size:
        what = (
            f"a sample of {size['sampled']} of {size['of']} images"
            if size["sampled"] < size["of"]
            else f"all {size['of']} images"
        )
        w, h = size["width"], size["height"]
        lines.append(
            f"  image size (min/median/max, {what}, from headers): "
            f"width {w['min']}/{w['median']:g}/{w['max']}, "
            f"height {h['min']}/{h['median']:g}/{h['max']}"
        )
    if size.get("unreadable"):
        lines.append(
            f"  {len(size['unreadable'])} unreadable headers, e.g. {size['unreadable'][0]}"
        )
    crops = [
        name for name, on in (("object box", s["boxes"]), ("banner trim", s["trim_bottom"])) if on
    ]
    if crops:
        lines.append(f"  crops are taken inside: {' and '.join(crops)} (red on the contact sheet)")
    return "\n".join(lines)


def _tile(record: dict, size: int) -> Image.Image:
    """The record's whole image fitted into size x size, its crop region drawn in red."""
    tile = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(tile)
    try:
        if "image" in record:
            opened = Image.fromarray(np.asarray(record["image"]))
        else:
            opened = Image.open(record["path"])
        with opened:
            full_w, full_h = opened.size
            if "path" in record:
                opened.draft("RGB", (size, size))  # a JPEG decodes at reduced scale, >= size
            img = opened.convert("RGB")
        img.thumbnail((size, size))
        x0, y0 = (size - img.size[0]) // 2, (size - img.size[1]) // 2
        tile.paste(img, (x0, y0))
        if "box" in record or record.get("trim_bottom"):
            left, top, w, h = record_region(record, full_w, full_h)
            s = img.size[0] / full_w
            draw.rectangle(
                (x0 + left * s, y0 + top * s, x0 + (left + w) * s - 1, y0 + (top + h) * s - 1),
                outline=BOX_COLOR,
                width=2,
            )
    except Exception as e:  # noqa: BLE001 - the sheet still shows every other image
        draw.text((4, size // 2), f"unreadable: {type(e).__name__}", fill=(255, 255, 255))
    return tile


def contact_sheet(
    source,
    path: str,
    *,
    num_classes: int = 16,
    per_class: int = 4,
    tile: int = 128,
    blocks_per_row: int = 2,
    seed: int = 0,
) -> list[int]:
    """Writes a PNG grid of class blocks, `blocks_per_row` side by side: up to `num_classes`
    classes spread evenly over the classes present, each block `per_class` images drawn
    with `seed` (tile x tile, see `_tile`) under the caption 'label: class name [coarse
    name]'. Returns the fine labels shown, in order."""
    counts = class_counts(source)
    present = np.flatnonzero(counts)
    spread = np.linspace(0, len(present) - 1, min(num_classes, len(present)))
    shown = present[np.unique(spread.round().astype(int))]
    per_class = min(per_class, int(counts[shown].max())) if len(shown) else per_class
    rng = np.random.default_rng(seed)
    labels = np.asarray(source.labels)
    coarse_names = getattr(source, "coarse_names", [])
    block_w, block_h = per_class * (tile + _PAD), _CAPTION + tile + _PAD
    num_rows = max(1, -(-len(shown) // blocks_per_row))
    sheet = Image.new(
        "RGB", (blocks_per_row * block_w + _PAD, num_rows * block_h + _PAD), (0, 0, 0)
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for b, label in enumerate(shown.tolist()):
        members = np.flatnonzero(labels == label)
        chosen = np.sort(rng.choice(members, min(per_class, len(members)), replace=False))
        caption = f"{label}: {source.class_names[label]}"
        coarse = int(source.coarse_labels[members[0]]) if coarse_names else -1
        if coarse >= 0:
            caption += f"  [{coarse_names[coarse]}]"
        x = _PAD + (b % blocks_per_row) * block_w
        y = _PAD + (b // blocks_per_row) * block_h
        draw.text((x, y), caption, fill=(255, 255, 255), font=font)
        for k, i in enumerate(chosen.tolist()):
            sheet.paste(_tile(source[i], tile), (x + k * (tile + _PAD), y + _CAPTION))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return shown.tolist()
