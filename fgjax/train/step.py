"""The generic, jit-compiled train step: `(state, frozen, batch) -> (state, metrics)`.

Per step: photometric augmentation of every view on the device, the method's
`before_step`, the loss and its gradients (over `accumulate_steps` micro-batches; an
epoch's last, smaller batch under `config.train.keep_last_batch` makes as many full
micro-batches as it holds plus one of the rest, and its gradients are averaged over that
count, as HERBS does), one optimiser update, the method's `after_step`. A step whose
loss or gradients are not finite changes nothing but the step counter and `bad_steps`
(the non-finite guard).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fgjax.core.objectives import all_finite
from fgjax.core.sharding import batch_sharded, replicated
from fgjax.data.augment import PhotometricSpec, photometric
from fgjax.methods.base import Method, RunInfo, StepContext
from fgjax.train.state import TrainState


def split_micro_batches(tree, count: int):
    """`[B, ...]` leaves -> `[count, B / count, ...]`; micro-batch a holds examples
    a, a + count, a + 2 count, ... (so each stays spread over the `data` devices)."""

    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, tree)


def make_train_step(
    method: Method,
    tx: optax.GradientTransformation,
    view_specs: Mapping[str, PhotometricSpec],
    run: RunInfo,
    accumulate_steps: int = 1,
) -> Callable:
    """Pure step. `batch['views'][name]` is uint8 `[B, H, W, 3]` (CPU-cropped views) for
    every name in `method.view_names`; `batch` also has 'label', 'coarse_label', 'index'."""
    _check_accumulate_steps(accumulate_steps, run.batch_size)
    micro_size = run.batch_size // accumulate_steps

    def train_step(state: TrainState, frozen, batch: dict):
        ctx = StepContext(step=state.step, epoch=state.step / run.steps_per_epoch, run=run)
        rng = jax.random.fold_in(state.rng, state.step)
        aug_rng, loss_rng = jax.random.split(rng)
        views = _augment_views(method.view_names, batch["views"], view_specs, aug_rng)
        fields = {k: v for k, v in batch.items() if k != "views"}  # label, index, ...
        method_state = method.before_step(state.params, state.method_state, ctx)
        micro_step = _micro_step(method, state.params, method_state, frozen, ctx, loss_rng)
        carry = (jax.tree.map(jnp.zeros_like, state.params), state.model_state)
        carry, losses, metrics, updates = _accumulate(micro_step, carry, views, fields, micro_size)
        count = len(losses)  # HERBS divides a ragged group's losses by its size (spec 5.3)
        grad_sum, model_state = carry
        grads = jax.tree.map(lambda g: g / count, grad_sum)
        loss = sum(losses) / count
        metrics = jax.tree.map(lambda *m: sum(m) / count, *metrics)

        for update in updates:  # e.g. enqueue each micro-batch's keys in turn
            method_state = method.after_step(method_state, update, ctx)
        new_state, finite = _apply_if_finite(state, tx, grads, loss, model_state, method_state)
        metrics = {
            **metrics,
            "skipped": 1.0 - finite.astype(jnp.float32),
            "bad_steps_in_a_row": new_state.bad_steps,
        }
        return new_state, metrics

    return train_step


def _check_accumulate_steps(accumulate_steps: int, batch_size: int) -> None:
    """`accumulate_steps` must be >= 1 and divide the run's `batch_size` (a ValueError
    naming both config fields otherwise)."""
    if accumulate_steps < 1 or batch_size % accumulate_steps:
        raise ValueError(
            f"config.train.accumulate_steps={accumulate_steps} must be >= 1 and divide "
            f"config.train.batch_size={batch_size}"
        )


def _augment_views(
    view_names: Sequence[str],
    images: Mapping[str, jax.Array],
    view_specs: Mapping[str, PhotometricSpec],
    rng: jax.Array,
) -> dict[str, jax.Array]:
    """The photometric augmentation of every view on the device: view number v of
    `view_names` draws from `fold_in(rng, v)` with its own `PhotometricSpec`."""
    return {
        name: photometric(images[name], jax.random.fold_in(rng, v), view_specs[name])
        for v, name in enumerate(view_names)
    }


def _micro_step(
    method: Method, params, method_state, frozen, ctx: StepContext, loss_rng: jax.Array
) -> Callable:
    """The scan body of one micro-batch: `((grad_sum, model_state), (views, fields, index))
    -> ((grad_sum + grads, model_state'), (loss, metrics, state_update))`, the loss of
    micro-batch `index` drawing from `fold_in(loss_rng, index)`."""

    def micro_step(carry, micro):
        grad_sum, model_state = carry
        micro_views, micro_fields, index = micro

        def loss_fn(params):
            return method.loss(
                params,
                model_state,
                method_state,
                frozen,
                micro_views,
                micro_fields,
                ctx,
                jax.random.fold_in(loss_rng, index),
            )

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        return (grad_sum, aux.model_state), (loss, aux.metrics, aux.state_update)

    return micro_step


def _accumulate(
    micro_step: Callable, carry, views: dict, fields: dict, micro_size: int
) -> tuple[Any, list, list, list]:
    """`(carry, losses, metrics, updates)` after `micro_step` over the batch's micro-batches
    (one entry per micro-batch in the lists).

    A batch of the run's size makes `accumulate_steps` micro-batches of `micro_size`; an
    epoch's last, smaller batch (keep_last_batch) as many full ones as it holds plus its
    remainder. Full micro-batches run in one `lax.scan` (a single one directly)."""
    full, remainder = divmod(fields["label"].shape[0], micro_size)
    losses, metrics, updates = [], [], []
    if full == 1 and not remainder:
        carry, (loss, metric, update) = micro_step(carry, (views, fields, 0))
        losses, metrics, updates = [loss], [metric], [update]
    elif full:
        head = jax.tree.map(lambda x: x[: x.shape[0] - remainder], (views, fields))
        micro = split_micro_batches(head, full)
        carry, stacked = jax.lax.scan(micro_step, carry, (*micro, jnp.arange(full)))
        for a in range(full):
            loss, metric, update = jax.tree.map(lambda x, a=a: x[a], stacked)
            losses.append(loss)
            metrics.append(metric)
            updates.append(update)
    if remainder:
        tail = jax.tree.map(lambda x: x[x.shape[0] - remainder :], (views, fields))
        carry, (loss, metric, update) = micro_step(carry, (*tail, full))
        losses.append(loss)
        metrics.append(metric)
        updates.append(update)
    return carry, losses, metrics, updates


def _apply_if_finite(
    state: TrainState,
    tx: optax.GradientTransformation,
    grads,
    loss: jax.Array,
    model_state,
    method_state,
) -> tuple[TrainState, jax.Array]:
    """`(new_state, finite)`: one optimiser update (bad_steps reset) when the loss and
    `grads` are finite, else only the step counter and `bad_steps` advance (the non-finite
    guard)."""
    opt_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    stepped = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, opt_updates),
        model_state=model_state,
        opt_state=opt_state,
        method_state=method_state,
        bad_steps=jnp.zeros_like(state.bad_steps),
    )
    skipped = state.replace(step=state.step + 1, bad_steps=state.bad_steps + 1)
    finite = jnp.isfinite(loss) & all_finite(grads)
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), stepped, skipped)
    return new_state, finite


def jit_train_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """Compile with the batch sharded over `data`, the state (donated) and the frozen
    inputs replicated; frozen inputs are not donated (they live for the whole run)."""
    return jax.jit(
        step_fn,
        in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )
