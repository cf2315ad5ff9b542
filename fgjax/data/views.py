"""`ViewSpec`: one training view (a random crop + flip of a record), as data."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

from fgjax.data.decode import INTERPOLATIONS

CROP_MODES = ("random_resized", "squash_random_crop")


@dataclass(frozen=True)
class ViewSpec:
    """One view of every training example: the batch holds `views[name]`, uint8
    [b, size, size, 3], a random crop of the image flipped horizontally with p = 0.5.

    `crop`: 'random_resized' is RandomResizedCrop(size, crop_scale, crop_ratio,
    interpolation); 'squash_random_crop' resizes the image to squash_size x squash_size
    ignoring its aspect, then takes a uniformly placed size x size crop (HERBS:
    Resize((510, 510)) + RandomCrop(384)); crop_scale and crop_ratio are not used.
    `squash_size`: 0 unless crop is 'squash_random_crop', then an integer >= size.

    `root`: '' reads the source's own image; otherwise a folder holding the same relative
    paths as the source's `root` (e.g. LEAD++'s DDT crops: with source root /data/CUB,
    root /data/CUB_ddt reads /data/CUB_ddt/train/001.x/a.jpg for /data/CUB/train/001.x/a.jpg).
    """

    name: str
    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    root: str = ""
    crop: str = "random_resized"
    squash_size: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"view name must be a non-empty string, got {self.name!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral):
            raise ValueError(f"view {self.name!r}: size must be an integer, got {self.size!r}")
        if self.size < 1:
            raise ValueError(f"view {self.name!r}: size must be >= 1, got {self.size}")
        object.__setattr__(self, "size", int(self.size))
        scale = self._pair("crop_scale")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(
                f"view {self.name!r}: crop_scale must satisfy 0 < lo <= hi <= 1, got {scale}"
            )
        ratio = self._pair("crop_ratio")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(
                f"view {self.name!r}: crop_ratio must satisfy 0 < lo <= hi, got {ratio}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"view {self.name!r}: interpolation must be one of {sorted(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        self._check_crop()
        if not isinstance(self.root, str | os.PathLike):
            raise ValueError(f"view {self.name!r}: root must be a path, got {self.root!r}")
        object.__setattr__(self, "root", os.fspath(self.root))

    def _check_crop(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(
                f"view {self.name!r}: crop must be one of {list(CROP_MODES)}, got {self.crop!r}"
            )
        squash = self.squash_size
        if isinstance(squash, bool) or not isinstance(squash, numbers.Integral):
            raise ValueError(f"view {self.name!r}: squash_size must be an integer, got {squash!r}")
        if self.crop == "squash_random_crop" and squash < self.size:
            raise ValueError(
                f"view {self.name!r}: crop='squash_random_crop' needs squash_size >= size="
                f"{self.size} (the square the crop is taken from), got {squash}"
            )
        if self.crop != "squash_random_crop" and squash != 0:
            raise ValueError(
                f"view {self.name!r}: squash_size={squash} is only read with "
                f"crop='squash_random_crop' (crop is {self.crop!r}); leave it 0"
            )
        object.__setattr__(self, "squash_size", int(squash))

    def _pair(self, field: str) -> tuple[float, float]:
        """Normalises `field` to a tuple of two floats (configs give lists)."""
        value = getattr(self, field)
        try:
            lo, hi = (float(x) for x in value)
        except (TypeError, ValueError):
            raise ValueError(
                f"view {self.name!r}: {field} must be two numbers (lo, hi), got {value!r}"
            ) from None
        object.__setattr__(self, field, (lo, hi))
        return lo, hi
