"""torchvision-layout ResNet state dicts <-> fgjax `ResNet` variables.

BasicBlock (resnet18/34: conv1..2, bn1..2 per block) and Bottleneck (resnet50/101/152:
conv1..3, bn1..3) share one rule per tensor (fgjax names mirror torchvision, see
`fgjax.models.resnet`):

  conv1.weight [O, I, kh, kw]            params/conv1/kernel [kh, kw, I, O]
  bn1.weight / bn1.bias                  params/bn1/scale / params/bn1/bias
  bn1.running_mean / running_var         batch_stats/bn1/mean / batch_stats/bn1/var
  layer{s}.{b}.conv{i}, .bn{i}           params/layer{s}_{b}/conv{i}, /bn{i}
  layer{s}.{b}.downsample.0 / .1         .../downsample_conv / .../downsample_bn
  *.num_batches_tracked                  dropped (fgjax keeps no BN step counter)
  fc.*                                   the classifier / MoCo MLP head: not backbone

Training checkpoints of the methods wrap the backbone in a prefix, found here by
looking for `<prefix>layer1.0.conv1.weight` next to `<prefix>conv1.weight`:
torchvision `''`, DDP `module.`, MoCo-style LCR / LEAD++ `module.encoder_q.` (with
`module.encoder_k.*`, `module.queue*`, `module.conv16/bn16` beside it), BuCSFR
`module.encoder_q.net.` (`projector`, `classifer`, label queues beside it), LCR's BYOL
`backbone.` (same tensors as `online_encoder.0.`; `target_encoder.*`, `projector.*`,
`online_predictor.*` beside it), byol-pytorch `online_encoder.net.`. Backbones saved as
`nn.Sequential(*resnet.children())[:-1]` (`<prefix>0.weight`, `<prefix>4.0.conv1.weight`,
e.g. `online_network.encoder.`) are renamed to the torchvision layout first. When
several backbones are present the query/online/student one wins over the
key/target/momentum/teacher copy.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from fgjax.weights.variables import (
    ImportReport,
    Path,
    fill,
    flatten,
    flax_to_torch,
    torch_shape,
    torch_to_flax,
)

_ANCHOR = "layer1.0.conv1.weight"
_SEQ_ANCHOR = "4.0.conv1.weight"
_SEQ_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_PREFER = {"q", "online", "student", "query", "backbone"}
_AVOID = {"k", "target", "momentum", "teacher", "key", "ema"}
_HEADS = {"fc", "head", "classifier", "classifer", "projector", "predictor", "projection"}
_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_BLOCK = re.compile(r"layer(\d+)_(\d+)")


def torch_key(path: Path) -> str | None:
    """fgjax path -> torchvision key, e.g. ('params', 'layer2_0', 'downsample_bn', 'scale')
    -> 'layer2.0.downsample.1.weight'; None for paths outside the ResNet layout."""
    if len(path) < 3 or (path[0], path[-1]) not in _LEAVES:
        return None
    parts = []
    for module in path[1:-1]:
        block = _BLOCK.fullmatch(module)
        if block:
            parts.append(f"layer{block[1]}.{block[2]}")
        elif module == "downsample_conv":
            parts.append("downsample.0")
        elif module == "downsample_bn":
            parts.append("downsample.1")
        elif re.fullmatch(r"(conv|bn)\d", module):
            parts.append(module)
        else:
            return None
    return ".".join(parts + [_LEAVES[(path[0], path[-1])]])


def _score(prefix: str) -> int:
    tokens = set(re.split(r"[._]", prefix.lower()))
    return int(bool(tokens & _PREFER)) - 2 * int(bool(tokens & _AVOID))


def find_backbone(state_dict: Mapping[str, Any]) -> tuple[str, bool, list[str]]:
    """(prefix, sequential layout?, notes) of the ResNet backbone inside `state_dict`.

    Returns prefix '' and a note when no backbone is recognised.
    """
    candidates: list[tuple[str, bool]] = []
    for key in state_dict:
        for anchor, sequential, first in (
            (_ANCHOR, False, "conv1.weight"),
            (_SEQ_ANCHOR, True, "0.weight"),
        ):
            if key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if (not prefix or prefix.endswith(".")) and prefix + first in state_dict:
                    if not sequential or np.ndim(state_dict[prefix + first]) == 4:
                        candidates.append((prefix, sequential))
    if not candidates:
        return "", False, ["no torchvision-layout ResNet backbone recognised in the checkpoint"]
    candidates.sort(key=lambda c: (-_score(c[0]), len(c[0]), c[0]))
    prefix, sequential = candidates[0]
    notes = []
    if len(candidates) > 1:
        names = ", ".join(repr(p) for p, _ in candidates)
        notes.append(
            f"checkpoint holds {len(candidates)} ResNet backbones ({names}); loading {prefix!r} "
            "(query/online/student copies are preferred; pass prefix= to choose another)"
        )
    return prefix, sequential, notes


def _canonical(rest: str, sequential: bool) -> str:
    if not sequential:
        return rest
    head, _, tail = rest.partition(".")
    return f"{_SEQ_NAMES[head]}.{tail}" if head in _SEQ_NAMES and tail else rest


def _group(keys: list[str], depth: int) -> str:
    counts = Counter(".".join(k.split(".")[: max(depth, 1)]) for k in keys)
    return ", ".join(f"{g}.* ({n})" if n > 1 else g for g, n in counts.items())


def resnet_variables_from_torch(
    state_dict: Mapping[str, np.ndarray], target: Mapping[str, Any], *, prefix: str | None = None
) -> tuple[dict[str, Any], ImportReport]:
    """Load a torchvision-layout ResNet state dict into fgjax ResNet variables.

    Args:
      state_dict: checkpoint key -> array in torch layout (conv `[O, I, kh, kw]`).
      target: `{'params': ..., 'batch_stats': ...}` of a `fgjax.models.ResNet` (arrays or
        `jax.ShapeDtypeStruct`s); fixes which tensors are expected and their shapes.
      prefix: backbone key prefix; found automatically when None (see module doc).
    Returns:
      (variables, report): `target` with every mapped tensor replaced by a float32 array
      (mismatched/missing ones keep the target's value), and what happened by name.
    """
    report = ImportReport()
    if prefix is None:
        prefix, sequential, notes = find_backbone(state_dict)
        report.notes += notes
    else:
        sequential = prefix + _SEQ_ANCHOR in state_dict and prefix + _ANCHOR not in state_dict
    if prefix:
        report.notes.append(f"backbone read from keys under prefix {prefix!r} (prefix stripped)")
    if sequential:
        report.notes.append("backbone saved as nn.Sequential of the ResNet's children; renamed")

    expected = {}
    for path in flatten(target):
        key = torch_key(path)
        if key is None:
            raise ValueError(f"target variable {'/'.join(path)} is not part of a fgjax ResNet")
        expected[key] = path
    sources: dict[Path, tuple[str, np.ndarray]] = {}
    outside, heads, counters = [], [], []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            outside.append(key)
            continue
        rest = _canonical(key[len(prefix) :], sequential)
        if rest in expected:
            path = expected[rest]
            sources[path] = (key, value)
        elif rest.endswith("num_batches_tracked"):
            counters.append(key)
        elif rest.split(".")[0] in _HEADS or rest.startswith("queue"):
            heads.append(key)
        else:
            report.unexpected.append(key)

    variables = fill(target, sources, report, torch_to_flax, torch_shape)
    if counters:
        report.notes.append(f"dropped {len(counters)} BatchNorm num_batches_tracked counters")
    if heads:
        groups = _group(heads, prefix.count(".") + 1)
        report.notes.append(f"dropped head tensors (not backbone): {groups}")
    if outside:
        report.notes.append(
            f"ignored tensors outside the backbone prefix {prefix!r}: "
            + _group(outside, prefix.count("."))
        )
    report.ignored += counters + heads + outside
    return variables, report


def resnet_variables_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """fgjax ResNet variables -> torchvision state dict (no `fc.*`), in torchvision order.

    Conv kernels go back to `[O, I, kh, kw]`; every BatchNorm also gets
    `num_batches_tracked = 0` (int64) so `load_state_dict(strict=False)` reports only
    the missing `fc.weight`/`fc.bias`. Returns float32 arrays (int64 counters).
    """
    flat = flatten(variables)
    unknown = sorted({p[0] for p in flat if p[0] not in ("params", "batch_stats")})
    if unknown:
        raise ValueError(f"unexpected variable collections: {unknown}")
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        key = torch_key(path)
        if key is None:
            raise ValueError(f"variable {'/'.join(path)} has no torchvision name")
        out[key] = flax_to_torch(path, np.asarray(value, dtype=np.float32))
        if path[0] == "batch_stats":
            out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.zeros((), np.int64)
    return {key: out[key] for key in sorted(out, key=_torchvision_order)}


_LEAF_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torchvision_order(key: str) -> tuple[int, ...]:
    """Sort key reproducing `torchvision.models.resnet50().state_dict()` order."""
    *modules, leaf = key.split(".")
    rank = []
    for name in modules:
        kind = re.fullmatch(r"(conv|bn|layer)(\d+)", name)
        if name.isdigit():
            rank.append(int(name))
        elif kind and kind[1] == "layer":
            rank.append(100 + int(kind[2]))
        elif kind:
            rank.append(2 * (int(kind[2]) - 1) + (kind[1] == "bn"))
        else:  # downsample
            rank.append(1000)
    return (*rank, _LEAF_ORDER.index(leaf))


def infer_resnet_config(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """`{'block': 'basic' | 'bottleneck', 'stage_sizes': (...), 'width': w}`: the
    `fgjax.models.ResNet` fields of the torchvision ResNet in `state_dict` (Bottleneck
    blocks have a conv3; width = stem channels = the first stage's 3x3 channels)."""
    prefix, sequential, _ = find_backbone(state_dict)
    keys = [_canonical(k[len(prefix) :], sequential) for k in state_dict if k.startswith(prefix)]
    stages: dict[int, int] = {}
    for key in keys:
        match = re.match(r"layer(\d+)\.(\d+)\.conv1\.weight$", key)
        if match:
            s, b = int(match[1]), int(match[2])
            stages[s] = max(stages.get(s, 0), b + 1)
    if not stages or sorted(stages) != list(range(1, len(stages) + 1)):
        raise ValueError("cannot infer a ResNet layout from the checkpoint keys")
    width = int(np.shape(state_dict[prefix + ("0.weight" if sequential else "conv1.weight")])[0])
    return {
        "block": "bottleneck" if "layer1.0.conv3.weight" in keys else "basic",
        "stage_sizes": tuple(stages[s] for s in sorted(stages)),
        "width": width,
    }
