"""Extracted features cached on disk: `<folder>/features_<split>.npz`.

Each file holds the rows of one split in source order: `features` [N, D] float32, `labels`
and `coarse_labels` [N] int32, `index` [N] (row -> example of the split), `paths` [N]
(the image files; empty strings for in-memory datasets) and `fingerprint`, a hash of
everything the features depend on (weights and their step, feature choice, flip, image
size, dataset, and each image file's size and modification time: `files_identity`). A
rerun with the same fingerprint loads the file instead of running the model; any other
fingerprint recomputes and replaces it. Writes are atomic (a temporary file in the same
folder, then a rename), so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fgjax.eval.features import Features


def fingerprint(facts: dict[str, Any]) -> str:
    """A stable hash of `facts` (JSON-serialisable; key order does not matter)."""
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def files_identity(source: Any) -> str:
    """A hash of `source`'s image files as they are now (path, size, modification time):
    repairing, replacing or adding an image changes it, so cached features of the old
    files are not reused. '' for in-memory sources (their data is in the config)."""
    paths = getattr(source, "paths", None)
    if not paths:
        return ""
    root = getattr(source, "root", None) or ""
    digest = hashlib.sha256()
    for path in paths:
        full = os.path.join(root, path)
        try:
            info = os.stat(full)
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        except OSError:  # missing: extraction names it (or replaces it under skip_bad)
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:32]


def cache_path(folder: str, split: str) -> str:
    return os.path.join(folder, f"features_{split}.npz")


def save_features(
    path: str,
    features: Features,
    key: str,
    paths: Sequence[str] | None = None,
    replaced: Sequence[str] = (),
) -> None:
    """Write `features` (and the split's image `paths`, if any, and the images `replaced`
    by black ones under skip_bad) atomically to `path`."""
    n = len(features.labels)
    names = np.array(list(paths) if paths is not None else [""] * n, dtype=str)
    if len(names) != n:
        raise ValueError(f"{len(names)} paths for {n} feature rows")
    save_npz_atomic(
        path,
        features=np.asarray(features.features, np.float32),
        labels=np.asarray(features.labels, np.int32),
        coarse_labels=np.asarray(features.coarse_labels, np.int32),
        index=np.arange(n, dtype=np.int64),
        paths=names,
        replaced=np.array(list(replaced), dtype=str),
        fingerprint=np.array(key),
    )


def save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
    """`np.savez(path, **arrays)` through a temporary file in the same folder and a rename:
    an interrupted write never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_if_fingerprint(
    path: str, key: str | None, names: Sequence[str] | None = None
) -> dict[str, np.ndarray] | None:
    """The arrays of the .npz at `path` (every one, or those in `names`), read into memory,
    when the fingerprint it stores is `key` (None accepts any); None when the file is
    absent, stores no fingerprint or another one.

    The one reader of the fingerprinted caches (features, DDT's fit and maps, `fgjax
    describe`'s descriptors), written by `save_npz_atomic` with a `fingerprint` array. A
    damaged file is not a miss: np.load's error (zipfile.BadZipFile, ValueError, ...)
    propagates and the file is left as it is."""
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        if key is not None and ("fingerprint" not in data.files or str(data["fingerprint"]) != key):
            return None
        return {name: data[name] for name in (data.files if names is None else names)}


def load_features(path: str, key: str | None = None) -> Features | None:
    """The cached features at `path`, or None when the file is absent or its fingerprint
    differs from `key` (None accepts any)."""
    arrays = read_if_fingerprint(path, key, ("features", "labels", "coarse_labels"))
    if arrays is None:
        return None
    return Features(arrays["features"], arrays["labels"], arrays["coarse_labels"])


def replaced_images(path: str) -> list[str]:
    """The images a cached extraction replaced by black ones (skip_bad); [] for none or a
    cache written before they were recorded."""
    with np.load(path) as data:
        return data["replaced"].tolist() if "replaced" in data.files else []


def cached_features(
    path: str,
    key: str,
    compute: Callable[[], Features],
    paths: Sequence[str] | None = None,
    write: bool = True,
    refresh: bool = False,
    replaced: Callable[[], Sequence[str]] = tuple,
) -> tuple[Features, bool]:
    """`(features, from_cache)`: the file's rows when its fingerprint is `key` (and not
    `refresh`), else `compute()`, saved to `path` when `write` (only one process of a
    multi-host run should write) with `replaced()`, the images it replaced."""
    cached = None if refresh else load_features(path, key)
    if cached is not None:
        return cached, True
    features = compute()
    if write:
        save_features(path, features, key, paths, replaced())
    return features, False
