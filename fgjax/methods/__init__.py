"""Methods: each an objective plugged into the generic trainer (contract in base.py).

Every module of this package is imported on first use, so a new method is one file
that defines a `Method` subclass decorated with `@register`; nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections

from fgjax.methods.base import (
    _REGISTRY,
    EpochUpdate,
    LossAux,
    Method,
    RunInfo,
    StepContext,
    apply_train,
    backbone_variables,
    register,
    replace_backbone,
)


def discover() -> None:
    """Import every module of `fgjax.methods` so their `@register` decorators run."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def method_class(name: str) -> type[Method]:
    """The registered method called `name` (an error listing the choices otherwise)."""
    discover()
    if name not in _REGISTRY:
        raise ValueError(f"config.method={name!r}: choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def registered_methods() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def build_method(config: ml_collections.ConfigDict, run: RunInfo) -> Method:
    """The method `config.method`, checking the config carries its section and views."""
    cls = method_class(config.method)
    if cls.name not in config:
        raise ValueError(
            f"config.method={cls.name!r} but the config has no '{cls.name}' section: build "
            f"the recipe with fgjax.config.default_config({cls.name!r})"
        )
    method = cls(config, run)
    missing = [v for v in method.view_names if v not in config.views]
    if missing:
        raise ValueError(
            f"method {cls.name!r} reads views {list(method.view_names)}; config.views has "
            f"no {', '.join(f'config.views.{v}' for v in missing)}"
        )
    return method


__all__ = [
    "EpochUpdate",
    "LossAux",
    "Method",
    "RunInfo",
    "StepContext",
    "apply_train",
    "backbone_variables",
    "build_method",
    "discover",
    "method_class",
    "register",
    "registered_methods",
    "replace_backbone",
]
