# %% [markdown]
# # LCR on CUB-200-2011 from your Google Drive
#
# Trains LCR (Learning Common Rationale, CVPR 2023: MoCo v2 plus a rationale branch fitted
# to the Grad-CAM of the contrastive loss) with the code-faithful recipe
# `configs/cub_lcr.py`, starting from torchvision's ImageNet ResNet-50, then shows the
# training curves, the retrieval numbers and LCR's rationale pictures.
#
# **Data**: put `CUB_200_2011.tgz` (the official archive, 1.1 GB) or the extracted
# `CUB_200_2011/` folder in your Google Drive and set `DRIVE_CUB` below. The archive is
# extracted once to the runtime's local disk (reading 11,788 small files through Drive is
# slow). **Runtime**: a Colab TPU. The full recipe is 100 epochs at batch 128; the run
# lives in your Drive (`WORKDIR`), so after a disconnect, running the notebook again
# resumes from the newest checkpoint. `TINY = True` trains a tiny network on 16 px images
# for 2 steps instead (on a CPU, CUB's 5,794 test images still take a few minutes to read).

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
# ## The dataset
#
# On Colab: Drive is mounted (Colab asks for permission) and CUB is copied to
# `/content/data`. Elsewhere `CUB_ROOT` is read from the environment variable
# `FGJAX_CUB_ROOT`: a folder holding `CUB_200_2011/` (images/, images.txt,
# train_test_split.txt, ...).

# %%
import shutil

DRIVE_CUB = "/content/drive/MyDrive/CUB_200_2011.tgz"  # or .../MyDrive/CUB_200_2011 (folder)
if ON_COLAB:
    from google.colab import drive

    drive.mount("/content/drive")
    CUB_ROOT = "/content/data"
    if not os.path.isdir(os.path.join(CUB_ROOT, "CUB_200_2011")):
        os.makedirs(CUB_ROOT, exist_ok=True)
        if os.path.isdir(DRIVE_CUB):
            shutil.copytree(DRIVE_CUB, os.path.join(CUB_ROOT, "CUB_200_2011"))
        else:
            subprocess.run(["tar", "xzf", DRIVE_CUB, "-C", CUB_ROOT], check=True)
else:
    CUB_ROOT = os.environ.get("FGJAX_CUB_ROOT", "data")
print("CUB from", CUB_ROOT, "->", sorted(os.listdir(os.path.join(CUB_ROOT, "CUB_200_2011"))))

# %% [markdown]
# ## The recipe
#
# `configs/cub_lcr.py`: MoCo v2 (SGD 0.03, per-epoch cosine, batch 128, 100 epochs, queue
# 65,536) and every LCR switch as the original code behaves (`config.lcr`, see the
# README's LCR section). LCR starts from supervised ImageNet weights: torchvision's
# `resnet50-19c8e357.pth`, downloaded here (fgjax reads it without torch).

# %%
import urllib.request

from fgjax.config import load_config_file

config = load_config_file(os.path.join(REPO, "configs", "cub_lcr.py"))
config.data.root = CUB_ROOT
if TINY:  # a 1-stage width-4 ResNet on 16 px images, 2 steps, random initialisation
    config.update_from_flattened_dict(
        {
            "model.overrides.stage_sizes": (1,),
            "model.overrides.width": 4,
            "model.dtype": "float32",
            "data.image_size": 16,
            "data.num_workers": 0,
            "lcr.hidden_dim": 16,
            "lcr.dim": 8,
            "lcr.queue_size": 32,
            "lcr.bn_groups": 1,
            "train.batch_size": 8,
            "train.max_steps": 2,
            "train.log_every_steps": 1,
            "train.checkpoint_every_steps": 2,
            "eval.batch_size": 16,
        }
    )
    WORKDIR = "runs/cub_lcr_tiny"
else:
    WEIGHTS = "/content/resnet50-19c8e357.pth"
    if not os.path.exists(WEIGHTS):
        url = "https://download.pytorch.org/models/resnet50-19c8e357.pth"
        urllib.request.urlretrieve(url, WEIGHTS)
    config.model.init_from = WEIGHTS
    config.data.num_workers = os.cpu_count()
    WORKDIR = "/content/drive/MyDrive/fgjax_runs/cub_lcr" if ON_COLAB else "runs/cub_lcr"
print({k: config.lcr[k] for k in ("loss_weight", "tau", "cam_softmax_axis", "att_norm")})
print("workdir", WORKDIR)

# %% [markdown]
# ## Train
#
# Logged every step: `ssl_loss` (MoCo's InfoNCE), `lcr_loss` (the KL fitting loss),
# `cam_entropy` (1 means a uniform Grad-CAM target: with the faithful settings it stays
# close to 1) and `cam_peak`. The final evaluation (retrieval Recall@K and mAP on the test
# split, kNN with the train split as the bank) uses LCR's descriptor.

# %%
from fgjax.train.loop import train_and_evaluate

result = train_and_evaluate(config, WORKDIR)
print("finished at step", result["step"])

# %%
import json

from IPython.display import Image, display

from fgjax.cli.plot import plot_curves

with open(os.path.join(WORKDIR, "eval.json")) as f:
    evaluation = json.load(f)
for name in ("retrieval_recall@1", "retrieval_recall@2", "retrieval_recall@4", "retrieval_map"):
    print(f"{name:22s} {evaluation[name]:.4f}")
print(f"{'knn_top1':22s} {evaluation['knn_top1']:.4f}")
display(Image(plot_curves(WORKDIR)))

# %% [markdown]
# ## Rationale pictures
#
# `python -m fgjax.cli.rationale --workdir WORKDIR`: for test images, the Grad-CAM the
# rationale branch is fitted to and the branch's learned attention (the mask LCR's
# descriptor pools with).

# %%
from fgjax.cli.rationale import main as rationale

rationale(["--workdir", WORKDIR, "--num", "4" if TINY else "8"])
display(Image(os.path.join(WORKDIR, "rationale.png")))
