"""Dataset kinds (`config.data.kind`): each reads one dataset as it is distributed.

A module here registers a kind with `@register_dataset(kind, splits=..., coarse_levels=...,
layout=...)` on a function `(data_config, split) -> source`; every module of this package
is imported on first use, so adding a dataset touches no other file. `build_source`
checks the split and coarse level against what the kind declares before reading anything.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetKind:
    """What a `config.data.kind` reads.

    kind: the config name. splits: the split names it accepts (`config.data.train_split`,
    `config.data.test_split`); empty when any name is accepted (image folders, CSV).
    coarse_levels: its coarse levels, default first (`config.data.coarse`). layout: one
    line saying what `config.data.root` must hold (quoted by errors and `--help` texts).
    """

    kind: str
    build: Callable
    splits: tuple[str, ...]
    coarse_levels: tuple[str, ...]
    layout: str


_KINDS: dict[str, DatasetKind] = {}


def register_dataset(
    kind: str, *, splits: tuple[str, ...], coarse_levels: tuple[str, ...] = (), layout: str
) -> Callable[[Callable], Callable]:
    """Decorator registering `build(data_config, split) -> source` as `kind`."""

    def wrap(build: Callable) -> Callable:
        if kind in _KINDS and _KINDS[kind].build is not build:
            raise ValueError(f"dataset kind {kind!r} is registered twice")
        _KINDS[kind] = DatasetKind(kind, build, tuple(splits), tuple(coarse_levels), layout)
        return build

    return wrap


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def dataset_kinds() -> dict[str, DatasetKind]:
    """Every registered kind, by name."""
    _discover()
    return dict(sorted(_KINDS.items()))


def dataset_kind(kind: str) -> DatasetKind:
    kinds = dataset_kinds()
    if kind not in kinds:
        raise ValueError(f"config.data.kind={kind!r} is not one of {sorted(kinds)}")
    return kinds[kind]


def build_source(data_config, split: str):
    """The source of `split` for `config.data` (kind, root, coarse, ...).

    The split must be one the kind declares; the error lists them and names the field.
    """
    spec = dataset_kind(data_config.kind)
    if spec.splits and split not in spec.splits:
        raise ValueError(
            f"dataset {spec.kind!r} has no split {split!r} (config.data.train_split / "
            f"test_split); its splits are {list(spec.splits)}"
        )
    coarse = data_config.get("coarse", "") or ""
    if spec.coarse_levels and coarse not in ("", "none", *spec.coarse_levels):
        raise ValueError(
            f"config.data.coarse={coarse!r}: dataset {spec.kind!r} has coarse levels "
            f"{list(spec.coarse_levels)} (or '' for {spec.coarse_levels[0]!r}, 'none')"
        )
    return spec.build(data_config, split)
