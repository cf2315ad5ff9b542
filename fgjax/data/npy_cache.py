"""In-memory image datasets (CIFAR, ImageNet32) converted once to a uint8 `.npy` file and
memory-mapped.

Why: a grain worker process receives its data source by pickling. A source holding a
1.28M x 32 x 32 x 3 array (3.9 GB for ImageNet32) would be copied into every worker; a
memory-mapped `.npy` is pickled as its path, and every process shares the page cache.

Where: `$FGJAX_DATA_CACHE` when set, else a `fgjax_cache/` folder beside the dataset's
files. The file name holds a fingerprint of the source files (names, sizes, mtimes), so
changed data is converted again; stale files can be deleted at any time. Files are written
under a temporary name and renamed when complete, so an interrupted conversion, or several
processes converting at once, never leave a partial cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np

from fgjax.data.layout import DatasetFormatError

CACHE_ENV = "FGJAX_DATA_CACHE"


def cache_file(data_folder: str, name: str, sources: Sequence[str]) -> str:
    """The cache path for `name` (e.g. 'cifar10-train') converted from the files `sources`."""
    digest = hashlib.sha1()
    for path in sources:
        st = os.stat(path)
        digest.update(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    folder = os.environ.get(CACHE_ENV) or os.path.join(data_folder, "fgjax_cache")
    return os.path.join(folder, f"{name}-{digest.hexdigest()[:12]}.npy")


def planar_rows_to_hwc(data: np.ndarray, path: str, size: int = 32) -> np.ndarray:
    """uint8 [N, 3 * size * size] rows (all red, then green, then blue values, each
    row-major; the CIFAR / ImageNet32 format) -> [N, size, size, 3]."""
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * size * size:
        raise DatasetFormatError(
            f"{path}: 'data' must be uint8 [N, {3 * size * size}], got {data.dtype} {data.shape}"
        )
    return data.reshape(-1, 3, size, size).transpose(0, 2, 3, 1)


class NpyImages:
    """uint8 `[N, H, W, 3]` images in a `.npy` file, memory-mapped; pickles as its path."""

    def __init__(self, path: str):
        self.path = path
        self.array = np.load(path, mmap_mode="r")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        return self.array[i]

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def cached_images(
    path: str,
    shape: tuple[int, int, int, int],
    parts: Sequence[Callable[[], np.ndarray]],
    desc: str,
) -> NpyImages:
    """The images at `path`, written first if absent by concatenating `parts()` (each a
    uint8 `[n_i, H, W, 3]` chunk, in order; sum n_i = shape[0]) with a progress report."""
    if not os.path.exists(path):
        _write(path, shape, parts, desc)
    images = NpyImages(path)
    if images.shape != tuple(shape) or images.array.dtype != np.uint8:
        raise DatasetFormatError(
            f"{path}: cached images are {images.array.dtype} {images.shape}, expected uint8 "
            f"{tuple(shape)}; delete the file to convert the data again"
        )
    return images


def _write(path, shape, parts, desc) -> None:
    from fgjax.core.progress import progress  # imports jax: only when converting

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
    except OSError as e:
        raise OSError(
            f"cannot write the image cache {path!r} ({e.strerror}); set ${CACHE_ENV} to a "
            "writable folder"
        ) from e
    try:
        bar = progress(len(parts), desc=desc, every=1)
        start = 0
        for part in parts:
            chunk = part()
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
            bar.update()
        bar.close()
        if start != shape[0]:
            raise DatasetFormatError(f"{desc}: the files hold {start} images, expected {shape[0]}")
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
