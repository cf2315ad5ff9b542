"""Import/export of PyTorch checkpoints (safe `.pth` reader, safetensors, key maps).

Entry points:
  load_pretrained(path, target, arch, strict=False) -> (variables, report)
  read_checkpoint(path) -> {key: ndarray};  write_state_dict(path, {key: ndarray})
  resnet_variables_from_torch(state_dict, target) / resnet_variables_to_torch(variables)
  fgjax weights convert IN OUT --arch resnet50 [--to torchvision]
"""

from fgjax.weights.formats import read_checkpoint, select_state_dict, write_state_dict
from fgjax.weights.load import (
    export_torch,
    load_pretrained,
    require_complete,
    save_variables,
    target_for_arch,
    variables_from_tensors,
    variables_from_torch,
    variables_to_torch,
)
from fgjax.weights.load_report import LoadReport
from fgjax.weights.pth_reader import CheckpointFormatError, UnsafeCheckpointError, load_pth
from fgjax.weights.pth_writer import save_pth
from fgjax.weights.resnet_keys import resnet_variables_from_torch, resnet_variables_to_torch
from fgjax.weights.safetensors_io import load_safetensors, save_safetensors
from fgjax.weights.variables import ImportReport, flatten_to_strings, unflatten_strings

__all__ = [
    "require_complete",
    "CheckpointFormatError",
    "ImportReport",
    "LoadReport",
    "UnsafeCheckpointError",
    "export_torch",
    "flatten_to_strings",
    "load_pretrained",
    "load_pth",
    "load_safetensors",
    "read_checkpoint",
    "resnet_variables_from_torch",
    "resnet_variables_to_torch",
    "save_pth",
    "save_safetensors",
    "save_variables",
    "select_state_dict",
    "target_for_arch",
    "unflatten_strings",
    "variables_from_tensors",
    "variables_from_torch",
    "variables_to_torch",
    "write_state_dict",
]
