"""Optional JPEG decoding with simplejpeg (libjpeg-turbo), the `fast` extra.

The same library as PIL's JPEG decoder, called on the file's bytes in one go instead
of through PIL's incremental reads; at the same DCT scale (1/2, 1/4, 1/8, chosen by
fgjax.data.decode) it gives the same pixels. (libjpeg-turbo also scales by other M/8,
but those inverse DCTs have no SIMD code: 7/8 decodes slower than 8/8.)

`config.data.decoder`: 'auto' (simplejpeg when importable, else PIL), 'pil', 'simplejpeg'.
"""

from __future__ import annotations

import math

from PIL import Image

try:
    import simplejpeg
except ImportError:  # the `fast` extra is not installed: PIL decodes everything
    simplejpeg = None

DECODERS = ("auto", "pil", "simplejpeg")
# Colour spaces libjpeg-turbo converts to RGB itself; CMYK/YCCK files go through PIL.
_MODES = ("RGB", "L")


def resolve_decoder(decoder: str) -> str:
    """The decoder `decoder` names: 'auto' -> 'simplejpeg' if importable, else 'pil'."""
    if decoder not in DECODERS:
        raise ValueError(f"config.data.decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "pil" if simplejpeg is None else "simplejpeg"
    if decoder == "simplejpeg" and simplejpeg is None:
        raise ImportError(
            "config.data.decoder='simplejpeg' needs the simplejpeg package: "
            "pip install 'fgjax[fast]' (or use decoder 'auto' or 'pil')"
        )
    return decoder


def handles(img: Image.Image, path: str | None) -> bool:
    """Whether simplejpeg decodes this opened (not yet loaded) image."""
    return path is not None and img.format == "JPEG" and img.mode in _MODES


def decode_reduced(path: str, size: tuple[int, int], factor: int) -> Image.Image:
    """The JPEG at `path` (original `size` = (width, height)) decoded at 1/`factor` scale
    (1, 2, 4 or 8): an RGB image of ceil(width / factor) x ceil(height / factor)."""
    with open(path, "rb") as f:
        data = f.read()
    width, height = size
    rgb = simplejpeg.decode_jpeg(
        data,
        "rgb",
        min_width=math.ceil(width / factor),
        min_height=math.ceil(height / factor),
    )
    return Image.fromarray(rgb)
