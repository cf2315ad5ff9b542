"""Optimisers, learning-rate schedules and weight-decay masks from the config.

`config.optim` fields:
  name: 'sgd' | 'lars' | 'adamw' | 'adam' (torch.optim.Adam: `weight_decay` is L2 added
      to the gradient before the moments) | 'rmsprop' (torch.optim.RMSprop: square
      average decay `rms_decay`, starting at 0, `eps` outside the sqrt, coupled L2, no
      momentum, not centred)
  lr: learning rate; if `lr_batch_reference > 0` it is a *base* lr and the actual
      peak is `lr * global_batch / lr_batch_reference` (the `0.3 * B / 256` rule).
  schedule: 'cosine' | 'constant' | 'step'; `schedule_unit`: 'step', 'epoch' (MoCo's
      per-epoch cosine keeps the lr constant inside an epoch) or 'micro_batch' (HERBS:
      lengths count micro-batches of `accumulate_steps`, and an optimiser step takes the
      lr of its last micro-batch; an epoch's smaller last step ends at the epoch's last
      micro-batch).
  decay_epochs, decay_factor ('step' schedule): the lr is multiplied by `decay_factor`
      from the start of each epoch in `decay_epochs` (MoCo's lincls: (60, 80), 0.1).
  decay_steps ('step' schedule, instead of decay_epochs): the same at optimiser steps
      (0-based: the step numbered 1200 is the first at the lower lr; CFGA's MS loss:
      (1200, 2400)).
  warmup_epochs: linear warm-up (step-wise) from `warmup_init_lr` (0) to the peak, which
      the first step after the warm-up reaches (`warmup_reaches_peak='after'`) or its
      last step (`'last'`: np.linspace(init, peak, W), HERBS).
  cosine_epochs: length of the cosine in epochs (0 = the training length); LCR's
      CUB BYOL recipe lays the cosine over 800 epochs but stops at 100.
  cosine_period: 'after_warmup' (the cosine spans cosine_epochs minus the warm-up) or
      'whole' (HERBS: it starts after the warm-up but its half-period is all
      cosine_epochs, so it stops short of final_lr).
  final_lr: value the cosine decays to.
  schedule_delay_steps (optional, absent = 0): the first d steps run at the peak and the
      schedule starts d steps late (LCR's BYOL recipes: 1).
  weight_decay, weight_decay_mask: 'all' (PyTorch SGD semantics) or 'kernels'
      (conv/dense kernels only: no BN parameters, no biases).
  momentum, nesterov (sgd, lars), trust_coefficient (lars), b1, b2 (adamw, adam),
  eps (adamw, adam, rmsprop), rms_decay (rmsprop).
  freeze: top-level parameter groups (keys of the params, e.g. 'backbone' for a linear
      probe) the optimiser never changes: zero update, no optimiser state, no decay.
  lr_multipliers: {top-level group: factor}: that group's updates, decay included, are
      multiplied by the factor, i.e. PyTorch's per-group `lr` of `factor x lr`
      (Proxy-Anchor's proxies: 100).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def kernel_mask(params: Any) -> Any:
    """True for conv/dense kernels, False for biases and BatchNorm scale/bias."""

    def is_kernel(path: tuple, leaf: Any) -> bool:
        return getattr(path[-1], "key", None) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def peak_lr(optim: ml_collections.ConfigDict, global_batch: int) -> float:
    if optim.lr_batch_reference > 0:
        return optim.lr * global_batch / optim.lr_batch_reference
    return optim.lr


def make_schedule(
    optim: ml_collections.ConfigDict,
    global_batch: int,
    steps_per_epoch: int,
    num_epochs: int,
    accumulate_steps: int = 1,
    micro_batches_per_epoch: int | None = None,
) -> optax.Schedule:
    """Linear warm-up (per step) then cosine, constant or step decay, per step, per epoch
    or per micro-batch (`accumulate_steps` micro-batches make one optimiser step).

    `micro_batches_per_epoch` (default `steps_per_epoch * accumulate_steps`) is smaller
    when an epoch's last step is a partial one (`config.train.keep_last_batch`)."""
    _check_schedule_fields(optim)
    peak = peak_lr(optim, global_batch)
    a = accumulate_steps if optim.schedule_unit == "micro_batch" else 1
    per_epoch = steps_per_epoch
    if optim.schedule_unit == "micro_batch":
        per_epoch = micro_batches_per_epoch or steps_per_epoch * a
    position = _schedule_position(a, steps_per_epoch, per_epoch)
    warmup_steps = int(round(optim.warmup_epochs * per_epoch))
    ramp = warmup_steps - (optim.warmup_reaches_peak == "last")  # steps from init to peak
    cosine_steps = (optim.cosine_epochs or num_epochs) * per_epoch
    if optim.cosine_period == "after_warmup":
        cosine_steps -= warmup_steps
    decay = _decay(optim, peak, per_epoch, warmup_steps, cosine_steps)

    def schedule(count: jax.Array) -> jax.Array:
        step = position(count)
        decayed = decay(count, step)
        if warmup_steps > 0:
            init = optim.warmup_init_lr
            warm = init + (peak - init) * step / max(ramp, 1)
            return jnp.where(step < warmup_steps, warm, decayed)
        return decayed

    return _delayed(schedule, optim.get("schedule_delay_steps", 0), peak)


def _check_schedule_fields(optim: ml_collections.ConfigDict) -> None:
    """A ValueError naming the `config.optim` field when the schedule's settings are not
    one of the known values or do not fit together."""
    if optim.schedule not in ("cosine", "constant", "step"):
        raise ValueError(
            f"config.optim.schedule must be 'cosine', 'constant' or 'step', got {optim.schedule!r}"
        )
    if optim.schedule == "step" and not optim.decay_epochs and not optim.decay_steps:
        raise ValueError(
            "config.optim.schedule='step' needs config.optim.decay_epochs, e.g. (60, 80), "
            "or config.optim.decay_steps, e.g. (1200, 2400)"
        )
    if optim.decay_epochs and optim.decay_steps:
        raise ValueError(
            "config.optim.decay_epochs and config.optim.decay_steps are both set; give one"
        )
    if optim.decay_steps and optim.schedule != "step":
        raise ValueError(
            f"config.optim.decay_steps needs config.optim.schedule='step', not {optim.schedule!r}"
        )
    if optim.schedule_unit not in ("step", "epoch", "micro_batch"):
        raise ValueError(
            "config.optim.schedule_unit must be 'step', 'epoch' or 'micro_batch', "
            f"got {optim.schedule_unit!r}"
        )
    if optim.cosine_period not in ("after_warmup", "whole"):
        raise ValueError(
            "config.optim.cosine_period must be 'after_warmup' or 'whole', "
            f"got {optim.cosine_period!r}"
        )
    if optim.warmup_reaches_peak not in ("after", "last"):
        raise ValueError(
            "config.optim.warmup_reaches_peak must be 'after' or 'last', "
            f"got {optim.warmup_reaches_peak!r}"
        )


def _schedule_position(a: int, optimiser_steps: int, per_epoch: int) -> Callable:
    """Optimiser step -> its position on the schedule (float32): with `a` > 1 micro-batches
    per step, its last micro-batch (step n of epoch e ends with micro-batch
    e * per_epoch + min(a (n + 1), per_epoch) - 1); the step itself otherwise."""

    def position(step: jax.Array) -> jax.Array:
        if a == 1:
            return jnp.asarray(step, jnp.float32)
        epoch, within = jnp.divmod(jnp.asarray(step).astype(jnp.int32), optimiser_steps)
        last = epoch * per_epoch + jnp.minimum(a * within + a, per_epoch) - 1
        return last.astype(jnp.float32)

    return position


def _decay(
    optim: ml_collections.ConfigDict,
    peak: float,
    per_epoch: int,
    warmup_steps: int,
    cosine_steps: int,
) -> Callable:
    """`(count, position) -> lr` after the warm-up: `optim.schedule`'s constant peak, step
    decay (milestones in optimiser steps `count`, or epochs of `position`) or cosine from
    the peak to `final_lr` over `cosine_steps` from the warm-up's end (per epoch under
    schedule_unit 'epoch')."""

    def decayed(count: jax.Array, step: jax.Array) -> jax.Array:
        if optim.schedule == "constant":
            return jnp.asarray(peak, jnp.float32)
        if optim.schedule == "step":
            if optim.decay_steps:  # milestones in optimiser steps
                reached, milestones = jnp.asarray(count), optim.decay_steps
            else:  # at epoch boundaries, whatever schedule_unit
                reached, milestones = jnp.floor(step / per_epoch), optim.decay_epochs
            passed = sum((reached >= m).astype(jnp.float32) for m in milestones)
            return peak * jnp.power(jnp.float32(optim.decay_factor), passed)
        if optim.schedule_unit == "epoch":
            progress = jnp.floor(step / per_epoch) * per_epoch
        else:
            progress = step
        t = jnp.clip((progress - warmup_steps) / max(cosine_steps, 1), 0.0, 1.0)
        return optim.final_lr + (peak - optim.final_lr) * 0.5 * (1 + jnp.cos(math.pi * t))

    return decayed


def _delayed(schedule: optax.Schedule, delay: int, peak: float) -> optax.Schedule:
    """`schedule` started `delay` steps late, the first `delay` steps at the peak.

    A recipe may set `schedule_delay_steps` d (absent = 0): steps 0..d-1 run at the peak
    and step t >= d at the schedule's step t - d (LCR's BYOL: main.py steps its
    LR_Scheduler after the optimiser, whose first step runs at its initial lr, the peak)."""
    if delay:
        return lambda count: jnp.where(
            count < delay, jnp.float32(peak), schedule(jnp.maximum(count - delay, 0))
        )
    return schedule


def make_optimizer(
    optim: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optax transformation for `config.optim`; weight-decay masks applied to params,
    the groups of `optim.freeze` left untouched, those of `optim.lr_multipliers` scaled."""
    tx = _base_optimizer(optim, schedule)
    if optim.lr_multipliers:
        tx = optax.chain(tx, scale_groups(dict(optim.lr_multipliers)))
    if not optim.freeze:
        return tx
    freeze = tuple(optim.freeze)

    def labels(params: Any) -> dict[str, str]:
        missing = [name for name in freeze if name not in params]
        if missing:
            raise ValueError(
                f"config.optim.freeze names {missing}, which the params do not have "
                f"(top-level groups: {sorted(params)})"
            )
        return {name: "frozen" if name in freeze else "trained" for name in params}

    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def scale_groups(factors: dict[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of top-level parameter groups by `factors[group]`: after the
    whole optimiser (moments, decay, lr) this is PyTorch's per-group lr for sgd, adam,
    adamw and rmsprop."""

    def init(params: Any) -> optax.EmptyState:
        missing = sorted(set(factors) - set(params))
        if missing:
            raise ValueError(
                f"config.optim.lr_multipliers names {missing}, which the params do not have "
                f"(top-level groups: {sorted(params)})"
            )
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple:
        scaled = {
            k: jax.tree.map(lambda u, f=factors[k]: u * f, v) if k in factors else v
            for k, v in updates.items()
        }
        return scaled, state

    return optax.GradientTransformation(init, update)


def _base_optimizer(
    optim: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    if optim.weight_decay_mask == "all":
        mask = None
    elif optim.weight_decay_mask == "kernels":
        mask = kernel_mask
    else:
        raise ValueError(
            "config.optim.weight_decay_mask must be 'all' or 'kernels', "
            f"got {optim.weight_decay_mask!r}"
        )

    if optim.name == "sgd":
        # PyTorch SGD: decay is added to the gradient before momentum.
        return optax.chain(
            optax.add_decayed_weights(optim.weight_decay, mask),
            optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
        )
    if optim.name == "lars":
        lars_mask = mask if mask is not None else True
        return optax.lars(
            schedule,
            weight_decay=optim.weight_decay,
            weight_decay_mask=lars_mask,
            trust_coefficient=optim.trust_coefficient,
            eps=0.0,
            trust_ratio_mask=lars_mask,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
        )
    if optim.name == "adamw":
        return optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=mask,
        )
    # torch.optim.Adam / RMSprop: weight_decay is L2 added to the gradient before the
    # moments (coupled), unlike adamw's decay added to the update after them.
    if optim.name == "adam":
        scale = optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps)
    elif optim.name == "rmsprop":
        # torch: v = a v + (1 - a) g^2 from v = 0; p -= lr g / (sqrt(v) + eps).
        scale = optax.scale_by_rms(
            decay=optim.rms_decay, eps=optim.eps, initial_scale=0.0, eps_in_sqrt=False
        )
    else:
        raise ValueError(
            "config.optim.name must be 'sgd', 'lars', 'adamw', 'adam' or 'rmsprop', "
            f"got {optim.name!r}"
        )
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay, mask),
        scale,
        optax.scale_by_learning_rate(schedule),
    )
