"""What a resumed run may change: a checkpoint continues the run whose config it saved.

A rerun in a workdir that holds a checkpoint resumes it. Its config must be the saved one
but for the fields that say how long to train, how often to log and save, where the data
lives and what is evaluated (`RESUMABLE`); any other difference (the model, the method,
the optimiser, the batch size, the seed, the data's splits and views) is a different run,
refused before anything is touched: its checkpoints are not corrupt, and restoring them
into another model would fail or, worse, continue with silently changed semantics.
"""

from __future__ import annotations

from typing import Any

# Dotted config paths (a path and everything below it) a resumed run may change.
RESUMABLE = (
    "train.num_epochs",
    "train.max_steps",
    "train.progress_bar",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.max_bad_steps",
    "data.root",
    "data.num_workers",
    "data.allow_missing",
    "model.init_from",  # read at step 0 only
    "eval",
)


class ConfigChangedError(ValueError):
    """A rerun whose config differs from the one its workdir's checkpoint saved."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(
    saved: dict, now: dict, also: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """`(field, saved value, new value)` for every field (dotted path, `<absent>` for a
    field one side lacks) that differs and that a resumed run may not change (neither in
    `RESUMABLE` nor in `also`, e.g. a method's `resumable_fields`); the two configs as
    JSON trees (tuples as lists, as `config.json` holds them)."""
    old, new = _flatten(saved), _flatten(now)
    absent = "<absent>"
    allowed = (*RESUMABLE, *also)
    return [
        (field, old.get(field, absent), new.get(field, absent))
        for field in sorted(old.keys() | new.keys())
        if old.get(field, absent) != new.get(field, absent)
        and not any(field == r or field.startswith(r + ".") for r in allowed)
    ]


def check_same_run(
    saved: dict, now: dict, workdir: str, step: int, also: tuple[str, ...] = ()
) -> None:
    """Raise `ConfigChangedError` naming each field that differs from the config saved
    with `workdir`'s checkpoint `step` (beyond `config_changes`' allowance), and how to
    start a new run from it instead."""
    changes = config_changes(saved, now, also)
    if not changes:
        return
    listed = "; ".join(f"{f}: {a!r} (saved) -> {b!r}" for f, a, b in changes[:8])
    more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
    if any(a == "<absent>" for _, a, _ in changes):
        more += (
            " (a field <absent> from the saved config came with a newer fgjax: the run was "
            "trained without it, and its default may change what the run computes)"
        )
    raise ConfigChangedError(
        f"{workdir} holds a run with another config (checkpoint {step}): {listed}{more}. "
        f"Resume it with its own config ({workdir}/config.json, changing only "
        f"{', '.join(RESUMABLE)}), or start a new run from its weights in another workdir: "
        f"--config.model.init_from={workdir}"
    )
