"""A run, from its recipe or its workdir: what every command built on a run (train,
evaluate, describe, pictures, reports) loads the same way.

    config = load_run_config("runs/cub_lcr")          # its config.json, overrides applied
    run = Run(config)                                 # sources, method, feature extractor
    state, step = restore_checkpoint(run, config.seed, "runs/cub_lcr")
    features = run.extractor.extract("test", feature_embed(run.method, "pooled"), state)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from fgjax.config import (
    check_override_names,
    config_from_json,
    load_config_file,
    parse_override,
    photometric_spec,
    set_model_overrides,
    split_model_overrides,
    view_spec,
)
from fgjax.core.distributed import say
from fgjax.core.sharding import check_batch_divisible, make_mesh
from fgjax.data.datasets import build_source
from fgjax.data.sources import ParallelRootSource, summarize
from fgjax.data.train_loader import last_batch_size, steps_per_epoch
from fgjax.eval.features import Embed, FeatureExtractor, select_feature
from fgjax.eval.suite import Evaluator
from fgjax.methods import Method, RunInfo, backbone_variables, build_method
from fgjax.models.encoder import Encoder
from fgjax.train.checkpoint import restore_state
from fgjax.train.state import create_train_state


def training_classes(train) -> int:
    """A classifier's width for the training split: 1 + its largest fine label. A zero-shot
    split keeps the dataset's class names but labels its images with the first ones only
    (CUB's retrieval_train: 100 of 200), and per-class parameters beyond them (Proxy-Anchor's
    proxies, a margin layer) would change the loss."""
    return int(np.max(train.labels)) + 1 if len(train) else train.num_classes


class Run:
    """What a run builds once: mesh, sources, method, evaluator."""

    def __init__(self, config: ml_collections.ConfigDict):
        c = config
        for field in ("num_epochs", "max_steps"):  # 0: only evaluate / no limit
            if c.train[field] < 0:
                raise ValueError(f"config.train.{field}={c.train[field]} must be >= 0")
        check_batch_divisible(c.train.batch_size)
        self.mesh = make_mesh()
        # Keyed by role: 'train' is config.data.train_split, 'test' config.data.test_split.
        built = {
            "train": build_source(c.data, c.data.train_split),
            "test": build_source(c.data, c.data.test_split),
        }
        for role, split in (("train", c.data.train_split), ("test", c.data.test_split)):
            say("data", summarize(built[role], f"{role} = {c.data.kind}/{split}"))
        self.train_source = built["train"]  # what the train loader reads (views pick roots)
        # What evaluation reads (features, kNN bank, pictures): the same records, their
        # files under config.data.eval_root when it is set (e.g. DDT crops).
        self.sources = {
            role: ParallelRootSource(source, c.data.eval_root, "config.data.eval_root")
            if c.data.eval_root
            else source
            for role, source in built.items()
        }
        train = self.train_source
        keep_last = c.train.keep_last_batch
        self.steps_per_epoch = steps_per_epoch(len(train), c.train.batch_size, keep_last)
        micro = c.train.batch_size // c.train.accumulate_steps
        # Per epoch, for a per-micro-batch schedule (fewer when the last batch is partial).
        self.micro_batches_per_epoch = self.steps_per_epoch * c.train.accumulate_steps
        if keep_last:
            self.micro_batches_per_epoch = -(-len(train) // micro)
        last = last_batch_size(len(train), c.train.batch_size, keep_last)
        if last != c.train.batch_size:
            check_batch_divisible(last, "config.train.keep_last_batch: the last batch of an epoch")
        if self.steps_per_epoch == 0 and c.train.num_epochs > 0:
            raise ValueError(
                f"config.train.batch_size={c.train.batch_size} exceeds the {len(train)} "
                "training images"
            )
        total = c.train.num_epochs * self.steps_per_epoch
        self.stop_step = min(total, c.train.max_steps) if c.train.max_steps else total
        self.info = RunInfo(
            steps_per_epoch=self.steps_per_epoch,
            total_steps=total,
            batch_size=c.train.batch_size,
            num_classes=training_classes(train),
            num_coarse_classes=train.num_coarse_classes,
            num_train_examples=len(train),
        )
        self.method: Method = build_method(c, self.info)
        if keep_last and not self.method.partial_batches_ok:
            raise ValueError(
                f"config.train.keep_last_batch=True: method {c.method!r} needs full batches "
                "(its state assumes a fixed batch size); set it to False"
            )
        # The views' crops and roots, checked before any work (errors name the field).
        self.view_specs = [view_spec(c, name) for name in self.method.view_names]
        first_view = self.method.view_names[0]
        first = photometric_spec(c, first_view)  # evaluation normalises as this view
        size = c.views[first_view].size
        self.image_shape = (2, size, size, 3)  # to initialise the network
        self.extractor = FeatureExtractor(
            self.sources,
            self.mesh,
            image_size=c.data.image_size,
            batch_size=c.eval.batch_size,
            mean=first.mean,
            std=first.std,
            show_progress=c.train.progress_bar,
            skip_bad=c.data.skip_bad,
            resize=c.data.eval_resize,
            squash_size=c.data.eval_squash_size,
            resize_ratio=c.data.eval_resize_ratio,
        )
        method = self.method
        self.evaluate = Evaluator(
            c,
            self.extractor,
            embed=lambda state, images: method.embed(state.params, state.model_state, images),
            extra=method.evaluators(),
        )


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Set every `--config.a.b=value` of `overrides` (names checked against `config`;
    `config.model.overrides.<field>` against the fields of `config.model.arch`'s module)."""
    overrides, model_overrides = split_model_overrides(overrides)
    check_override_names(config, overrides)
    for arg in overrides:
        name, sep, text = arg[len("--config.") :].partition("=")
        if not sep:
            raise ValueError(f"{arg}: give a value, --config.{name}=VALUE")
        *parents, leaf = name.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = parse_override(text, node[leaf], f"config.{name}")
    set_model_overrides(config, model_overrides)


def feature_embed(method: Method, feature: str) -> Embed:
    """`embed(state, images) -> [B, D]` of the chosen encoder output: 'pooled' is the
    method's own `embed` (what training evaluates); 'proj', 'pred', 'logits' and the
    backbone's feature maps ('stage3', Swin's 'layer4', ..., average-pooled) come from the
    method's network in eval mode."""
    if feature == "pooled":
        return lambda state, images: method.embed(state.params, state.model_state, images)
    net = getattr(method, "net", None)
    if net is None:  # a method without one network: the backbone's outputs only
        return backbone_embed(method, feature)
    extra = {"predict": feature == "pred"} if isinstance(net, Encoder) else {}

    def embed(state: Any, images: jax.Array) -> jax.Array:
        variables = {"params": state.params, **state.model_state}
        return select_feature(net.apply(variables, images, train=False, **extra), feature)

    return embed


def backbone_embed(method: Method, feature: str) -> Embed:
    """`embed(state, images) -> [B, D]` of the method's backbone alone (a stage map such
    as 'stage4' or Swin's 'layer4' average-pooled), whatever its network adds (heads,
    attention, projections)."""
    backbone = method.backbone()

    def embed(state: Any, images: jax.Array) -> jax.Array:
        variables = backbone_variables(state.params, state.model_state)
        return select_feature(backbone.apply(variables, images, train=False), feature)

    return embed


def load_run_config(
    workdir: str | None,
    config_file: str | None = None,
    overrides: list[str] = (),
    init_from: str = "",
) -> ml_collections.ConfigDict:
    """The config of the run in `workdir` (its config.json) or of `config_file`, with
    `--config.a.b=value` `overrides`; `config.model.init_from` becomes `init_from`."""
    if config_file:
        config = load_config_file(config_file)
    else:
        path = os.path.join(workdir, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no config.json in {workdir}: give --config FILE")
        config = config_from_json(path)
    apply_overrides(config, list(overrides))
    # The checkpoint holds the trained weights; a pretraining file named in the run's
    # config is not needed (and may no longer exist).
    config.model.init_from = init_from
    return config


def restore_checkpoint(run: Run, seed: int, workdir: str, step: int | None = None):
    """`(train state, step)` of `workdir`'s checkpoint (the newest, or `step`) for the
    model `run` builds; no optimiser state."""
    # Only the structure is needed: no initialisation is computed.
    template = jax.eval_shape(lambda: create_train_state(run.method, None, run.image_shape, seed))
    state, step = restore_state(workdir, template, step)
    say(f"restored step {step} from {workdir}")
    return state, step


def weights_identity(a: argparse.Namespace, step: int | None) -> dict[str, Any]:
    """What identifies the weights of `a.init_from` (path, size, mtime) or of `a.workdir`
    at `step`, for cache fingerprints."""
    if a.init_from:
        info = os.stat(a.init_from)
        return {"file": os.path.abspath(a.init_from), "size": info.st_size, "mtime": info.st_mtime}
    return {"workdir": os.path.abspath(a.workdir), "step": step}


def open_run(
    workdir: str,
    overrides: Sequence[str],
    accepts: Callable[[Method], bool],
    refusal: str,
    progress: bool = False,
) -> tuple[ml_collections.ConfigDict, Run]:
    """The config and built `Run` (sources, method, evaluation loaders) of `workdir`.

    Raises ValueError "`workdir` is a config.method=NAME run, `refusal`" when `accepts`
    rejects the run's method. `progress` keeps the evaluation progress bar (long
    extractions); pictures of a few images go without.
    """
    config = load_run_config(workdir, overrides=list(overrides))
    config.train.progress_bar = progress
    run = Run(config)
    if not accepts(run.method):
        raise ValueError(f"{workdir} is a config.method={config.method!r} run, {refusal}")
    return config, run
