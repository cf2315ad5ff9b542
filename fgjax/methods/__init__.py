"""Methods: each an objective plugged into the generic trainer (see base.py)."""

from __future__ import annotations

import ml_collections

from fgjax.methods.base import LossAux, Method
from fgjax.methods.byol import BYOL
from fgjax.methods.moco import MoCo
from fgjax.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {"moco": MoCo, "byol": BYOL, "supervised": Supervised}


def build_method(config: ml_collections.ConfigDict, num_classes: int, total_steps: int) -> Method:
    if config.method not in METHODS:
        raise ValueError(f"config.method={config.method!r}; choose one of {sorted(METHODS)}")
    return METHODS[config.method](config, num_classes, total_steps)


__all__ = ["METHODS", "LossAux", "Method", "build_method"]
