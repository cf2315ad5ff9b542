# %% [markdown]
# # PyTorch weights in and out
#
# fgjax reads PyTorch checkpoints without torch (a restricted unpickler that never runs
# code from the file), maps torchvision / timm / the original repositories' keys onto its
# Flax models, trains from them, and writes a trained backbone back as a torchvision state
# dict. This notebook inspects torchvision's ImageNet ResNet-50, imports it, checks the
# import-export round trip bit for bit, fine-tunes MoCo v2 from it on the embedded demo
# dataset, exports the result and checks that the exported file holds the trained weights.
#
# `TINY = True` (on a CPU) replaces the download with a torchvision-keyed `.pth` of a tiny
# random ResNet written by fgjax itself, and trains it for 2 steps.

# %%
# Setup: the tiny-settings switch, installing fgjax (on Colab only), the devices.
import importlib.util
import os
import subprocess
import sys

TINY = False  # True: tiny settings that run top to bottom in about a minute on a CPU
TINY = TINY or os.environ.get("FGJAX_TINY") == "1"  # the tests set FGJAX_TINY=1
REPO_URL = "https://github.com/YOUR_ORG/fgjax.git"  # PLACEHOLDER: the fgjax repository
CLONE = "/content/fgjax"  # where Colab keeps the clone (its configs/ are read below)
ON_COLAB = importlib.util.find_spec("google.colab") is not None

if ON_COLAB and not os.path.isdir(CLONE):
    subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, CLONE], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", CLONE], check=True)

import jax

import fgjax

# The repository's configs/: the Colab clone, or the checkout fgjax is imported from.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(fgjax.__file__)))
REPO = CLONE if os.path.isdir(CLONE) else CHECKOUT
print("TINY =", TINY, "| fgjax from", os.path.dirname(fgjax.__file__))
print("devices:", jax.devices())

# %% [markdown]
# ## A PyTorch checkpoint
#
# The recipe is the demo's MoCo v2; its model decides the architecture the weights go
# into. Full settings: torchvision's `resnet50-19c8e357.pth` (downloaded, 98 MB) in a
# ResNet-50 on 64 px demo images. Tiny: the tiny demo ResNet, whose random weights fgjax
# writes in torchvision's layout (`variables_to_torch` + `write_state_dict`), with a
# classifier `fc` added as in torchvision's files.

# %%
import urllib.request

import ml_collections
import numpy as np

from fgjax.config import load_config_file
from fgjax.models.factory import backbone_from_config
from fgjax.weights import variables_to_torch, write_state_dict

os.makedirs("runs", exist_ok=True)
config = load_config_file(os.path.join(REPO, "configs", "demo.py"))
if TINY:  # a 1-stage width-4 ResNet on 16 px images, 2 steps
    config.update_from_flattened_dict(
        {
            "model.overrides.stage_sizes": (1,),
            "model.overrides.width": 4,
            "data.image_size": 16,
            "data.num_workers": 0,
            "data.procedural.image_size": 16,
            "data.procedural.images_per_class": 8,
            "moco.hidden_dim": 16,
            "moco.dim": 8,
            "moco.queue_size": 32,
            "train.batch_size": 16,
            "train.max_steps": 2,
            "train.checkpoint_every_steps": 2,
            "eval.batch_size": 32,
        }
    )
    ARCH = "resnet"  # any ResNet: block, stage sizes and width are read from the file
    PTH = "runs/tiny_resnet_torchvision.pth"
    backbone = backbone_from_config(config.model)
    shapes = jax.eval_shape(  # the variables' shapes, without running anything
        lambda: backbone.init(jax.random.key(0), np.zeros((1, 16, 16, 3)), train=False)
    )
    rng = np.random.default_rng(0)
    donor = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    donor["batch_stats"] = jax.tree.map(np.abs, donor["batch_stats"])  # variances >= 0
    state_dict = variables_to_torch(donor, ARCH)
    width = [v for k, v in state_dict.items() if k.endswith("bn3.weight")][-1].shape[0]
    state_dict["fc.weight"] = rng.normal(0, 0.01, (10, width)).astype(np.float32)
    state_dict["fc.bias"] = np.zeros(10, np.float32)
    write_state_dict(PTH, state_dict)
else:
    ARCH = "resnet50"
    PTH = "runs/resnet50-19c8e357.pth"
    if not os.path.exists(PTH):
        url = "https://download.pytorch.org/models/resnet50-19c8e357.pth"
        urllib.request.urlretrieve(url, PTH)
    config.model.overrides = ml_collections.ConfigDict()  # the real ResNet-50
    config.update_from_flattened_dict(
        {
            "model.arch": ARCH,
            "data.image_size": 64,
            "data.procedural.image_size": 64,
            "train.num_epochs": 20,
        }
    )
print(PTH, f"{os.path.getsize(PTH) / 1e6:.1f} MB")

# %% [markdown]
# ## Inspect
#
# `python -m fgjax.weights inspect FILE` lists every tensor and where the ResNet backbone
# sits; here the first few.

# %%
import contextlib
import io

from fgjax.cli.weights import main as weights_cli

listing = io.StringIO()
with contextlib.redirect_stdout(listing):
    assert weights_cli(["inspect", PTH]) == 0
lines = listing.getvalue().splitlines()
print("\n".join(lines[:8] + ["..."] + lines[-3:]))

# %% [markdown]
# ## Import, and the round trip back
#
# `load_pretrained` fills the backbone's variables and reports what it loaded, what it
# ignored (the classifier, BatchNorm counters) and anything missing or of the wrong
# shape. Exporting the imported variables again must give the file's backbone tensors
# exactly.

# %%
from fgjax.weights import export_torch, load_pretrained, read_checkpoint, target_for_arch

original = read_checkpoint(PTH)
target = target_for_arch(ARCH, original)
variables, report = load_pretrained(PTH, target, ARCH)
print(report)
back = export_torch("runs/round_trip.pth", variables, ARCH)
# Weights and BatchNorm statistics; torch's BatchNorm step counters carry no weights
# (torchvision's 2017 ResNet-50 file has none).
tensors = [k for k in back if not k.endswith("num_batches_tracked")]
left_out = sorted(k for k in set(original) - set(back) if not k.endswith("num_batches_tracked"))
round_trip = max(float(np.max(np.abs(back[k] - original[k]))) for k in tensors)
print(f"{len(tensors)} tensors back, left out: {left_out}")
print(f"round trip: max |difference| = {round_trip}")
assert round_trip == 0.0 and all(k.startswith("fc.") for k in left_out)

# %% [markdown]
# ## Train and evaluate from the imported weights
#
# `config.model.init_from` (`--config.model.init_from=PATH` on the command line) starts
# the backbone, and MoCo's key encoder, from the file. `eval.at_start` evaluates the
# imported network before the first step.

# %%
import json

from fgjax.train.loop import train_and_evaluate

WORKDIR = "runs/from_torch"
config.model.init_from = PTH
result = train_and_evaluate(config, WORKDIR)
with open(os.path.join(WORKDIR, "eval.json")) as f:
    evaluation = json.load(f)
for name in ("retrieval_recall@1", "retrieval_map", "knn_top1"):
    before, after = evaluation["initial"][name], evaluation[name]
    print(f"{name:20s} imported {before:.4f} -> trained {after:.4f}")

# %% [markdown]
# ## Export back to PyTorch
#
# `python -m fgjax.weights convert RUN OUT.pth --arch ARCH` writes a training run's
# backbone (its newest checkpoint) with torchvision's keys. Reading the file back must give
# the trained network exactly, and differ from the imported one. In PyTorch:
#
# ```python
# model = torchvision.models.resnet50()
# model.load_state_dict(torch.load("fine_tuned.pth", weights_only=True), strict=False)
# ```
# (`strict=False`: the file holds the backbone only, no `fc` classifier.)

# %%
EXPORTED = "runs/fine_tuned.pth"
assert weights_cli(["convert", WORKDIR, EXPORTED, "--arch", ARCH]) == 0
exported = read_checkpoint(EXPORTED)
state = result["state"]
trained = {"params": state.params["backbone"], "batch_stats": {}}
trained["batch_stats"] = state.model_state["batch_stats"]["backbone"]
want = variables_to_torch(jax.device_get(trained), ARCH)
export_error = max(float(np.max(np.abs(exported[k] - want[k]))) for k in tensors)
changed = max(float(np.max(np.abs(exported[k] - original[k]))) for k in tensors)
print(f"exported vs trained: max |difference| = {export_error}")
print(f"exported vs imported: max |difference| = {changed:.4g} (training changed the weights)")
assert export_error == 0.0 and changed > 0
