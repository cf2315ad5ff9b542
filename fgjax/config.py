"""The configuration schema: every field a recipe may set, with library defaults.

Recipes in `configs/` start from `default_config()` and change what differs; the
command line can override any field (`--config.optim.lr=0.1`) but cannot add new
ones, so a typo is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import re
from typing import Any

import ml_collections

from fgjax.data.augment import PhotometricSpec
from fgjax.data.views import ViewSpec


def photometric_config(spec: PhotometricSpec) -> ml_collections.ConfigDict:
    """A view's photometric augmentation as an overridable sub-config."""
    return ml_collections.ConfigDict(dict(vars(spec)))


def view_config(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """One entry of `config.views`: how the CPU crops a view and the device augments it.

    Fields: `size` (output side in pixels; by default follows `config.data.image_size`),
    `crop` ('random_resized': RandomResizedCrop(`crop_scale`, `crop_ratio`);
    'squash_random_crop': resize to `squash_size` x `squash_size` ignoring the aspect, then
    a uniformly placed `size` crop, HERBS), `interpolation`, `root` ('' = the dataset's own
    files, or a parallel root holding the same relative paths, e.g. LEAD++'s DDT crops)
    and `photometric` (a `PhotometricSpec`, on the device).
    """
    view = ml_collections.ConfigDict(
        dict(
            size=config.data.get_ref("image_size"),
            crop_scale=(0.2, 1.0),
            crop_ratio=(3 / 4, 4 / 3),
            interpolation="bilinear",
            root="",
            crop="random_resized",
            squash_size=0,  # crop 'squash_random_crop' only (HERBS: 510 for 384 px crops)
            photometric=photometric_config(PhotometricSpec()),
        )
    )
    for key, value in fields.items():
        if key not in view:
            raise ValueError(f"unknown view field {key!r}; fields: {sorted(view)}")
        view[key] = photometric_config(value) if isinstance(value, PhotometricSpec) else value
    return view


def photometric_spec(config: ml_collections.ConfigDict, view: str) -> PhotometricSpec:
    """The device side of `config.views.<view>`: its `PhotometricSpec`."""
    return PhotometricSpec(**dict(config.views[view].photometric.items()))


def view_spec(config: ml_collections.ConfigDict, view: str) -> ViewSpec:
    """The CPU side of `config.views.<view>`: crop, size and image root."""
    v = config.views[view]
    try:
        return ViewSpec(
            name=view,
            size=v.size,
            crop_scale=tuple(v.crop_scale),
            crop_ratio=tuple(v.crop_ratio),
            interpolation=v.interpolation,
            root=v.root,
            crop=v.crop,
            squash_size=v.squash_size,
        )
    except ValueError as err:  # name the config field: "view 'v': crop_scale ..."
        raise ValueError(str(err).replace(f"view {view!r}: ", f"config.views.{view}.", 1)) from None


def default_config(method: str = "moco") -> ml_collections.ConfigDict:
    """Library defaults with the section and default views of `method` (a registered name)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = method
    _model_defaults(c)
    _data_source_defaults(c)
    _data_pipeline_defaults(c)
    _method_defaults(c, method)
    _optim_defaults(c)
    _train_defaults(c)
    _eval_defaults(c)
    return c


def _model_defaults(c: ml_collections.ConfigDict) -> None:
    """`c.model`: the network (architecture, dtype, initial weights, ResNet / Swin knobs)."""
    c.model = ml_collections.ConfigDict()
    c.model.arch = "resnet50"  # any name of fgjax.models.registry: resnet18..152, swin_*
    c.model.overrides = ml_collections.ConfigDict()  # module fields, e.g. width=8 (tiny nets)
    c.model.dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU; or 'float32'/'bfloat16'
    # A .pth/.safetensors/.npz backbone (see fgjax.weights), or an fgjax training workdir
    # (or WORKDIR/checkpoints/STEP): the method's `pretrained_groups` are copied from it.
    c.model.init_from = ""
    # ResNet only
    c.model.stem_maxpool = True
    c.model.bn_momentum = 0.9  # Flax convention; PyTorch momentum 0.1
    c.model.bn_epsilon = 1e-5
    c.model.zero_init_last_bn = False
    # Swin only
    c.model.drop_path_rate = 0.1
    c.model.remat = False


def _data_source_defaults(c: ml_collections.ConfigDict) -> None:
    """`c.data`, which images: the dataset, its splits and files, and how bad or missing
    images are treated."""
    c.data = ml_collections.ConfigDict()
    c.data.kind = "procedural"  # a dataset (cub, cars, ...), 'image_folder', 'csv', 'procedural'
    c.data.root = ""  # the dataset as distributed; image-folder root; or the CSV manifest
    c.data.train_split = "train"  # the split trained on (e.g. 'trainval', 'retrieval_train')
    c.data.test_split = "test"  # the split evaluated on (e.g. 'retrieval_test')
    c.data.coarse = ""  # coarse level: '' = the dataset's default, 'none', or a level name
    c.data.crop_to_box = False  # datasets with boxes (cub, cars): crop to the object first
    # Evaluation (features, kNN bank, pictures) reads each image at its path relative to
    # the dataset root under this parallel root instead, whole (e.g. `fgjax ddt`'s
    # DDT crops, LEAD++'s linear probe); '' = the dataset's own images
    c.data.eval_root = ""
    c.data.skip_bad = False  # replace undecodable images (counted in the log) instead of failing
    # Stanford Cars devkit: read the listed images that are present (a subset), each missing
    # one counted and named (<workdir>/missing_images.txt), instead of refusing the tree.
    c.data.allow_missing = False
    c.data.csv_root = ""  # base folder of relative CSV paths ('' = the CSV's folder)
    c.data.tfds_name = ""  # kind 'tfds': the builder name, e.g. 'caltech_birds2011'


def _data_pipeline_defaults(c: ml_collections.ConfigDict) -> None:
    """`c.data`, how the images are read: sizes, the evaluation resize, the loader workers,
    the training sampler and the procedural dataset's shape."""
    c.data.image_size = 224  # evaluation crop, and the default size of every view
    # Evaluation resize before the centre crop: 'short_side' (see eval_resize_ratio) or
    # 'squash' (to eval_squash_size x eval_squash_size ignoring the aspect: HERBS, 510).
    c.data.eval_resize = "short_side"
    c.data.eval_squash_size = 0  # eval_resize 'squash' only
    # 'short_side': the short side becomes round(image_size / eval_resize_ratio) (256 for
    # 224; CFGA's metric-learning pipelines crop 227 of 256: 227 / 256).
    c.data.eval_resize_ratio = 0.875
    c.data.num_workers = 4
    # Training batch order: 'shuffle' (a permutation per epoch) or 'pk' (P x K class-balanced
    # batches, pk_classes x pk_images = train.batch_size; the metric-learning baselines).
    c.data.sampler = "shuffle"
    c.data.pk_classes = 0  # P, sampler 'pk' (MS loss: 16; CosFace / ArcFace: 80)
    c.data.pk_images = 0  # K, sampler 'pk' (MS loss: 5; CosFace / ArcFace: 1)
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


def _method_defaults(c: ml_collections.ConfigDict, method: str) -> None:
    """`c.<method>`: the method's own section, and `c.views`: its default views (after
    `c.data`, whose `image_size` every view's size follows)."""
    from fgjax.methods import method_class

    cls = method_class(method)
    c[method] = cls.config_section()
    # Views by name (the method reads `method.view_names` of them).
    c.views = ml_collections.ConfigDict()
    for name, fields in cls.default_views().items():
        c.views[name] = view_config(c, **fields)


def _optim_defaults(c: ml_collections.ConfigDict) -> None:
    """`c.optim`: the optimiser, its learning-rate schedule and per-group settings."""
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"
    c.optim.lr = 0.03
    c.optim.lr_batch_reference = 0
    c.optim.schedule = "cosine"
    c.optim.schedule_unit = "step"
    c.optim.warmup_epochs = 0.0
    c.optim.warmup_init_lr = 0.0  # the warm-up's first lr (HERBS: 1e-9)
    c.optim.warmup_reaches_peak = "after"  # 'after' the warm-up or at its 'last' step (HERBS)
    c.optim.cosine_epochs = 0
    c.optim.cosine_period = "after_warmup"  # or 'whole' (HERBS), see fgjax.train.optim
    c.optim.final_lr = 0.0
    c.optim.decay_epochs = ()  # schedule 'step': epochs where the lr is multiplied by
    c.optim.decay_factor = 0.1  # decay_factor (MoCo's lincls: (60, 80) and 0.1)
    c.optim.decay_steps = ()  # or optimiser steps where it is (MS loss: (1200, 2400))
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_mask = "all"
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.trust_coefficient = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8  # adamw, adam, rmsprop (the torch default)
    c.optim.rms_decay = 0.99  # rmsprop's square-average decay (torch's alpha)
    c.optim.freeze = ()  # top-level param groups the optimiser never changes ('backbone')
    # top-level param group -> lr factor (PyTorch per-group lr; Proxy-Anchor: proxies 100)
    c.optim.lr_multipliers = ml_collections.ConfigDict()


def _train_defaults(c: ml_collections.ConfigDict) -> None:
    """`c.train`: batch size, length, stopping, logging and checkpointing."""
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # global, over all processes and devices
    c.train.accumulate_steps = 1  # micro-batches per optimiser step (batch_size / this each)
    # Keep each epoch's last, smaller batch (PyTorch drop_last=False; HERBS) instead of
    # dropping it; its micro-batches are as many full ones as it holds plus the rest.
    c.train.keep_last_batch = False
    c.train.num_epochs = 100  # 0: evaluate only (no optimiser, no train loader)
    c.train.max_steps = 0  # > 0 stops early (smoke tests); schedules still use num_epochs
    c.train.max_bad_steps = 20  # stop after this many non-finite steps in a row
    c.train.log_every_steps = 10
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 3
    c.train.progress_bar = True  # a live bar on a terminal, one line per log otherwise


def _eval_defaults(c: ml_collections.ConfigDict) -> None:
    """`c.eval`: when to evaluate, and the kNN and retrieval settings."""
    c.eval = ml_collections.ConfigDict()
    c.eval.enabled = True
    c.eval.at_start = False  # also evaluate the untrained network (written to eval.json)
    c.eval.every_epochs = 0  # > 0: also evaluate every this many epochs, track the best
    # ((fraction, every), ...): from the epoch index >= fraction * num_epochs on, evaluate
    # every `every` epochs instead (HERBS: ((0.8, 2), (0.9, 1)), spec 5.5)
    c.eval.every_epochs_from = ()
    c.eval.after_first_epoch = False  # also evaluate after the first epoch (HERBS)
    c.eval.best_metric = "retrieval_recall@1"  # higher is better
    c.eval.batch_size = 256
    c.eval.knn_k = 200
    c.eval.knn_temperature = 0.1
    c.eval.knn_bank = "train"  # 'train' (bank = train split) | 'test' (leave-one-out on test)
    c.eval.knn_vote = "weighted"  # 'weighted' (exp(sim / T), the MoCo monitor) | 'majority'
    c.eval.knn_labels = "fine"  # 'fine' | 'coarse' (config.data.coarse's level)
    # also knn_top1@K for every K here, one neighbour search for all (BuCSFR: (1, 2, 5, 10,
    # 50, 100, 200) with knn_vote 'majority'); knn_top1 stays at K = knn_k
    c.eval.knn_ks = ()
    c.eval.class_groups = ""  # classify: groups for outer errors, '' | 'herbs_cub' (HERBS)
    c.eval.recall_ks = (1, 2, 4, 8)
    # mAP / MAP@R in the periodic (every_epochs) evaluations too; the final evaluation always
    # has them. Off by default: the full ranking costs about 1.2x (CPU) to 3-4x (jax) recall.
    c.eval.periodic_map = False


# Sequences are tuples so that `--config.views.view1.crop_scale='(0.08, 1.0)'` can override them.


def _as_tuples(value: Any) -> Any:
    """JSON lists back to the config's tuples (recursively)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def config_from_json(path: str) -> ml_collections.ConfigDict:
    """A run's saved `config.json` over today's defaults of its method (fields added to the
    schema since keep their defaults). References between fields (a view's size following
    `data.image_size`) are not restored: every field has its saved value."""
    with open(path) as f:
        saved = json.load(f)
    if "method" not in saved:
        raise ValueError(f"{path}: no 'method' field; is this an fgjax config.json?")
    config = default_config(saved["method"]).copy_and_resolve_references()

    def merge(node: ml_collections.ConfigDict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
                merge(node[key], value)
            else:
                node[key] = (
                    ml_collections.ConfigDict(value)
                    if isinstance(value, dict)
                    else (_as_tuples(value))
                )

    merge(config, saved)
    return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a recipe file, or a run's saved `config.json` (`config_from_json`),
    with a clear error when the file is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if path.endswith(".json"):
        return config_from_json(path)
    spec = importlib.util.spec_from_file_location("fgjax_recipe", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"{path}, line {e.lineno}: {e.msg} (a recipe file must be Python)") from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"{path}: a recipe file defines get_config() returning the config")
    return get_config()


def switch_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """`config` (a recipe of another method) for `method`, whose section extends the old
    one (e.g. 'lcr' over 'moco'): everything but `config.method` and the old section is
    kept, the old section's values are carried into `method`'s defaults."""
    new = default_config(method)
    old = config.method
    for key in config:
        if key not in ("method", old):
            new[key] = config[key]
    missing = sorted(set(config[old]) - set(new[method]))
    if missing:
        raise ValueError(f"config.{method} has no fields {missing} of config.{old}")
    for key, value in config[old].items():
        new[method][key] = value
    return new


def config_path_from_argv(argv: list[str], default: str) -> str:
    """The recipe file a command line names with `--config=PATH` or `--config PATH`, for
    the commands whose `--config` is ml_collections' (recipe files only)."""
    path = default
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            break
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
            break
    if path.endswith(".json"):
        raise ValueError(
            f"--config {path}: this command takes a recipe file (configs/*.py); a run's "
            "config.json is read by fgjax eval / fgjax ddt / fgjax describe"
        )
    return path


def data_config(kind: str, root: str, **fields) -> ml_collections.ConfigDict:
    """`config.data` of the default config for dataset `kind` at `root`, with `fields` set
    (scripts and tests that read a dataset without a recipe)."""
    c = default_config("supervised").data
    c.kind, c.root = kind, os.fspath(root)
    for key, value in fields.items():
        if key not in c:
            raise ValueError(f"unknown config.data field {key!r}; fields: {sorted(c)}")
        c[key] = value
    return c


_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=|$)")
_MODEL_OVERRIDE = "--config.model.overrides."


def split_model_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """`(argv without its --config.model.overrides.<field>=<text> arguments, {field: text})`.

    `config.model.overrides` holds fields of the architecture's module, which a recipe
    leaves unlisted (usually empty), so ml_collections' flag parser would refuse them;
    `set_model_overrides` sets them once the architecture is known."""
    rest, fields = [], {}
    for arg in argv:
        if not arg.startswith(_MODEL_OVERRIDE):
            rest.append(arg)
            continue
        name, sep, text = arg[len(_MODEL_OVERRIDE) :].partition("=")
        if not sep or not name or "." in name:
            raise ValueError(f"{arg}: write --config.model.overrides.<field>=<value>")
        fields[name] = text
    return rest, fields


def parse_override(text: str, current: Any, field: str) -> Any:
    """The value of a command-line override `text` for `field`, whose current (or default)
    value is `current`: a Python literal of its type (a string field takes the text as it
    is, a bool true/false, a list becomes a tuple for a tuple field, an int a float for a
    float field), anything when `current` is None; a ValueError naming the field else."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{field} is a bool: give true or false, not {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ValueError(f"{field} is a {type(current).__name__}: cannot read {text!r}") from None
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(f"{field} is a {type(current).__name__}, got {text!r}")
    return value


def set_model_overrides(config: ml_collections.ConfigDict, fields: dict[str, str]) -> None:
    """Set `config.model.overrides.<field>` from each command-line text of `fields`: the
    field must be one of the module `config.model.arch` names (a ValueError with "did you
    mean" otherwise); the text is read by `parse_override` against the module's default."""
    if not fields:
        return
    from fgjax.models.registry import arch_fields

    arch = config.model.arch
    known = arch_fields(arch)
    for name, text in fields.items():
        where = f"config.model.overrides.{name}"
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"unknown {where}: {arch} has no field {name!r}{hint}; fields: {sorted(known)}"
            )
        value = parse_override(text, known[name], f"{where} ({arch}'s default {known[name]!r})")
        with config.unlocked():
            config.model.overrides[name] = value


def check_override_names(config: ml_collections.ConfigDict, argv: list[str]) -> None:
    """Raise a ValueError naming any `--config.a.b=...` field the config does not have
    (ml_collections would otherwise fail with a bare KeyError deep in flag parsing)."""
    for arg in argv:
        match = _OVERRIDE.match(arg)
        if not match or arg.startswith(_MODEL_OVERRIDE):  # set_model_overrides checks those
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
