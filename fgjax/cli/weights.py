"""`fgjax weights convert IN OUT --arch ARCH [--to fgjax|torchvision]`.

  convert  reads IN (torch .pth/.pt zip or legacy, .safetensors, torch-keyed or fgjax
           .npz), maps it into the fgjax variables of ARCH and writes OUT: fgjax .npz
           ('/'-joined variable paths, e.g. params/layer1_0/conv1/kernel) with
           `--to fgjax` (default for .npz outputs), or a torchvision/timm-keyed
           .pth / .safetensors / .npz with `--to torchvision` (default otherwise).
           Prints the load report; `--strict` fails on anything missing/unexpected.
  inspect  lists IN's tensors (name, dtype, shape) and where a ResNet backbone sits.

IN may also be an fgjax training run: its workdir (the newest checkpoint) or
WORKDIR/checkpoints/STEP; its backbone is read (e.g. to export it for PyTorch).

ARCH: a `fgjax.models.registry` name (resnet18/34/50/101/152, timm Swin names such as
swin_large_patch4_window12_384; `--help` lists them), or resnet (block, depth and width
read from IN).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from fgjax.models.registry import arch_names
from fgjax.weights.formats import read_checkpoint
from fgjax.weights.load import (
    export_torch,
    is_fgjax_file,
    target_for_arch,
    variables_from_tensors,
)
from fgjax.weights.load import save_variables as save_fgjax_npz
from fgjax.weights.pth_reader import CheckpointFormatError, UnsafeCheckpointError
from fgjax.weights.resnet_keys import find_backbone
from fgjax.weights.variables import flatten_to_strings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgjax weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a checkpoint to fgjax or torchvision layout")
    convert.add_argument("input")
    convert.add_argument("output")
    convert.add_argument(
        "--arch",
        required=True,
        help=f"{', '.join(arch_names())}, or resnet (block, depth and width read from IN)",
    )
    convert.add_argument("--to", choices=("fgjax", "torchvision"), default=None)
    convert.add_argument("--prefix", default=None, help="backbone key prefix (auto when unset)")
    convert.add_argument("--strict", action="store_true")
    inspect = sub.add_parser("inspect", help="list the tensors of a checkpoint")
    inspect.add_argument("input")
    return parser


def _read_input(path: str, notes: list[str]) -> dict[str, np.ndarray]:
    """The tensors of a weights file, or the backbone of an fgjax training run (`runs/x`:
    its newest checkpoint, or `runs/x/checkpoints/STEP`) as fgjax '/'-joined paths."""
    # This entry point may read training checkpoints (tests/test_layering.py).
    from fgjax.train.checkpoint import read_saved_state, run_checkpoint

    run = run_checkpoint(path)
    if run is None:
        return read_checkpoint(path, notes)
    saved, step = read_saved_state(*run)
    notes.append(f"fgjax training run {run[0]}, step {step}: its backbone")
    model_state = saved.get("model_state", {})
    variables = {"params": saved["params"]["backbone"]}
    variables.update({c: t["backbone"] for c, t in model_state.items() if "backbone" in t})
    return flatten_to_strings(variables)


def _convert(args: argparse.Namespace) -> int:
    to = args.to or ("fgjax" if args.output.lower().endswith(".npz") else "torchvision")
    if to == "fgjax" and not args.output.lower().endswith(".npz"):
        raise ValueError(f"{args.output}: fgjax variables are written as .npz")
    notes: list[str] = []
    tensors = _read_input(args.input, notes)
    target = target_for_arch(args.arch, tensors)
    variables, report = variables_from_tensors(tensors, target, args.arch, args.prefix)
    report.notes[:0] = notes
    print(f"{args.input} -> {args.arch}:")
    print(report)
    if args.strict:
        report.raise_if_incomplete(args.input)
    if to == "fgjax":
        count = save_fgjax_npz(args.output, variables)
    else:
        count = len(export_torch(args.output, variables, args.arch))
    print(f"wrote {count} tensors to {args.output}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    notes: list[str] = []
    tensors = _read_input(args.input, notes)
    for line in notes:
        print(f"note: {line}")
    for key, value in tensors.items():
        print(f"{key}\t{value.dtype}\t{tuple(value.shape)}")
    if not is_fgjax_file(tensors):
        prefix, sequential, found = find_backbone(tensors)
        for line in found:
            print(f"note: {line}")
        print(
            f"ResNet backbone prefix: {prefix!r}"
            + (" (nn.Sequential layout)" if sequential else "")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 on a bad input file)."""
    args = _parser().parse_args(argv)
    try:
        return _convert(args) if args.command == "convert" else _inspect(args)
    except (CheckpointFormatError, UnsafeCheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
