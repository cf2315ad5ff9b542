"""LCR's rationale maps: the Grad-CAM the branch is fitted to and its learned attention, per image.

The command: `fgjax rationale` (fgjax/cli/rationale.py).
"""

from __future__ import annotations

COLUMNS = ("image", "Grad-CAM (target)", "learned attention")
