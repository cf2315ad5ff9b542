# %% [markdown]
# # Retrieval evaluation of a checkpoint or a weights file
#
# `python -m fgjax.eval` from a notebook: evaluates a training run's checkpoint (or a
# backbone weights file in a recipe's model) by leave-one-out retrieval Recall@K and mAP
# and kNN accuracy on the test split, and shows its pictures: the retrieval grid (queries
# with their nearest test images, framed green when of the query's class, red when not),
# the Recall@K curve and the PCA map of the features.
#
# **What is evaluated**: `RUN`, a training workdir (by default notebook 2's LCR run in
# your Drive), and, if set, `WEIGHTS`, a `.pth` / `.safetensors` / `.npz` backbone, in the
# model of `RECIPE`. `TINY = True` (or a CPU runtime) makes both itself: a 2-step tiny run
# of the demo recipe and its backbone exported as a torchvision-keyed `.pth`; the two
# evaluations must then give the same numbers.

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
# ## What to evaluate
#
# `OVERRIDES` change any config field, as `--config.FIELD=VALUE` on the command line: on a
# new Colab runtime the run's dataset folder is gone, so point `config.data.root` at a
# fresh copy (notebook 2's dataset cell makes one in `/content/data`).

# %%
RUN = "/content/drive/MyDrive/fgjax_runs/cub_lcr"  # a training workdir, or "" for none
WEIGHTS = ""  # a backbone file evaluated in RECIPE's model, or "" for none
RECIPE = os.path.join(REPO, "configs", "cub_moco.py")
OVERRIDES = ["--config.data.root=/content/data"]

if TINY:
    from fgjax.cli.weights import main as weights_cli
    from fgjax.config import load_config_file
    from fgjax.train.loop import train_and_evaluate
    from fgjax.train.run import apply_overrides

    RECIPE = os.path.join(REPO, "configs", "demo.py")
    OVERRIDES = [  # a 1-stage width-4 ResNet on 16 px images, 8 images of each class
        "--config.model.overrides.stage_sizes=(1,)",
        "--config.model.overrides.width=4",
        "--config.data.image_size=16",
        "--config.data.num_workers=0",
        "--config.data.procedural.image_size=16",
        "--config.data.procedural.images_per_class=8",
        "--config.moco.hidden_dim=16",
        "--config.moco.dim=8",
        "--config.moco.queue_size=32",
        "--config.train.batch_size=16",
        "--config.eval.batch_size=32",
    ]
    config = load_config_file(RECIPE)
    apply_overrides(config, OVERRIDES)
    config.update_from_flattened_dict(
        {"train.max_steps": 2, "train.checkpoint_every_steps": 2, "eval.enabled": False}
    )
    RUN = "runs/tiny_demo"
    train_and_evaluate(config, RUN)
    WEIGHTS = "runs/tiny_demo_backbone.pth"  # the run's backbone, torchvision keys
    assert weights_cli(["convert", RUN, WEIGHTS, "--arch", "resnet"]) == 0
elif ON_COLAB:
    from google.colab import drive

    drive.mount("/content/drive")

# %% [markdown]
# ## A training run's checkpoint
#
# The newest checkpoint (add `"--step", "N"` for another) with the run's own
# `config.json`. The features are cached in the output folder (`RUN/eval`): evaluating
# again with the same weights and settings, e.g. with other protocols, skips the network.

# %%
import json

from IPython.display import Image, display

from fgjax.cli.eval import main as evaluate

PROTOCOLS = "retrieval,knn"
if RUN:
    evaluate(["--workdir", RUN, "--protocol", PROTOCOLS, *OVERRIDES])
    with open(os.path.join(RUN, "eval", "eval.json")) as f:
        run_eval = json.load(f)
    for picture in ("retrieval_grid.png", "recall_curve.png", "embedding_map.png"):
        display(Image(os.path.join(RUN, "eval", picture)))

# %% [markdown]
# ## A weights file
#
# Any backbone `fgjax.weights` reads (a torchvision or MoCo `.pth`, a timm Swin,
# `.safetensors`, fgjax's `.npz`) in a fresh model of the recipe, without training.

# %%
from fgjax.eval.figures import recall_curve

if WEIGHTS:
    OUT = "runs/eval_weights"
    args = ["--init-from", WEIGHTS, "--config", RECIPE, "--out", OUT, "--protocol", PROTOCOLS]
    evaluate([*args, *OVERRIDES])
    with open(os.path.join(OUT, "eval.json")) as f:
        weights_eval = json.load(f)
    display(Image(os.path.join(OUT, "retrieval_grid.png")))
    if RUN:  # the Recall@K curves of both in one picture (python -m fgjax.cli.plot --recall)
        runs = {"checkpoint": run_eval, "weights file": weights_eval}
        display(Image(recall_curve("runs/recall_both.png", runs)))
