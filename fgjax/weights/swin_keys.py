"""PyTorch Swin state dicts <-> `fgjax.models.swin.Swin` variables.

Three source layouts are recognised from the keys alone (herbs.md section 8.2):

  old   Microsoft `.pth` / timm 0.4.12: patch merging at the END of stage i,
        `layers.{i}.downsample.*` for i = 0..S-2, classifier `head.*`, and the buffers
        `relative_position_index` / `attn_mask` persisted.
  new   timm >= 0.9: merging at the START of stage i+1, `layers.{i+1}.downsample.*`,
        classifier `head.fc.*`, no buffers. Same rule as timm's own checkpoint filter: a
        `layers.0.downsample.*` key means old (new stage 0 never downsamples).
  herbs a HERBS `best.pt` model dict: `backbone.` + old layout, plus the HERBS head
        (`fpn_down.*`, `fpn_up.*`, `fpn_classifier_*`, `combiner.*`), which is reported
        as unexpected for the head's own loader to pick up.

The fgjax parameter tree mirrors the old layout (see fgjax/models/swin.py), so only the
new layout needs the downsample index shift. Buffers are derived in fgjax and skipped
(neither loaded nor unexpected); the classifier head is unexpected (the backbone has none).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fgjax.weights.load_report import LoadReport
from fgjax.weights.variables import flax_to_torch, torch_module_path, torch_shape, torch_to_flax

HERBS_PREFIX = "backbone."
_BUFFERS = ("relative_position_index", "attn_mask")
_OLD_MARKER = re.compile(r"^layers\.0\.downsample\.")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def unwrap_state_dict(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept `{'model': sd}` (Microsoft files, HERBS best.pt) and `{'state_dict': sd}`."""
    for wrapper in ("model", "state_dict"):
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return state_dict


def is_old_layout(keys: list[str]) -> bool:
    """True for Microsoft / timm 0.4.12 keys (merging closes a stage), False for timm >= 0.9."""
    return any(_OLD_MARKER.match(k) for k in keys)


def _shift_downsample(key: str, offset: int) -> str:
    return _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + offset}.downsample.", key)


def _flax_leaf(path: tuple[str, ...], params: Mapping[tuple[str, ...], Any]) -> tuple[str, ...]:
    """torch `weight` is a flax `kernel` (Dense/Conv) or `scale` (LayerNorm)."""
    if path[-1] != "weight":
        return path
    for leaf in ("kernel", "scale"):
        if path[:-1] + (leaf,) in params:
            return path[:-1] + (leaf,)
    return path


def _split_sources(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Backbone tensors keyed by (old or new) Swin names, the keys that are never ours
    (a HERBS head), and the prefix the backbone keys carried."""
    state_dict = unwrap_state_dict(state_dict)
    if not any(k.startswith(HERBS_PREFIX) for k in state_dict):
        return dict(state_dict), [], ""
    backbone = {
        k[len(HERBS_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(HERBS_PREFIX)
    }
    foreign = [k for k in state_dict if not k.startswith(HERBS_PREFIX)]
    return backbone, foreign, HERBS_PREFIX


def swin_variables_from_torch(
    state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any]
) -> tuple[dict, LoadReport]:
    """Load a PyTorch Swin state dict (old, new or HERBS layout) into Swin variables.

    Args:
      state_dict: name -> array, optionally wrapped as `{'model': ...}`.
      target: the Swin's variables `{'params': ...}` (arrays or `jax.eval_shape` structs);
        they fix the expected names and shapes.
    Returns:
      `(variables, report)`: a copy of `target` with every matched tensor replaced by a
      float32 array, and a LoadReport whose `unexpected` holds source keys (as given, with
      any `backbone.` prefix) and whose `mismatched` shapes are both in torch layout.
    """
    backbone, foreign, prefix = _split_sources(state_dict)
    old = is_old_layout(list(backbone))
    params = traverse_util.flatten_dict(dict(target["params"]))
    new_params = dict(params)
    report = LoadReport(unexpected=list(foreign))
    loaded_paths: set[tuple[str, ...]] = set()

    for key, value in backbone.items():
        source_name = prefix + key
        if key.endswith(_BUFFERS):
            continue  # derived in fgjax (relative index, shifted-window mask)
        if key.startswith("head."):
            report.unexpected.append(source_name)
            continue
        old_key = key if old else _shift_downsample(key, -1)
        path = _flax_leaf(torch_module_path(old_key), params)
        if path not in params:
            report.unexpected.append(source_name)
            continue
        value = torch_to_flax(path, np.asarray(value, dtype=np.float32))
        if tuple(value.shape) != tuple(params[path].shape):
            wanted = torch_shape(path, tuple(params[path].shape))
            report.mismatched.append((source_name, tuple(np.shape(backbone[key])), wanted))
            continue
        new_params[path] = jnp.asarray(value)
        loaded_paths.add(path)
        report.loaded.append(source_name)

    report.missing = ["/".join(p) for p in params if p not in loaded_paths]
    variables = dict(target)
    variables["params"] = traverse_util.unflatten_dict(new_params)
    return variables, report


def swin_variables_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Swin variables -> a timm >= 0.9 state dict (float32 numpy, no buffers, no head)."""
    out = {}
    for path, value in traverse_util.flatten_dict(dict(variables["params"])).items():
        leaf = path[-1]
        names = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
        names.append("weight" if leaf in ("kernel", "scale") else leaf)
        key = _shift_downsample(".".join(names), +1)
        out[key] = flax_to_torch(path, np.asarray(value, dtype=np.float32))
    return out
