"""Methods: each an objective plugged into the generic trainer (contract in base.py).

Every module of this package is imported on first use, so a new method is one file
that defines a `Method` subclass decorated with `@register`; nothing else changes.

A method may also live outside fgjax, in any importable module that registers it the
same way (`from fgjax.methods import Method, register`); `discover()` imports it from

- the environment variable `FGJAX_METHODS`: comma-separated module names, e.g.
  `FGJAX_METHODS=my_methods.sparse,my_methods.other fgjax train --config ...` (the
  modules must be importable: installed, or their folder on PYTHONPATH);
- the entry points of group `fgjax.methods` of installed distributions, each loaded
  once per process, e.g. in the distribution's pyproject.toml:

      [project.entry-points."fgjax.methods"]
      sparse = "my_methods.sparse"

A recipe then sets `config.method` to the registered name, and every command that
reads a config (`fgjax train`, `fgjax eval` on the run's config.json, ...) finds it.
A module that fails to import is a ValueError naming FGJAX_METHODS or the entry point.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
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

ENV_VAR = "FGJAX_METHODS"
ENTRY_POINT_GROUP = "fgjax.methods"
_entry_points_loaded = False


def _import_external(name: str, where: str) -> None:
    """Import the module `name` that `where` names, a ValueError saying so on failure."""
    try:
        importlib.import_module(name)
    except Exception as err:  # an ImportError, or any error the module raises
        raise ValueError(
            f"{where} names the method module {name!r}, which fails to import: "
            f"{type(err).__name__}: {err}"
        ) from err


def _load_entry_points() -> None:
    """Load every entry point of group `fgjax.methods` (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"the entry point {ep.name!r} = {ep.value!r} of group {ENTRY_POINT_GROUP!r}"
        dist = getattr(ep, "dist", None)
        if dist is not None:
            where += f" (distribution {dist.name!r})"
        try:
            ep.load()
        except Exception as err:
            _entry_points_loaded = False  # the next call reports it again
            raise ValueError(
                f"{where} names the method module {ep.module!r}, which fails to import: "
                f"{type(err).__name__}: {err}"
            ) from err


def discover() -> None:
    """Import every module of `fgjax.methods`, every module named in `$FGJAX_METHODS` and
    every entry point of group `fgjax.methods`, so their `@register` decorators run."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    for name in os.environ.get(ENV_VAR, "").split(","):
        if name.strip():
            _import_external(name.strip(), f"{ENV_VAR}={os.environ[ENV_VAR]!r}")
    _load_entry_points()


def method_class(name: str) -> type[Method]:
    """The registered method called `name` (an error listing the choices otherwise)."""
    discover()
    if name not in _REGISTRY:
        raise ValueError(
            f"config.method={name!r}: choose one of {sorted(_REGISTRY)} (a method defined "
            f"outside fgjax: name its module in {ENV_VAR}, see fgjax.methods)"
        )
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
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
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
