"""The cells of the cross-method table and the presets that size them.

A cell is one training recipe (or none: the untrained backbone) with its label regime;
a preset fixes the data, the backbone family, the image size and the budget (epochs) for
every cell alike, so the rows differ only by what each method does. Each cell's config is
its recipe from `configs/` with the preset's changes (`cell_config`); everything else
(losses, temperatures, augmentations, optimiser kinds) stays the recipe's.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import ml_collections
import numpy as np

from fgjax.config import default_config, load_config_file

LABEL_REGIMES = ("none", "coarse", "fine")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row group of the table: `recipe` (a file of configs/) switched to `method` when
    given, trained on `labels` ('none', 'coarse' or 'fine'); `zero_shot`: trained on the
    first half of the classes only; `trained` False: the recipe's network as initialised
    (the floor every method has to beat). `package`: the method package it needs;
    `pretrained`: the file of the weights its paper starts from (the GPU preset's)."""

    name: str
    title: str
    labels: str
    recipe: str
    method: str = ""
    zero_shot: bool = False
    trained: bool = True
    package: str = ""
    pretrained: str = "resnet50-19c8e357.pth"  # torchvision's supervised ImageNet-1k (V1)


CELLS = (
    Cell("untrained", "untrained backbone", "none", "cub_moco.py", trained=False),
    Cell("moco", "MoCo v2", "none", "cub_moco.py"),
    Cell("byol", "BYOL", "none", "cub_byol.py"),
    Cell("lcr", "LCR on MoCo v2 (faithful)", "none", "cub_lcr.py", package="lcr"),
    Cell("lcr_fixed", "LCR on MoCo v2 (fixed)", "none", "cub_lcr_fixed.py", package="lcr"),
    Cell("leadpp", "LEAD++", "none", "cub_leadpp.py", package="leadpp"),
    Cell("bucsfr", "BuCSFR", "coarse", "cub_bucsfr.py", package="bucsfr"),
    Cell("supervised", "supervised (cross-entropy)", "fine", "cub_moco.py", method="supervised"),
    Cell(
        "herbs",
        "HERBS",
        "fine",
        "cub_herbs.py",
        package="herbs",
        pretrained="swin_large_patch4_window12_384_22k.pth",  # timm's ImageNet-22k Swin-L
    ),
    *(
        Cell(name, title, "fine", f"cub_{name}.py", zero_shot=True, package="cfga")
        for name, title in (
            ("ms_loss", "MS loss"),
            ("cosface", "CosFace"),
            ("arcface", "ArcFace"),
            ("proxy_anchor", "Proxy-Anchor"),
            ("dgpcrl", "DGPCRL"),
        )
    ),
)
CELL_NAMES = tuple(c.name for c in CELLS)
# The training-free descriptors computed on every ResNet backbone (untrained and trained);
# the third, GAP, is every cell's "gap" row.
DESCRIPTORS = ("scda", "cfga_plus")


@dataclasses.dataclass(frozen=True)
class Preset:
    """The data and budget every cell shares. `data`: what --data names; `epochs`: every
    trained cell's epochs (0: each recipe's own); `image_size`: 0 keeps the recipes';
    `protocols`: the evaluation of every row; `shrink`: narrow the backbones and heads
    (CPU); `knn_bank`: 'train' (the kNN bank is the train split) or 'test' (leave-one-out,
    when the test classes are not trained on)."""

    name: str
    description: str
    data: str
    epochs: int
    image_size: int
    seeds: tuple[int, ...]
    protocols: tuple[str, ...]
    shrink: bool
    knn_bank: str = "train"
    batch_size: int = 64


PRESETS = {
    "tiny": Preset(
        "tiny",
        "the embedded procedural dataset at 32 px, width-8 ResNet-50 with blocks 1-1-1-3, "
        "2 epochs: checks the table's wiring in about a minute a cell (numbers mean little)",
        data="none (procedural, embedded)",
        epochs=2,
        image_size=32,
        seeds=(0, 1),
        protocols=("retrieval", "clustering", "knn"),
        shrink=True,
        knn_bank="test",
    ),
    "cpu": Preset(
        "cpu",
        "the CUB-100 crops (100 species, official split: 2,999 train / 2,903 test) at 64 "
        "px, width-8 ResNet-50 with blocks 1-1-1-3 (HERBS: a width-32 Swin), from "
        "scratch, 4 epochs",
        data="a CUB-100 crops folder (images/, images.txt, classes.txt, ...)",
        epochs=4,
        image_size=64,
        seeds=(0, 1, 2),
        protocols=("retrieval", "clustering", "knn", "linear"),
        shrink=True,
    ),
    "gpu": Preset(
        "gpu",
        "CUB-200-2011 at each recipe's size (224 px; HERBS 384) and epochs, every "
        "backbone from the ImageNet weights its paper starts from (the untrained row: "
        "the ImageNet ResNet-50 itself)",
        data="a CUB_200_2011 folder as distributed",
        epochs=0,
        image_size=0,
        seeds=(0, 1, 2),
        protocols=("retrieval", "clustering", "knn", "linear"),
        shrink=False,
    ),
}

# HERBS on a CPU (benchmarks/herbs_cub100.py): a 4-stage Swin of width 32, window 4, a
# HERBS head with D = 128, K = 16/8/2/2; its lr raised for training from scratch.
HERBS_SWIN = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4)
HERBS_HEAD = dict(fpn_size=128, num_selects=(16, 8, 2, 2), tokens_per_node=4)
# LEAD++'s stand-ins on a CPU (no CLIP weights at hand): a random-init CLIP image tower.
LEADPP_TEACHER = dict(width=64, layers=2, heads=4, patch_size=8, embed_dim=128)


def recipes_folder() -> str:
    """The repository's configs/ (the recipes the cells start from)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(here, "configs")


@dataclasses.dataclass(frozen=True)
class Data:
    """Where a preset's data is: `root` (--data), and for the CPU preset the manifests
    `manifest` (official split) and `zero_shot` (train rows of the first half of the
    classes), written once into the table's folder; `num_classes` of the dataset;
    `weights`: the folder of the pretrained files, `ddt_crops` LEAD++'s DDT crops (GPU
    preset; --weights, --ddt-crops; '' keeps the recipe's path)."""

    root: str
    manifest: str = ""
    zero_shot: str = ""
    num_classes: int = 0
    weights: str = ""
    ddt_crops: str = ""


def cell_config(cell: Cell, preset: Preset, seed: int, data: Data, out: str):
    """The training config of `cell` under `preset` for `seed`; `out` is the table's
    folder (LEAD++'s stand-in prototypes are written there)."""
    c = load_config_file(os.path.join(recipes_folder(), cell.recipe))
    if cell.method:
        c = _as_method(c, cell.method)
    c.seed = seed
    c.eval.enabled = False  # the table evaluates every cell itself, alike
    c.train.progress_bar = False
    if preset.name == "tiny":
        _procedural_data(c)
    elif preset.name == "cpu":
        _manifest_data(c, cell, data)
    else:
        c.data.root = data.root
        _pretrained(c, cell, data)
    if preset.epochs:
        c.train.num_epochs = preset.epochs
        c.train.max_steps = 0
        c.train.checkpoint_every_steps = 10_000  # the end of a short run (and on a stop)
    if preset.shrink:
        _shrink(c, cell, preset)
    if c.method == "leadpp" and preset.shrink:
        _leadpp_stand_ins(c, data, out, seed)
    if c.method == "bucsfr":
        _bucsfr_schedule(c, preset)
    return c


def eval_overrides(cell: Cell, preset: Preset, data: Data) -> dict[str, object]:
    """Config changes for evaluating `cell` (after training): every cell on the same
    splits, protocols settings and kNN bank."""
    changes: dict[str, object] = {
        "eval.recall_ks": (1, 2, 4, 8),
        "eval.knn_bank": preset.knn_bank,
        "eval.knn_k": 20,
        "eval.batch_size": 128,
        "data.skip_bad": False,
        # One test transform for every row: Resize(short side = size / 0.875) + CenterCrop.
        "data.eval_resize": "short_side",
        "data.eval_resize_ratio": 0.875,
        "data.eval_squash_size": 0,
    }
    if preset.name != "tiny":  # the official split of every class (zero-shot cells too)
        changes["data.train_split"], changes["data.test_split"] = "train", "test"
    if preset.name == "cpu":
        changes["data.root"] = data.manifest
    return changes


def eval_config(
    config: ml_collections.ConfigDict, cell: Cell, preset: Preset, data: Data
) -> ml_collections.ConfigDict:
    """A copy of `cell`'s training `config` with `eval_overrides` applied."""
    c = copy.deepcopy(config)
    c.update_from_flattened_dict(eval_overrides(cell, preset, data))
    return c


def _as_method(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """`c` (a recipe of another method) for `method`, with its own section's defaults:
    data, views, model, optimiser and schedule stay the recipe's."""
    new = default_config(method)
    for key in c:
        if key not in ("method", c.method) and key in new:
            new[key] = c[key]
    return new


def _procedural_data(c: ml_collections.ConfigDict) -> None:
    c.data.kind = "procedural"
    c.data.root = ""
    c.data.coarse = ""
    c.data.train_split, c.data.test_split = "train", "test"
    c.data.procedural.images_per_class = 40
    c.data.num_workers = 1


def _manifest_data(c: ml_collections.ConfigDict, cell: Cell, data: Data) -> None:
    c.data.kind = "csv"
    c.data.root = data.zero_shot if cell.zero_shot else data.manifest
    c.data.csv_root = ""
    c.data.coarse = "coarse_label"
    c.data.train_split, c.data.test_split = "train", "test"
    c.data.num_workers = 1
    c.eval.class_groups = ""  # HERBS' groups are CUB-200 class ids


def _shrink(c: ml_collections.ConfigDict, cell: Cell, preset: Preset) -> None:
    """Narrow backbones and heads, the preset's image size, from scratch."""
    size = preset.image_size
    if c.method == "herbs":  # below 64 px the last stages have fewer tokens than it selects
        size = max(size, 64)
    c.model.init_from = ""
    c.model.dtype = "float32"
    for view in c.views.values():  # a squash keeps its ratio to the crop (HERBS 510 / 384)
        if view.squash_size:
            view.squash_size = round(view.squash_size * size / view.size)
        view.size = size
    c.data.image_size = size
    if c.method == "herbs":
        c.model.arch = "swin_tiny_patch4_window7_224"
        c.model.overrides = ml_collections.ConfigDict(dict(**HERBS_SWIN, img_size=size))
        c.model.remat = False
        c.herbs.update(HERBS_HEAD)
        c.optim.lr = 0.02
        c.train.batch_size = 32
        c.train.accumulate_steps = 1
        return
    c.model.arch = "resnet50"
    # One block per stage but three in the last: CFGA+ reads the last stage's 2nd and 3rd.
    c.model.overrides.stage_sizes = (1, 1, 1, 3)
    c.model.overrides.width = 8
    c.model.stem_maxpool = False
    section = c[c.method]
    small = {"hidden_dim": 512, "dim": 128, "queue_size": 1024, "bn_groups": 2}
    for field, value in small.items():
        if field in section:
            section[field] = value
    if "queue_size" in section:  # the MoCo family (lcr_cub100.py's shrink)
        section.momentum = 0.99
        c.optim.lr = 0.06
    if cell.zero_shot:  # the recipes fine-tune ImageNet weights; from scratch they crawl
        c.optim.update(name="adam", lr=1e-3, schedule="constant", decay_steps=(), decay_epochs=())
        seen = 8 if preset.name == "tiny" else 50  # classes a zero-shot batch can draw from
        if c.data.sampler == "pk" and c.data.pk_classes > seen:  # CosFace / ArcFace: 80 x 1
            c.data.pk_classes = seen
            c.train.batch_size = c.data.pk_classes * c.data.pk_images
    else:
        c.train.batch_size = preset.batch_size


def _pretrained(c: ml_collections.ConfigDict, cell: Cell, data: Data) -> None:
    """The papers' starting points (the recipes leave most to --config.model.init_from):
    the backbone from `data.weights`/`cell.pretrained`, LEAD++'s CLIP teacher and text
    prototypes from that folder too, and its DDT-crop views from `data.ddt_crops`."""
    c.model.init_from = os.path.join(data.weights, cell.pretrained)
    if c.method == "leadpp":
        c.leadpp.teacher_weights = os.path.join(data.weights, c.leadpp.teacher_weights)
        c.leadpp.prototypes = os.path.join(data.weights, c.leadpp.prototypes)
        for view in c.views.values():
            if view.get("root") and data.ddt_crops:
                view.root = data.ddt_crops


def required_inputs(c: ml_collections.ConfigDict) -> list[str]:
    """What a cell's config reads besides its dataset: the pretrained files and the
    views' image folders (LEAD++'s DDT crops); none: []."""
    paths = [c.model.init_from, *(view.get("root", "") for view in c.views.values())]
    if c.method == "leadpp":
        paths += [c.leadpp.teacher_weights, c.leadpp.prototypes]
    return [p for p in paths if p]  # '' : not read (from scratch, a stand-in, the originals)


def _leadpp_stand_ins(c: ml_collections.ConfigDict, data: Data, out: str, seed: int) -> None:
    """LEAD++ on a CPU: a random-init CLIP image tower as the teacher, random unit text
    prototypes (one per class, seeded), the views' crops from the original images (no
    DDT crops): its distillation has nothing to teach, so the row measures LEAD++'s
    objective wiring, not the paper's teacher (stated in the table)."""
    s = c.leadpp
    s.teacher_arch = "clip_vit_b16"
    s.teacher_overrides = ml_collections.ConfigDict(
        dict(**LEADPP_TEACHER, img_size=c.data.image_size)
    )
    s.teacher_weights = ""
    s.dim = LEADPP_TEACHER["embed_dim"]
    num_classes = data.num_classes or c.data.procedural.num_coarse * (
        c.data.procedural.fine_per_coarse // 2
    )
    s.num_classes = num_classes
    path = os.path.join(out, f"leadpp_prototypes_seed{seed}.npy")
    if not os.path.exists(path):
        x = np.random.default_rng(seed).normal(size=(num_classes, s.dim)).astype(np.float32)
        np.save(path, x / np.linalg.norm(x, axis=1, keepdims=True))
    s.prototypes = path
    for name in ("view3", "view4"):
        c.views[name].root = ""


def _bucsfr_schedule(c: ml_collections.ConfigDict, preset: Preset) -> None:
    """BuCSFR clusters from a tenth of the epochs on (the paper: 10 of 100); on CUB-100
    10 initial leaves per bird family and T 1.1, on the procedural set 12 and 1.35
    (benchmarks/bucsfr_compare.py)."""
    c.bucsfr.warmup_epochs = max(1, round(c.train.num_epochs / 10))
    if preset.name == "tiny":
        c.bucsfr.clusters_per_coarse, c.bucsfr.merge_threshold = 12, 1.35
    elif preset.name == "cpu":
        c.bucsfr.clusters_per_coarse, c.bucsfr.merge_threshold = 10, 1.1
