"""`ViewSpec`: one training view (a RandomResizedCrop + flip of a record), as data."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

from fgjax.data.decode import INTERPOLATIONS


@dataclass(frozen=True)
class ViewSpec:
    """One view of every training example: the batch holds `views[name]`, uint8
    [b, size, size, 3], a RandomResizedCrop(crop_scale, crop_ratio, interpolation) of
    the image, flipped horizontally with p = 0.5.

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
        if not isinstance(self.root, str | os.PathLike):
            raise ValueError(f"view {self.name!r}: root must be a path, got {self.root!r}")
        object.__setattr__(self, "root", os.fspath(self.root))

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
