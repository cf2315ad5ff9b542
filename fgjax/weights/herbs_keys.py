"""HERBS `best.pt` head tensors -> `fgjax.models.herbs.HerbsHead` variables.

The fgjax tree mirrors the PyTorch module tree, so the rule is: split the key on '.', that
is the flax path; only the leaf is renamed (herbs.md sections 8.2 / 8.3):

  <path>.weight  [out, in] or [out, in, 1]   params/<path>/kernel  [in, out]  (Linear,
                                               channel Conv1d, token-axis Up_*/Down_*)
  <path>.weight  [C]                          params/<path>/scale             (BatchNorm)
  <path>.bias                                 params/<path>/bias
  <path>.running_mean / running_var           batch_stats/<path>/mean / var
  combiner.adj1 [J, J], combiner.alpha1 [1]   params/combiner/adj1, alpha1    (as is)
  *.num_batches_tracked                       skipped (fgjax keeps no BN step counter)
  backbone.*                                  skipped: the Swin's, see swin_keys

e.g. `fpn_down.Up_layer2.weight [2304, 576, 1]` -> `params/fpn_down/Up_layer2/kernel
[576, 2304]`, `fpn_classifier_up_layer3.1.running_var` ->
`batch_stats/fpn_classifier_up_layer3/1/var`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fgjax.weights.report import LoadReport
from fgjax.weights.swin_keys import HERBS_PREFIX, unwrap_state_dict
from fgjax.weights.variables import Path, fill, flatten

_STATS = {"running_mean": "mean", "running_var": "var"}


def flax_path(key: str, targets: Mapping[Path, Any]) -> Path | None:
    """The flax variable path of a head key, or None if `targets` has no such variable."""
    *modules, leaf = key.split(".")
    if leaf in _STATS:
        candidates = [("batch_stats", *modules, _STATS[leaf])]
    elif leaf == "weight":
        candidates = [("params", *modules, "kernel"), ("params", *modules, "scale")]
    else:
        candidates = [("params", *modules, leaf)]
    return next((c for c in candidates if c in targets), None)


def _to_flax(path: Path, value: np.ndarray) -> np.ndarray:
    """Linear [out, in] / Conv1d(k=1) [out, in, 1] -> Dense kernel [in, out]."""
    if path[-1] == "kernel" and value.ndim >= 2:
        return value.reshape(value.shape[0], -1).T  # other shapes surface as mismatches
    return value


def _torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[0]) if path[-1] == "kernel" else shape


def herbs_head_variables_from_torch(
    state_dict: Mapping[str, Any], target: Mapping[str, Any]
) -> tuple[dict, LoadReport]:
    """Load the head tensors of a HERBS state dict into `HerbsHead` variables.

    Args:
      state_dict: key -> array, a `best.pt` model dict (optionally wrapped as
        `{'model': ...}`); `backbone.*` keys are left to `swin_variables_from_torch`.
      target: the head's variables `{'params': ..., 'batch_stats': ...}` (arrays or
        `jax.eval_shape` structs); they fix the expected names and shapes.
    Returns:
      `(variables, report)`: `target` with every matched tensor replaced by a float32
      array; `report.unexpected` lists head keys with no variable, `missing` the
      variables no key filled, `mismatched` shapes in torch layout.
    """
    targets = flatten(target)
    report = LoadReport()
    sources: dict[Path, tuple[str, np.ndarray]] = {}
    for key, value in unwrap_state_dict(state_dict).items():
        if key.startswith(HERBS_PREFIX) or key.endswith(".num_batches_tracked"):
            continue
        path = flax_path(key, targets)
        if path is None:
            report.unexpected.append(key)
            continue
        sources[path] = (key, np.asarray(value, dtype=np.float32))
    variables = fill(target, sources, report, convert=_to_flax, source_shape=_torch_shape)
    return variables, report
