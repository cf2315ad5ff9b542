"""Write a source out in the layouts other code bases read (the `data_prep/` scripts).

- `export_image_folder`: `<dest>/<class>/<file>`, torchvision's ImageFolder layout that
  LCR and LEAD++ read (one call per split folder).
- `write_path_lists`: CFGA's `<prefix>_paths.json` / `<prefix>_labels.json`.
- `write_csv_manifest`: the other way, an fgjax CSV manifest (path,label[,coarse_label],split)
  of any sources, e.g. `ImageFolderSource`s of an existing image-folder tree.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence

from PIL import Image

from fgjax.data.decode import record_region

LINK_MODES = ("copy", "hard", "soft")


def folder_name(class_name: str) -> str:
    """A class name as a folder name: stripped, '/' and '\\' removed, spaces kept (the rule
    of LEAD++'s aircraft_organize.py: 'F/A-18' -> 'FA-18')."""
    name = class_name.strip().replace("/", "").replace("\\", "")
    if name in ("", ".", ".."):
        raise ValueError(f"class name {class_name!r} gives no usable folder name")
    return name


def place_file(src: str, dst: str, link: str = "copy") -> None:
    """`dst` as a copy of `src` ('copy'), a hard link ('hard') or a symlink ('soft');
    an existing `dst` is replaced, so a rerun refreshes the tree."""
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    if os.path.lexists(dst):
        os.remove(dst)
    if link == "copy":
        shutil.copy2(src, dst)
    elif link == "hard":
        os.link(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def _write_region(record: dict, dst: str) -> None:
    """The record's file cut to its `record_region` (box, banner trim), same format."""
    with Image.open(record["path"]) as img:
        left, top, w, h = record_region(record, *img.size)
        region = img.crop((round(left), round(top), round(left + w), round(top + h)))
        if img.format == "JPEG":
            region.save(dst, "JPEG", quality=95)
        else:
            region.save(dst, img.format)


def export_image_folder(
    source, dest: str, *, link: str = "copy", crop: bool = False, show_progress: bool = True
) -> dict[str, int]:
    """Every image of a path source into `dest/<folder_name(class)>/<file name>`.

    Args:
      source: a source with `paths` (e.g. a `LabeledSource` of one split).
      dest: the split folder to fill (e.g. `<out>/train`).
      link: how files are placed (`place_file`).
      crop: write records that carry a region ('box', 'trim_bottom') cut to it (JPEG
        quality 95) instead of placing the original.
    Returns {class folder: number of images}. Two classes with the same folder name, or
    two images of a class with the same file name, are errors naming both.
    """
    from fgjax.core.progress import progress

    if getattr(source, "paths", None) is None:
        raise ValueError(f"{source!r} holds no image files to export")
    folders: dict[str, str] = {}
    for name in source.class_names:
        folder = folder_name(name)
        if folders.setdefault(folder, name) != name:
            raise ValueError(
                f"classes {folders[folder]!r} and {name!r} both become folder {folder!r}"
            )
    placed: dict[str, str] = {}
    counts: dict[str, int] = {}
    bar = progress(len(source), desc=f"export {os.path.basename(dest)}", enabled=show_progress)
    for i in range(len(source)):
        record = source[i]
        folder = folder_name(source.class_names[record["label"]])
        dst = os.path.join(dest, folder, os.path.basename(record["path"]))
        if dst in placed:
            raise ValueError(f"{placed[dst]!r} and {record['path']!r} both become {dst!r}")
        placed[dst] = record["path"]
        if folder not in counts:
            os.makedirs(os.path.join(dest, folder), exist_ok=True)
        if crop and ("box" in record or record.get("trim_bottom")):
            _write_region(record, dst)
        else:
            place_file(record["path"], dst, link)
        counts[folder] = counts.get(folder, 0) + 1
        bar.update()
    bar.close()
    return counts


def write_path_lists(source, dest_dir: str, prefix: str) -> tuple[str, str]:
    """CFGA's lists of one split: `<prefix>_paths.json` (absolute image paths) and
    `<prefix>_labels.json` (int labels, aligned), in the source's order. Returns both paths."""
    os.makedirs(dest_dir, exist_ok=True)
    paths = os.path.join(dest_dir, f"{prefix}_paths.json")
    labels = os.path.join(dest_dir, f"{prefix}_labels.json")
    with open(paths, "w") as f:
        json.dump([os.path.abspath(p) for p in source.paths], f)
    with open(labels, "w") as f:
        json.dump([int(y) for y in source.labels], f)
    return paths, labels


def write_csv_manifest(sources: Sequence, csv_path: str) -> int:
    """An fgjax CSV manifest of `sources` (one per split): path (relative to the CSV's
    folder), label (the class name, so every split maps names to the same ids),
    coarse_label (the coarse name, when every source has a coarse level) and split
    (`source.split`). Returns the number of rows."""
    base = os.path.dirname(os.path.abspath(csv_path))
    with_coarse = all(getattr(s, "num_coarse_classes", 0) for s in sources)
    columns = ["path", "label", *(["coarse_label"] if with_coarse else []), "split"]
    rows = 0
    os.makedirs(base, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for source in sources:
            for i, (path, label) in enumerate(zip(source.paths, source.labels, strict=True)):
                row = [os.path.relpath(os.path.abspath(path), base), source.class_names[label]]
                if with_coarse:
                    row.append(source.coarse_names[source.coarse_labels[i]])
                writer.writerow([*row, source.split])
                rows += 1
    return rows
