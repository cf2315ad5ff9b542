"""PyTorch CLIP checkpoints <-> `fgjax.models.clip` tower variables.

Layouts, recognised from the keys:

  openai   OpenAI's names: `visual.conv1.weight`, `visual.class_embedding`,
           `visual.transformer.resblocks.N.attn.in_proj_weight` (packed q, k, v), ...,
           `visual.proj`; text at the top level (`token_embedding.weight`,
           `positional_embedding`, `transformer.resblocks.N...`, `ln_final`,
           `text_projection`); `logit_scale`. open_clip's CLIP checkpoints
           (`open_clip_pytorch_model.bin`, `open_clip_model.safetensors`, training
           checkpoints with `module.` keys) use the same names, and so do the module
           attributes of OpenAI's TorchScript `ViT-B-16.pt` downloads, which
           `fgjax.weights.pth_reader` reads without running their code.
  hf       Hugging Face transformers' `CLIPModel` (`vision_model.*`, `text_model.*`,
           `visual_projection.weight`, `text_projection.weight`): renamed to the OpenAI
           names first (q/k/v packed into `in_proj`, the bias-free projection Linears
           transposed into `proj` / `text_projection` matrices).

The target's parameters say which tower is loaded (`conv1`: image, `token_embedding`:
text); the other tower's tensors, `logit_scale` and the 0-d `input_resolution`,
`context_length`, `vocab_size` of OpenAI's TorchScript files are reported as ignored, the
`attn_mask` / `position_ids` buffers are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fgjax.weights.variables import (
    ImportReport,
    fill,
    flatten,
    flax_to_torch,
    torch_module_path,
    torch_shape,
    torch_to_flax,
)

VISUAL = "visual."
DDP_PREFIX = "module."
_BUFFERS = ("attn_mask", "position_ids")  # derived, never weights
# Not tower weights: the contrastive temperature, and the hyper-parameters OpenAI's
# TorchScript models carry as 0-d tensors (their `build_model` deletes these too).
_NOT_TOWER = ("logit_scale", "logit_bias", "input_resolution", "context_length", "vocab_size")

# Hugging Face name -> OpenAI name, applied in order (whole-name rules first).
_HF_RULES = (
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),  # sic: HF's spelling
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.self_attn\.", ".attn."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
# HF's bias-free projection Linears [E, W] are OpenAI's `x @ proj` matrices [W, E].
_HF_PROJECTIONS = {
    "visual_projection.weight": "visual.proj",
    "text_projection.weight": "text_projection",
}
_QKV = re.compile(r"^(.*)\.attn\.([qkv])_proj\.(weight|bias)$")


def is_hf_layout(keys: list[str]) -> bool:
    """True for Hugging Face `CLIPModel` keys (`vision_model.*` / `text_model.*`)."""
    return any(k.startswith(("vision_model.", "text_model.")) for k in keys)


def hf_to_openai(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face `CLIPModel` tensors under OpenAI's names (see the module doc).

    Keys no rule knows keep their names (and show up as unexpected); a layer whose q, k
    or v projection is absent keeps the other two under `attn.{q,k,v}_proj.*`.
    """
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key in _HF_PROJECTIONS:
            out[_HF_PROJECTIONS[key]] = np.asarray(value).T
            continue
        name = key
        for pattern, repl in _HF_RULES:
            name = re.sub(pattern, repl, name)
        match = _QKV.match(name)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = np.asarray(value)
        else:
            out[name] = value
    for (block, leaf), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{block}.attn.in_proj_{leaf}"] = np.concatenate([parts[p] for p in "qkv"])
        else:
            out.update({f"{block}.attn.{p}_proj.{leaf}": v for p, v in parts.items()})
    return out


def clip_tower(params: Mapping[str, Any]) -> str:
    """'visual' or 'text': which CLIP tower a parameter tree belongs to."""
    if "conv1" in params:
        return "visual"
    if "token_embedding" in params:
        return "text"
    raise ValueError(
        f"not a CLIP tower's parameters (no conv1 or token_embedding): {sorted(params)[:6]}"
    )


def _flax_path(name: str, params: Mapping[tuple[str, ...], Any]) -> tuple[str, ...]:
    """`transformer.resblocks.0.attn.in_proj_weight` -> (..., `attn`, `in_proj`, `kernel`);
    a torch `weight` is the flax `kernel`, `scale` or `embedding` the target has."""
    path = torch_module_path(name)
    if path[-1] in ("in_proj_weight", "in_proj_bias"):
        return path[:-1] + ("in_proj", "kernel" if path[-1].endswith("weight") else "bias")
    if path[-1] == "weight":
        for leaf in ("kernel", "scale", "embedding"):
            if path[:-1] + (leaf,) in params:
                return path[:-1] + (leaf,)
    return path


def clip_variables_from_torch(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    prefix: str | None = None,
) -> tuple[dict[str, Any], ImportReport]:
    """Load an OpenAI / open_clip / Hugging Face CLIP state dict into one tower.

    Args:
      state_dict: name -> array (`fgjax.weights.read_checkpoint` of the file).
      target: `{'params': ...}` of a `CLIPVisionTower` or `CLIPTextTower` (arrays or
        `jax.ShapeDtypeStruct`s); it fixes the tower, names and shapes.
      prefix: strip this prefix and read only the keys under it; by default a `module.`
        (DDP) prefix on every key is stripped.
    Returns:
      (variables, report): `target` with each matched tensor replaced by a float32 array;
      `report` names keys in OpenAI terms (Hugging Face keys are renamed first, see
      `notes`), the other tower and `logit_scale` (etc.) under `ignored`.
    """
    report = ImportReport()
    tensors = dict(state_dict)
    ddp = bool(tensors) and all(k.startswith(DDP_PREFIX) for k in tensors)
    strip = prefix or (DDP_PREFIX if ddp else "")
    if strip:
        tensors = {k[len(strip) :]: v for k, v in tensors.items() if k.startswith(strip)}
        report.notes.append(f"read the keys under prefix {strip!r} (prefix stripped)")
    if is_hf_layout(list(tensors)):
        tensors = hf_to_openai(tensors)
        report.notes.append(
            "Hugging Face CLIPModel keys renamed to OpenAI's (q/k/v packed into in_proj, "
            "projections transposed); the report uses OpenAI names"
        )
    tower = clip_tower(target["params"])
    # A file of the image tower alone (`model.visual.state_dict()`) has no `visual.` prefix.
    visual = VISUAL if any(k.startswith(VISUAL) for k in tensors) else ""
    params = flatten(target["params"])
    sources: dict[tuple[str, ...], tuple[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key.rsplit(".", 1)[-1] in _BUFFERS:
            continue
        mine = key.startswith(VISUAL) == (tower == "visual") if visual else True
        if key in _NOT_TOWER or not mine:
            report.ignored.append(key)
            continue
        path = _flax_path(key[len(visual) :] if tower == "visual" else key, params)
        if path not in params:
            report.unexpected.append(key)
            continue
        sources[("params",) + path] = (key, value)
    if report.ignored:
        report.notes.append(
            f"{len(report.ignored)} tensors of the other tower / logit_scale ignored "
            f"(loading the {tower} tower)"
        )
    variables = fill(
        {"params": target["params"]},
        sources,
        report,
        convert=lambda path, a: torch_to_flax(path, np.asarray(a, np.float32)),
        source_shape=torch_shape,
    )
    return {**target, **variables}, report


def clip_variables_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One CLIP tower's variables -> OpenAI / open_clip state-dict names (float32 numpy;
    the image tower under `visual.`)."""
    params = variables["params"]
    head = VISUAL if clip_tower(params) == "visual" else ""
    out = {}
    for path, value in flatten(params).items():
        *modules, leaf = path
        names = [re.sub(r"^resblocks_(\d+)$", r"resblocks.\1", m) for m in modules]
        if names and names[-1] == "in_proj":
            names[-1] = f"in_proj_{'weight' if leaf == 'kernel' else 'bias'}"
        else:
            names.append("weight" if leaf in ("kernel", "scale", "embedding") else leaf)
        out[head + ".".join(names)] = flax_to_torch(path, np.asarray(value, dtype=np.float32))
    return out
