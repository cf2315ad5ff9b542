"""The configuration schema: every field a recipe may set, with library defaults.

Recipes in `configs/` start from `default_config()` and change what differs; the
command line can override any field (`--config.optim.lr=0.1`) but cannot add new
ones, so a typo is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re

import ml_collections

from fgjax.data.augment import PhotometricSpec


def photometric_config(spec: PhotometricSpec) -> ml_collections.ConfigDict:
    """A view's photometric augmentation as an overridable sub-config."""
    return ml_collections.ConfigDict(dict(vars(spec)))


def photometric_specs(config: ml_collections.ConfigDict) -> list[PhotometricSpec]:
    """`[view1, view2]` specs from `config.augment`."""
    views = (config.augment.view1, config.augment.view2)
    return [PhotometricSpec(**{k: v for k, v in view.items()}) for view in views]


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = "moco"  # 'moco' | 'byol' | 'supervised'

    c.model = ml_collections.ConfigDict()
    c.model.arch = "resnet50"
    c.model.stage_sizes = (3, 4, 6, 3)
    c.model.width = 64
    c.model.stem_maxpool = True
    c.model.bn_momentum = 0.9  # Flax convention; PyTorch momentum 0.1
    c.model.bn_epsilon = 1e-5
    c.model.zero_init_last_bn = False
    c.model.dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU; or 'float32'/'bfloat16'
    c.model.init_from = ""  # a .pth/.safetensors/.npz backbone checkpoint (see fgjax.weights)

    c.moco = ml_collections.ConfigDict()
    c.moco.hidden_dim = 2048
    c.moco.dim = 128
    c.moco.queue_size = 65536
    c.moco.momentum = 0.999
    c.moco.temperature = 0.2
    # Shuffling BN: BatchNorm statistics are computed in this many groups of the
    # global batch (one per "GPU" of the original recipe); keys are permuted across
    # groups so a key never shares statistics with its own query.
    c.moco.bn_groups = 8

    c.byol = ml_collections.ConfigDict()
    c.byol.hidden_dim = 4096
    c.byol.dim = 256
    c.byol.ema_base = 0.996
    c.byol.ema_schedule = "cosine"  # 'cosine' (BYOL paper: base -> 1) | 'constant' (LCR code)
    c.byol.bn_groups = 1

    c.supervised = ml_collections.ConfigDict()
    c.supervised.label_smoothing = 0.0

    c.data = ml_collections.ConfigDict()
    c.data.kind = "procedural"  # 'procedural' | 'image_folder' | 'csv'
    c.data.root = ""  # image-folder root (root/train/<class>/...) or CSV manifest path
    c.data.csv_root = ""  # base folder of relative CSV paths ('' = the CSV's folder)
    c.data.image_size = 224
    c.data.crop_scale = (0.2, 1.0)
    c.data.crop_ratio = (3 / 4, 4 / 3)
    c.data.interpolation = "bilinear"
    c.data.num_workers = 4
    c.data.procedural = ml_collections.ConfigDict(
        dict(
            num_coarse=4,
            fine_per_coarse=6,
            images_per_class=40,
            image_size=32,
            holdout_fraction=0.5,
            seed=0,
            nuisance=1.0,
        )
    )

    c.augment = ml_collections.ConfigDict()
    c.augment.view1 = photometric_config(PhotometricSpec())
    c.augment.view2 = photometric_config(PhotometricSpec())

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"
    c.optim.lr = 0.03
    c.optim.lr_batch_reference = 0
    c.optim.schedule = "cosine"
    c.optim.schedule_unit = "step"
    c.optim.warmup_epochs = 0.0
    c.optim.cosine_epochs = 0
    c.optim.final_lr = 0.0
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_mask = "all"
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.trust_coefficient = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # global, over all processes and devices
    c.train.num_epochs = 100
    c.train.max_steps = 0  # > 0 stops early (smoke tests); schedules still use num_epochs
    c.train.log_every_steps = 10
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 3
    c.train.progress_bar = True

    c.eval = ml_collections.ConfigDict()
    c.eval.enabled = True
    c.eval.at_start = False  # also evaluate the untrained network (written to eval.json)
    c.eval.batch_size = 256
    c.eval.knn_k = 200
    c.eval.knn_temperature = 0.1
    c.eval.knn_bank = "train"  # 'train' (bank = train split) | 'test' (leave-one-out on test)
    c.eval.recall_ks = (1, 2, 4, 8)
    return c


# Sequences are tuples so that `--config.data.crop_scale='(0.08, 1.0)'` can override them.


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a recipe file, with a clear error when the file is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location("fgjax_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=|$)")


def check_override_names(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """Raise a ValueError naming any `--config.a.b=...` field the config does not have
    (ml_collections would otherwise fail with a bare KeyError deep in flag parsing)."""
    for arg in argv:
        match = _OVERRIDE.match(arg)
        if not match:
            continue
        node, walked = config, "config"
        for key in match.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                siblings = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(key, siblings, n=3)
                hint = (
                    f" (did you mean {', '.join(f'{walked}.{c}' for c in close)}?)" if close else ""
                )
                raise ValueError(f"unknown config field {walked}.{key}{hint}")
            node, walked = node[key], f"{walked}.{key}"
