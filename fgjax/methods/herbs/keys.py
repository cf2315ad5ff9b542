"""HERBS `best.pt` head tensors -> `fgjax.methods.herbs.model.HerbsHead` variables.

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

`herbs_variables_from_torch` loads a whole `best.pt` (Swin + head) into the variables of
`fgjax.methods.herbs.method.HerbsNet`, whose tree is the checkpoint's: `params/backbone` from the
`backbone.*` keys (`swin_keys`, timm 0.4.12 layout), `params/head` and
`batch_stats/head` from the head keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fgjax.weights.load_report import LoadReport
from fgjax.weights.swin_keys import HERBS_PREFIX, swin_variables_from_torch, unwrap_state_dict
from fgjax.weights.variables import ImportReport, Path, fill, flatten

# The head's top-level modules in a best.pt (spec 8.2 C); the selector has no tensors.
HEAD_MODULES = ("fpn_down.", "fpn_up.", "fpn_classifier_", "combiner.")
# The Swin's own ImageNet classifier: in every best.pt, never used by HERBS (spec 9).
_SWIN_CLASSIFIER = HERBS_PREFIX + "head."

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


def _in_group(path: str, group: str) -> str:
    """'params/fpn_up/x/bias' -> 'params/<group>/fpn_up/x/bias'."""
    collection, _, rest = path.partition("/")
    return f"{collection}/{group}/{rest}"


def is_herbs_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """True when the (optionally `{'model': ...}`-wrapped) state dict holds HERBS head keys."""
    return any(k.startswith(HEAD_MODULES) for k in unwrap_state_dict(state_dict))


def herbs_variables_from_torch(
    state_dict: Mapping[str, Any], target: Mapping[str, Any]
) -> tuple[dict, ImportReport]:
    """Load a whole HERBS `best.pt` model dict into `HerbsNet` variables.

    Args:
      state_dict: key -> array, `backbone.` + Swin (timm 0.4.12) keys and the head's keys,
        optionally wrapped as `{'model': ...}`.
      target: `{'params': {'backbone': ..., 'head': ...}, 'batch_stats': {'head': ...}}`
        (arrays or `jax.eval_shape` structs).
    Returns:
      `(variables, report)`: `target` with every matched tensor replaced; `missing` names
      variable paths ('params/backbone/...', 'batch_stats/head/...'), `unexpected` and
      `mismatched` checkpoint keys. The Swin's unused `backbone.head.*` classifier and the
      BatchNorm counters are `ignored`, and the buffers the Swin derives are skipped.
    """
    params, stats = target["params"], target["batch_stats"]
    swin, swin_report = swin_variables_from_torch(state_dict, {"params": params["backbone"]})
    head, head_report = herbs_head_variables_from_torch(
        state_dict, {"params": params["head"], "batch_stats": stats["head"]}
    )
    report = ImportReport(
        loaded=swin_report.loaded + head_report.loaded,
        missing=[f"params/backbone/{p}" for p in swin_report.missing]
        + [_in_group(p, "head") for p in head_report.missing],
        mismatched=swin_report.mismatched + head_report.mismatched,
        notes=[
            "HERBS checkpoint: the Swin from backbone.* (timm 0.4.12 layout), the head from "
            + ", ".join(m.rstrip(".") + "*" for m in HEAD_MODULES)
        ],
    )
    # The Swin map reports every non-backbone key; the head map has taken those it knows.
    backbone_unexpected = [k for k in swin_report.unexpected if k.startswith(HERBS_PREFIX)]
    report.ignored = [k for k in backbone_unexpected if k.startswith(_SWIN_CLASSIFIER)]
    report.unexpected = [k for k in backbone_unexpected if k not in report.ignored]
    report.unexpected += head_report.unexpected
    if report.ignored:
        report.notes.append(
            "ignored backbone.head.* (the Swin's ImageNet classifier, unused by HERBS)"
        )
    variables = {
        "params": {"backbone": swin["params"], "head": head["params"]},
        "batch_stats": {**stats, "head": head["batch_stats"]},
    }
    return variables, report
