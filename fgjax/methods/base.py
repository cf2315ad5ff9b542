"""The contract between a method (an objective) and the generic trainer.

The trainer owns the loop, sharding, optimiser, checkpoints and evaluation; a method
owns its modules, its config section, its loss and its extra state. One train step is

    views        = {name: photometric(batch['views'][name]) for name in method.view_names}
    method_state = method.before_step(params, method_state, ctx)            # e.g. EMA
    loss, aux    = method.loss(params, model_state, method_state, frozen, views, batch, ctx, rng)
    params       = optimiser update from d loss / d params   (skipped when not finite)
    method_state = method.after_step(method_state, aux.state_update, ctx)  # e.g. enqueue

Four kinds of state, each with its own lifetime:
  params        trained by the optimiser; the backbone sits under `params['backbone']`.
  model_state   the online network's non-trained collections, e.g. `{'batch_stats': ...}`
                for BatchNorm networks and `{}` for Swin/ViT (`apply(..., mutable=...)`).
  method_state  updated by the method, checkpointed: EMA targets, queues, per-example
                targets written by `on_epoch_start` (indexed by `batch['index']`), which
                may also log per-epoch metrics (`EpochUpdate`).
  frozen        read-only, not checkpointed, reloaded from files at every start
                (`init_frozen`): teachers, text prototypes.

A method registers itself by name with `@register` and declares its config section
(`config_section`) and the views it reads (`default_views`); recipes pick it with
`config.method`. Adding a method is one new file in `fgjax/methods/`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fgjax.models.factory import backbone_from_config

PyTree = Any


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Static facts of a run, known before the first step."""

    steps_per_epoch: int
    total_steps: int
    batch_size: int  # global
    num_classes: int  # 1 + the largest fine label of the training split (CUB retrieval_train: 100)
    num_coarse_classes: int  # 0 when the dataset has no coarse level
    num_train_examples: int


@flax.struct.dataclass
class StepContext:
    """What a step knows about where it is: traced `step` (int32) and `epoch` (float32,
    `step / steps_per_epoch`, e.g. 2.5 in the middle of the third epoch), and the run."""

    step: jax.Array
    epoch: jax.Array
    run: RunInfo = flax.struct.field(pytree_node=False)


class EpochUpdate(NamedTuple):
    """What `Method.on_epoch_start` returns: `state` entries replace those of the method
    state (same shapes; checkpointed with it), `metrics` (numbers or lists of numbers, e.g.
    clusters per coarse class) go to `metrics.jsonl` at the epoch's first step."""

    state: dict[str, Any]
    metrics: dict[str, Any]


class LossAux(NamedTuple):
    """What `Method.loss` returns beside the scalar loss."""

    model_state: PyTree  # the online network's updated non-trained collections
    metrics: dict[str, jax.Array]  # scalars, averaged over the global batch
    state_update: PyTree  # whatever `after_step` needs (keys to enqueue, target stats)


def apply_train(
    module: nn.Module, params: PyTree, model_state: PyTree, *args: Any, rngs=None, **kwargs: Any
) -> tuple[Any, PyTree]:
    """`module(*args, train=True)` with its non-trained collections mutable; returns
    `(output, new model_state)` (`{}` for networks without such collections)."""
    out, updates = module.apply(
        {"params": params, **model_state},
        *args,
        train=True,
        mutable=list(model_state),
        rngs=rngs,
        **kwargs,
    )
    return out, dict(updates)


def backbone_variables(params: PyTree, model_state: PyTree) -> dict[str, PyTree]:
    """The backbone's Flax variables `{'params': ..., 'batch_stats': ...}` (no
    'batch_stats' for networks without BatchNorm, even when a head has some, e.g. HERBS'
    Swin): what weight import/export read."""
    state = {c: t["backbone"] for c, t in model_state.items() if "backbone" in t}
    return {"params": params["backbone"], **state}


def replace_backbone(
    params: PyTree, model_state: PyTree, variables: dict[str, PyTree]
) -> tuple[PyTree, PyTree]:
    """`(params, model_state)` with the backbone's variables replaced by `variables`."""
    params = {**params, "backbone": variables["params"]}
    model_state = {
        c: {**t, "backbone": variables[c]} if c in variables else t for c, t in model_state.items()
    }
    return params, model_state


class Method(abc.ABC):
    """Subclasses set `name` and `self.net` (or override `init_variables`), implement
    `loss`, and override the hooks they need. `self.config` is the whole run config,
    `self.run` its RunInfo."""

    name: ClassVar[str]
    view_names: tuple[str, ...] = ("view1", "view2")
    # Top-level parameter groups `config.model.init_from` fills from a training workdir;
    # a weights file fills what `load_weights` takes from it (the backbone by default).
    pretrained_groups: tuple[str, ...] = ("backbone",)
    # Whether a step may see a smaller batch (config.train.keep_last_batch): False for
    # methods whose state assumes a fixed batch, e.g. a queue enqueued a batch at a time.
    partial_batches_ok: ClassVar[bool] = False
    # Fields of the method's config section a resumed run may change (see
    # fgjax.train.resume: none by default, as any other field of the run's config).
    resumable_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ml_collections.ConfigDict, run: RunInfo):
        self.config = config
        self.run = run

    # ------------------------------------------------------------------ configuration
    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        """Defaults of `config.<name>` (the method's own hyperparameters)."""
        return ml_collections.ConfigDict()

    @classmethod
    def default_views(cls) -> dict[str, dict[str, Any]]:
        """Per view name, overrides of the default view (see `fgjax.config.view_config`),
        e.g. `{'view1': {'photometric': byol_view1_spec()}}`. Must cover `view_names`."""
        return {name: {} for name in cls.view_names}

    @property
    def section(self) -> ml_collections.ConfigDict:
        return self.config[self.name]

    # ------------------------------------------------------------------ state
    def init_variables(self, rng: jax.Array, image_shape: tuple[int, ...]) -> tuple[PyTree, PyTree]:
        """Online `(params, model_state)` for images of `image_shape` = [B, H, W, 3];
        by default those of `self.net` (an `Encoder` or any module with `train=`)."""
        variables = dict(self.net.init(rng, jnp.zeros(image_shape, jnp.float32), train=False))
        params = variables.pop("params")
        return params, variables

    def load_weights(
        self, tensors: Mapping[str, Any], params: PyTree, model_state: PyTree
    ) -> tuple[PyTree, PyTree, Any]:
        """`(params, model_state, report)` with what a weights file named by
        `config.model.init_from` holds (`tensors`: its `fgjax.weights.read_checkpoint`
        dict). By default the backbone, through `config.model.arch`'s key map; the report
        (`fgjax.weights.ImportReport`) is printed, not enforced."""
        from fgjax.weights import variables_from_tensors

        loaded, report = variables_from_tensors(
            tensors, backbone_variables(params, model_state), self.config.model.arch
        )
        return (*replace_backbone(params, model_state, loaded), report)

    def init_state(self, params: PyTree, model_state: PyTree, rng: jax.Array) -> PyTree:
        """Checkpointed method state (targets, queues), built after pretrained weights load."""
        return {}

    def init_frozen(self) -> PyTree:
        """Read-only inputs loaded from files at every start; never checkpointed."""
        return {}

    # ------------------------------------------------------------------ the step
    @abc.abstractmethod
    def loss(
        self,
        params: PyTree,
        model_state: PyTree,
        method_state: PyTree,
        frozen: PyTree,
        views: dict[str, jax.Array],
        batch: dict[str, jax.Array],
        ctx: StepContext,
        rng: jax.Array,
    ) -> tuple[jax.Array, LossAux]:
        """Scalar loss to minimise over `params`. `views[name]` is float32 [B, H, W, 3]
        (normalised); `batch` has 'label', 'coarse_label', 'index' int32 [B]."""

    def before_step(self, params: PyTree, method_state: PyTree, ctx: StepContext) -> PyTree:
        return method_state

    def after_step(self, method_state: PyTree, state_update: PyTree, ctx: StepContext) -> PyTree:
        return method_state

    # ------------------------------------------------------------------ host hooks
    def on_epoch_start(self, epoch: int, state: Any, tools: Any) -> EpochUpdate | None:
        """Host-side work before the first step of `epoch` (0-based), e.g. clustering
        features extracted with `tools.extract(split, embed, state)`. Must depend only on
        `epoch` and `state`: a run resumed at an epoch boundary runs it again."""
        return None

    # ------------------------------------------------------------------ evaluation
    def backbone(self) -> nn.Module:
        """The backbone module (evaluation and export)."""
        return backbone_from_config(self.config.model)

    def embed(self, params: PyTree, model_state: PyTree, images: jax.Array) -> jax.Array:
        """Eval-mode pooled backbone features `[B, D]` (float32) of normalised images."""
        variables = backbone_variables(params, model_state)
        return self.backbone().apply(variables, images, train=False)["pooled"]

    def evaluators(self) -> dict[str, Callable[[Any, Any], dict[str, float]]]:
        """Extra evaluations `name -> fn(state, tools) -> {metric: value}`, run beside
        the standard retrieval/kNN evaluation; results are prefixed with `name/`."""
        return {}


def check_same_classes(
    sources: Mapping[str, Any], config: ml_collections.ConfigDict, name: str
) -> None:
    """Raise unless the test split has the train split's classes in the same order: a
    classifier trained on one scores the other's labels as indices into its classes.
    `sources` by role ('train', 'test'); `name` names the evaluator in the message."""
    train, test = list(sources["train"].class_names), list(sources["test"].class_names)
    if train == test:
        return
    extra, absent = sorted(set(test) - set(train)), sorted(set(train) - set(test))
    detail = f"test only: {extra[:3]}; " if extra else ""
    detail += f"train only: {absent[:3]}; " if absent else ""
    raise ValueError(
        f"{name}: the test split ({config.data.test_split}) must have the classes of the "
        f"train split ({config.data.train_split}) in the same order; they differ "
        f"({detail}{len(test)} vs {len(train)} classes)"
    )


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` selectable as `config.method = cls.name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        previous = _REGISTRY[cls.name]
        if (previous.__module__, previous.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"method name {cls.name!r} is already taken by {previous.__qualname__}"
            )
    _REGISTRY[cls.name] = cls
    return cls
