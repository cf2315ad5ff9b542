"""CFGA's training recipes of the five metric-learning baselines (MS loss, CosFace,
ArcFace, Proxy-Anchor, DGPCRL; fgjax.methods.cfga.metric_learning) on CUB-200-2011 and
Stanford Cars, shared by the ten files `configs/{cub,cars}_{method}.py`.

Not a recipe itself (no `get_config`): the recipes load this file by its path, as configs
are files, not a package:

    recipe = runpy.run_path(os.path.join(HERE, "common", "metric_learning.py"))["recipe"]
    config = recipe(default_config("ms_loss"), "cub")
"""

from __future__ import annotations

import ml_collections

# Training images of the zero-shot splits (spec section 5): CUB classes 1-100, Cars 1-98.
RETRIEVAL_TRAIN_IMAGES = {"cub": 5864, "cars": 8054}
DATA_ROOTS = {"cub": "data/CUB_200_2011", "cars": "data/stanford_cars"}


def _iterations(c: ml_collections.ConfigDict, dataset: str, iterations: int) -> None:
    """Train `iterations` optimiser steps: enough epochs to hold them, stopped by max_steps
    (iteration-based schedules: decay_steps, or constant)."""
    per_epoch = RETRIEVAL_TRAIN_IMAGES[dataset] // c.train.batch_size
    c.train.num_epochs = -(-iterations // per_epoch)
    c.train.max_steps = iterations


def recipe(config: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
    """CFGA's training recipe of `config.method` (a default config of one of the five
    methods of fgjax.methods.cfga.metric_learning) on `dataset` 'cub' or 'cars', zero-shot
    split, ImageNet ResNet-50: spec 7.1-7.7 (CFGA_CARS196_train's scripts; CUB's are
    unpublished, so CUB takes the Cars recipe with CUB's 3,000 iterations, spec 7.7) and,
    for Proxy-Anchor, its repository's ResNet-50 README commands and train.py defaults.
    Returns `config`, changed in place."""
    method, c = config.method, config
    if dataset not in DATA_ROOTS:
        raise ValueError(f"recipe: dataset {dataset!r}: expected one of {sorted(DATA_ROOTS)}")
    if method not in ("ms_loss", "cosface", "arcface", "proxy_anchor", "dgpcrl"):
        raise ValueError(f"recipe: config.method={method!r} is not a metric-learning baseline")
    c.data.kind, c.data.root = dataset, DATA_ROOTS[dataset]
    c.data.train_split, c.data.test_split = "retrieval_train", "retrieval_test"
    c.model.arch = "resnet50"
    c.model.init_from = "resnet50-19c8e357.pth"  # torchvision's ImageNet weights (V1)
    c.eval.knn_bank = "test"  # held-out classes: leave-one-out on the test split
    view = c.views.view1
    # Test: Resize(256) + CenterCrop(227) (dataloader_msloss.py).
    c.data.image_size, c.data.eval_resize_ratio = 227, 227 / 256
    c.train.checkpoint_every_steps = 200  # the paper's checkpoints: steps 2800 / 3000 / 3800
    if method == "ms_loss":  # train_msloss.py: 16 classes x 5 images, Adam, 1200 / 2400
        c.data.sampler, c.data.pk_classes, c.data.pk_images = "pk", 16, 5
        c.train.batch_size = 80
        c.optim.update(name="adam", lr=3e-5, weight_decay=5e-4)
        c.optim.update(schedule="step", decay_steps=(1200, 2400), decay_factor=0.1)
        _iterations(c, dataset, 3000)
    elif method in ("cosface", "arcface"):  # train_{cosface,arcface}.py: 80 classes x 1
        c.data.sampler, c.data.pk_classes, c.data.pk_images = "pk", 80, 1
        c.train.batch_size = 80
        c.optim.update(name="rmsprop", lr=1e-5, weight_decay=5e-4, schedule="constant")
        _iterations(c, dataset, 4000 if dataset == "cars" else 3000)
    elif method == "dgpcrl":  # train_DGPCRL.py: Resize((280, 280)) + RandomCrop(256) + flip
        view.update(crop="squash_random_crop", squash_size=280)
        del view["size"]  # its own 256, no longer a reference to data.image_size
        view.size = 256
        # Test images keep their aspect, short side capped at 280, uncropped; fgjax's
        # evaluation crops: short side 280, centre 280 x 280.
        c.data.image_size, c.data.eval_resize_ratio = 280, 1.0
        c.train.batch_size = 60
        c.optim.update(name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-6)
        c.optim.update(schedule="step", decay_epochs=(100,), decay_factor=0.1)
        c.train.num_epochs = 111
        c.train.checkpoint_every_steps = RETRIEVAL_TRAIN_IMAGES[dataset] // 60  # each epoch
    else:  # proxy_anchor: README ResNet-50 commands, train.py defaults
        view.crop_scale = (0.08, 1.0)  # RandomResizedCrop(224): torchvision's default scale
        c.data.image_size, c.data.eval_resize_ratio = 224, 224 / 256
        c.train.batch_size = 120
        c.proxy_anchor.warm_epochs = 5
        c.optim.update(name="adamw", lr=1e-4, weight_decay=1e-4, schedule="step")
        c.optim.lr_multipliers.proxies = 100.0
        step = 5 if dataset == "cub" else 10  # --lr-decay-step: StepLR(step, gamma 0.5)
        c.optim.update(decay_epochs=tuple(range(step, 60, step)), decay_factor=0.5)
        c.train.num_epochs = 60
        c.train.checkpoint_every_steps = RETRIEVAL_TRAIN_IMAGES[dataset] // 120
    return c
